"""``medsendx demo --hub``: after the scan day, serve the hub over what reached HQ.

The studies come from the demo's HQ folder (or the PACS given with ``--to`` when it is a
DICOMweb URL), the fleet from the ``features.parquet`` the demo's mining wrote (this
truck beside the simulated fleet). A user ``demo`` with a random password is made for the
run; the password works once (the user is removed at its first sign-in; the session
lasts).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

from medsendx.config import Settings, load_settings

DEMO_USER = "demo"


def demo_hub_settings(out: Path, to: str | None, port: int) -> Settings:
    settings = load_settings(None, environ={})  # like the demo itself: not the user's settings
    settings.state_dir = out / "hub-state"
    source = to if to and to.startswith(("dicomweb+", "http://", "https://")) else str(out / "hq")
    settings.hub.source = source
    settings.hub.feature_store = str(out / "features.parquet")
    settings.hub.host = "127.0.0.1"
    settings.hub.port = port or _free_port()
    settings.hub.poll_seconds = 5.0
    return settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_demo_hub(out: Path, to: str | None, port: int = 0, report: Callable[[str], None] = print) -> None:
    import uvicorn

    from medsendx.hub.app import Hub, create_app
    from medsendx.hub.auth import new_password

    settings = demo_hub_settings(Path(out), to, port)
    hub = Hub(settings)
    password = new_password()
    hub.users.set_password(DEMO_USER, password)
    hub.one_time_users.add(DEMO_USER)
    hub.refresh()  # the scan day is on the worklist before the first page view
    app = create_app(settings, hub)
    url = f"http://{settings.hub.host}:{settings.hub.port}/"
    report(f"hub: {url}  (sign in once as {DEMO_USER} / {password}; Ctrl-C stops it)")
    config = uvicorn.Config(app, host=settings.hub.host, port=settings.hub.port, log_level="warning",
                            access_log=False, server_header=False)
    uvicorn.Server(config).run()
