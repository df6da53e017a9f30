"""``medsendx gateway``: the long-running service on the truck."""

from __future__ import annotations

import click

from medsendx.commands._common import err_console, settings_from_context


@click.command("gateway")
@click.option("--dicom-port", type=int, help="Port of the DICOM receiver (default: gateway.dicom_port, 11112).")
@click.option("--ae-title", help="AE title the scanner calls (default: gateway.ae_title, MEDSENDX).")
@click.option("--bind", "bind_address", help="Address the DICOM receiver listens on (default: gateway.bind_address).")
@click.option("--allow-aet", "allowed_calling_aets", multiple=True, metavar="AET",
              help="Calling AE title of a scanner allowed to push (repeatable; default: gateway.allowed_calling_aets).")
@click.option("--http-port", type=int, help="Loopback port of /healthz and /metrics (default: gateway.http_port, 9042).")
@click.option("--watch", "watch_dirs", multiple=True, type=click.Path(file_okay=False), help="Drop folder to watch (repeatable).")
@click.option("--originals", type=click.Choice(["move", "delete"]), help="What happens to dropped files once handled.")
@click.option("--to", "destination", help="Where to deliver: dicomweb+http(s)://..., dimse://AET@host:port, s3://bucket/prefix, or a folder.")
@click.option("--study-quiet-seconds", type=float, help="Hold each study until quiet this long, then send it in priority order (0: stream).")
@click.option("--results-quiet-seconds", type=float,
              help="Streaming: queue a study's triage results once it has had no new image this long "
                   "(default: gateway.results_quiet_seconds, 30; 0: none).")
@click.option("--workers", type=int, help="Pipeline threads (default: gateway.workers).")
@click.pass_context
def gateway_cmd(ctx: click.Context, dicom_port, ae_title, bind_address, allowed_calling_aets, http_port, watch_dirs, originals,
                destination, study_quiet_seconds, results_quiet_seconds, workers) -> None:
    """Run the edge gateway until stopped (SIGTERM or Ctrl-C).

    Receives scans over DICOM C-STORE and from drop folders, stages them durably, de-identifies,
    triages and queues them, and delivers them through the crash-safe outbox. Health and
    Prometheus metrics are served on http://127.0.0.1:HTTP_PORT/healthz and /metrics. Logs
    are JSON lines on stderr and never contain identifying data.

    \b
    Example:
      medsendx gateway --bind 192.168.7.1 --allow-aet CT_VAN_1 --watch /media/usb \\
          --to dicomweb+https://pacs.example/dicom-web
    """
    settings = settings_from_context(ctx, {
        "outbox": {"destination": destination},
        "gateway": {
            "dicom_port": dicom_port, "ae_title": ae_title, "bind_address": bind_address,
            "allowed_calling_aets": list(allowed_calling_aets) or None,
            "http_port": http_port, "watch_dirs": list(watch_dirs) or None, "originals": originals,
            "study_quiet_seconds": study_quiet_seconds,
            "results_quiet_seconds": results_quiet_seconds, "workers": workers,
        },
    })
    from medsendx.gateway.logs import configure_logging
    from medsendx.gateway.service import GatewayService

    configure_logging(settings.log_level)
    from medsendx.config import ConfigError
    from medsendx.deid.uids import SecretError

    try:
        service = GatewayService(settings)
    except (SecretError, ConfigError) as exc:
        from rich.markup import escape

        err_console.print(f"[red]gateway cannot start:[/] {escape(str(exc))}")
        raise SystemExit(1) from None
    except OSError as exc:  # ssl.SSLError included (a TLS certificate or key that does not load)
        err_console.print(f"[red]gateway cannot start:[/] {exc.strerror or type(exc).__name__}")
        raise SystemExit(1) from None
    service.run_until_signalled()
