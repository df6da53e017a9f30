"""HEALTHCHECK of the container image: exit 0 when the gateway's /healthz says ok.

Reads the HTTP port the way the gateway does (settings file + MEDSENDX_* environment),
so a changed ``gateway.http_port`` is followed.
"""

import json
import os
import sys
import urllib.request

try:
    if not os.environ.get("MEDSENDX_CONFIG") and os.path.isfile("/etc/medsendx/medsendx.toml"):
        os.environ["MEDSENDX_CONFIG"] = "/etc/medsendx/medsendx.toml"
    from medsendx.config import load_settings

    port = load_settings().gateway.http_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
        sys.exit(0 if json.load(response).get("status") == "ok" else 1)
except Exception as exc:  # any failure is "unhealthy"; say which kind, nothing more
    print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
    sys.exit(1)
