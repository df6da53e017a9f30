"""The HQ hub (issue 15): a reading worklist sorted by the trucks' triage priority and a
fleet dashboard, in the browser. ``medsendx hub`` serves it; see :mod:`medsendx.hub.app`."""

from __future__ import annotations

__all__ = ["create_app", "Hub"]


def __getattr__(name: str):
    if name in __all__:  # FastAPI is imported only when the hub is used
        from medsendx.hub import app

        return getattr(app, name)
    raise AttributeError(name)
