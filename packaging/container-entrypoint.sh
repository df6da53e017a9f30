#!/bin/sh
# Container entrypoint: a settings file mounted at /etc/medsendx/medsendx.toml is used when
# MEDSENDX_CONFIG does not name another; MEDSENDX_* variables override it (medsendx.config).
set -e
if [ -z "${MEDSENDX_CONFIG:-}" ] && [ -f /etc/medsendx/medsendx.toml ]; then
  export MEDSENDX_CONFIG=/etc/medsendx/medsendx.toml
fi
exec /opt/medsendx/bin/medsendx "$@"
