"""``medsendx demo``: a scan day on the truck, end to end, on the bundled sample CT."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from medsendx.commands._common import console, err_console


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for highlighted_scan.png, mining_report.png, summary.json, hq/ and the demo's state.")
@click.option("--to", "destination",
              help="Deliver to a real destination instead of the local HQ folder "
                   "(dicomweb+http(s)://..., dimse://AET@host:port, s3://bucket/prefix).")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Give up waiting for delivery after this many seconds.")
@click.option("--hub", "with_hub", is_flag=True, help="Then serve the HQ hub over that scan day (prints its URL and a one-time login).")
@click.option("--hub-port", type=click.IntRange(0, 65535), default=0, help="Port for --hub (default: a free one).")
def demo_cmd(out_dir: str, destination: str | None, timeout: float, with_hub: bool, hub_port: int) -> None:
    """Play a scan day with no server and no set-up.

    Synthetic patients are planted into copies of the bundled real head CT; a simulated
    scanner sends them over DICOM C-STORE to the gateway (running in this process on free
    loopback ports), which de-identifies, triages and delivers them to a local folder
    standing in for HQ, through a link that really drops a third of its connections.
    Then the triage overlay (highlighted_scan.png) and the fleet mining report
    (mining_report.png) are written, and a summary says what happened.
    """
    from medsendx.gateway.demo import DemoError, run_demo

    out = Path(out_dir)
    try:
        with console.status("playing the scan day...") as status:
            summary = run_demo(out, destination, report=lambda line: console.print(f"  {line}"), timeout=timeout)
            status.stop()
    except DemoError as exc:
        err_console.print(f"[red]demo:[/] {exc}")
        raise SystemExit(2) from None
    pct = 100.0 * (1 - summary.wire_bytes / summary.raw_bytes) if summary.raw_bytes else 0.0
    console.print()
    console.print(f"[bold]Scan day summary[/] ({summary.seconds:.0f} s)")
    console.print(f"  objects: {summary.objects_scanned} scanned, {summary.objects_received} received, "
                  f"{summary.objects_deidentified} de-identified, {summary.objects_quarantined} quarantined, "
                  f"{summary.objects_delivered} delivered to {summary.destination}, with "
                  f"{summary.results_delivered} triage results (SEG, TID 1500 report, key images)")
    if not destination:
        console.print(f"  identities removed: {summary.attributes_changed} attributes removed or replaced; "
                      f"of {summary.identities_planted} planted identifying values, "
                      f"{summary.identities_found_at_hq} found in what reached HQ")
    console.print(f"  bytes: {summary.raw_bytes:,} raw received, {summary.wire_bytes:,} on the wire "
                  f"({pct:.0f}% saved)")
    console.print(f"  link: {summary.link_resets} connections dropped, {summary.delivery_retries} delivery retries survived")
    if summary.priorities:
        top = summary.priorities[0]
        reasons = "; ".join(top["reasons"][:2]) or "no findings"
        spread = Counter(p["priority"] for p in summary.priorities)
        levels = ", ".join(f"{n} at {level}" for level, n in sorted(spread.items(), key=lambda kv: -(kv[0] or 0)))
        console.print(f"  triage priorities (0-100, workflow only, not a diagnosis): {levels}; "
                      f"highest {top['priority']} ({reasons})")
    if summary.fleet_alerts:
        console.print(f"  fleet alerts ({len(summary.fleet_alerts)}):")
        for alert in summary.fleet_alerts[:5]:
            console.print(f"    - {alert}")
    elif "mining_report" in summary.outputs:
        console.print("  fleet alerts: none")
    for name, path in summary.outputs.items():
        console.print(f"  wrote {path}")
    console.print(f"  wrote {out / 'summary.json'}")
    for note in summary.notes:
        console.print(f"  [dim]note: {note}[/]")
    for missing in summary.missing:
        err_console.print(f"[yellow]not shown:[/] {missing}")
    ok = summary.objects_delivered + summary.objects_quarantined >= summary.objects_scanned and summary.identities_found_at_hq == 0
    if not ok:
        err_console.print("[red]the scan day did not complete: see the figures above[/]")
        raise SystemExit(1)
    if with_hub:
        from medsendx.hub.demo import serve_demo_hub

        serve_demo_hub(out, destination, hub_port, report=lambda line: console.print(line, soft_wrap=True))
