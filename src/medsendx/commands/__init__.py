"""One module per ``medsendx`` subcommand; see :mod:`medsendx.cli`."""
