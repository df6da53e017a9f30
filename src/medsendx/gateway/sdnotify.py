"""systemd's service notification protocol (sd_notify(3)) in a few lines, no dependency.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a unix datagram socket; a name
starting with ``@`` is in the abstract namespace) and waits for ``READY=1``; with
``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` and restarts the service when no
``WATCHDOG=1`` arrives within that time. Outside systemd (no ``$NOTIFY_SOCKET``) every
call does nothing, so the gateway runs the same in a terminal or a container.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable, Mapping


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (nothing when it is unset)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its real name starts with a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            pid = int(env.get("WATCHDOG_PID", "0") or 0)
        except ValueError:
            usec, pid = 0, 0
        # systemd names the process that must feed the watchdog; 0 means "the main process".
        self.watchdog_seconds = usec / 1e6 if usec > 0 and pid in (0, os.getpid()) else 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when not sent (no socket, error)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False  # systemd gone or the socket unreadable: the service keeps running

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def start_watchdog(self, healthy: Callable[[], bool], interval: float | None = None) -> None:
        """Send ``WATCHDOG=1`` every half watchdog period while ``healthy()`` is true.
        When it turns false the pings stop and systemd restarts the service (Restart=)."""
        period = interval if interval is not None else self.watchdog_seconds / 2
        if not self.address or period <= 0:
            return

        def loop() -> None:
            while not self._stop.is_set():
                if healthy():
                    self.notify("WATCHDOG=1")
                self._stop.wait(period)

        self._thread = threading.Thread(target=loop, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
