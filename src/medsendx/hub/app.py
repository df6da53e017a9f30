"""The hub's web application (FastAPI + Jinja2 + htmx), served by uvicorn.

Pages: /worklist (studies by triage priority, then arrival), /study/{uid} (overlay from
image + SEG, measurements, QC findings, viewer link), /fleet (stations, alerts, control
charts, density/contrast scatter). JSON API under /api/ (OpenAPI at /api/openapi.json,
described at /api/docs); the pages render the same functions the API returns.

Everything but the sign-in page needs a signed-in user: /api/* answers 401, pages
redirect to /login. A background thread polls the PACS and the feature store.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from medsendx.config import Settings
from medsendx.hub.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    FailureLimiter,
    SessionStore,
    UserStore,
    check_name,
    default_users_file,
    tokens_equal,
)
from medsendx.hub.fleet import FleetView
from medsendx.hub.source import Source, SourceError, check_uid, open_source
from medsendx.hub.worklist import WorklistCache

log = logging.getLogger("medsendx.hub")

PACKAGE_DIR = Path(str(resources.files("medsendx.hub")))
PUBLIC_PATHS = {"/login", "/static/hub.css", "/favicon.ico"}  # the sign-in page, its style sheet, no icon
FLAGS = {"repeat": "repeat advised", "report": "with a report", "noreport": "no report yet", "dense": "dense breast (>= 50 %)"}


def hub_paths(settings: Settings) -> tuple[str, str, Path, Path]:
    """(source, feature store, users file, cache) with the defaults filled in."""
    from medsendx.pipeline import features_root

    hub = settings.hub
    return (
        hub.source or settings.destination,
        hub.feature_store or str(features_root(settings)),
        hub.users_file or default_users_file(settings.state_dir),
        hub.cache_path or settings.state_dir / "hub-cache.sqlite3",
    )


class Hub:
    """The hub's state: where it reads from, its cache, the fleet analysis, the poller."""

    def __init__(self, settings: Settings, source: Source | None = None) -> None:
        self.settings = settings
        location, store, users_file, cache_path = hub_paths(settings)
        self.source = source or open_source(location, verify_tls=settings.hub.verify_tls)
        self.cache = WorklistCache(cache_path)
        self.fleet = FleetView(store, settings)
        self.users = UserStore(users_file)
        self.sessions = SessionStore(settings.hub.session_hours * 3600)
        self.failures = FailureLimiter()
        self.one_time_users: set[str] = set()  # removed at their first sign-in (the demo's login)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pngs: OrderedDict[str, bytes] = OrderedDict()
        self._png_lock = threading.Lock()
        self.source_error: str | None = None

    def refresh_worklist(self) -> None:
        try:
            self.cache.refresh(self.source)
            self.source_error = None
        except SourceError as exc:
            self.source_error = str(exc)
        except Exception as exc:  # keep polling whatever one round met
            self.source_error = f"the studies could not be read ({type(exc).__name__})"
            log.warning("worklist refresh failed", extra={"fields": {"error": type(exc).__name__}})

    def refresh(self) -> None:
        self.refresh_worklist()
        self.fleet.refresh()

    def start(self) -> "Hub":
        """Two pollers, so that re-mining a big store never delays new studies. Each waits
        poll_seconds between rounds, or longer when a round took long (a PACS listing
        10,000 studies, a store of a million rows): at most a third of the time busy."""

        def loop(work) -> None:
            while not self._stop.is_set():
                started = time.monotonic()
                work()
                took = time.monotonic() - started
                self._stop.wait(max(self.settings.hub.poll_seconds, 2.0 * took))

        self._threads = [threading.Thread(target=loop, args=(work,), name=name, daemon=True)
                         for name, work in (("hub-worklist", self.refresh_worklist), ("hub-fleet", self.fleet.refresh))]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    # --- the data behind both the API and the pages -----------------------------------
    def worklist(self, station: str | None, modality: str | None, flag: str | None, day: str | None,
                 limit: int, offset: int) -> dict[str, Any]:
        out = self.cache.worklist(station=station, modality=modality, flag=flag, day=day, limit=limit, offset=offset)
        out["refreshed"] = _iso(self.cache.last_refresh)
        out["source_error"] = self.source_error
        return out

    def study(self, study_uid: str) -> dict[str, Any] | None:
        study = self.cache.study(study_uid)
        if study is None:
            return None
        template = self.settings.hub.viewer_url
        study["viewer_url"] = template.replace("{study_uid}", study_uid) if template else None
        return study

    def stations(self) -> dict[str, Any]:
        return {
            "stations": self.fleet.stations(self.cache.per_station()),
            "scans": (self.fleet.report or {}).get("scans", 0),
            "analysed": _iso(self.fleet.analysed_at),
            "analysis_seconds": round(self.fleet.seconds, 2) if self.fleet.seconds is not None else None,
            "error": self.fleet.error,
        }

    def alerts(self) -> list[dict[str, Any]]:
        return self.fleet.alerts()

    def overlay_png(self, study_uid: str) -> bytes:
        """The overlay of the study's key image (highest priority in the report, else the
        first key object, else the first image), with the SEG's segments for it."""
        from medsendx.hub.overlay import render_overlay_png
        from medsendx.hub.results import segments_for_image

        study = self.cache.study(study_uid)
        if study is None:
            raise KeyError(study_uid)
        key = f"{study_uid}:{study['objects']}"
        with self._png_lock:
            if key in self._pngs:
                return self._pngs[key]
        detail = study["detail"]
        wanted = (detail.get("report") or {}).get("top_image")
        if not wanted:
            wanted = next((uid for k in detail.get("key_objects", []) for uid in k["images"]), None)
        image_series = {s["series_uid"] for s in detail.get("image_series", [])}
        modalities = tuple({s["modality"] for s in detail.get("image_series", [])})
        located = None
        for series in self.source.series(study_uid, with_instances_of=modalities):
            if series.series_uid not in image_series:
                continue
            if wanted in series.sop_uids:
                located = (series.series_uid, wanted)
                break
            if located is None and series.sop_uids:
                located = (series.series_uid, series.sop_uids[len(series.sop_uids) // 2])
        if located is None:
            raise KeyError(study_uid)
        ds = self.source.instance(study_uid, *located)
        segments = []
        for seg_ref in detail.get("segmentations", []):
            seg = self.source.instance(study_uid, seg_ref["series_uid"], seg_ref["sop_uid"])
            segments.extend(segments_for_image(seg, located[1]))
        png = render_overlay_png(ds, segments)
        with self._png_lock:
            self._pngs[key] = png
            while len(self._pngs) > 64:
                self._pngs.popitem(last=False)
        return png


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


def _client_trusted(request: Request, proxies: list[str]) -> bool:
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in proxies:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def create_app(settings: Settings, hub: Hub | None = None, *, poll: bool = True) -> FastAPI:
    hub = hub or Hub(settings)
    templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    templates.env.globals["flag_names"] = FLAGS

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if poll:
            hub.start()
        yield
        hub.stop()

    app = FastAPI(title="MedSendX hub", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.hub = hub
    cfg = settings.hub

    def secure(request: Request) -> bool:
        if cfg.secure_cookies != "auto":
            return cfg.secure_cookies == "always"
        if request.url.scheme == "https":
            return True
        return (_client_trusted(request, cfg.trusted_proxies)
                and request.headers.get("x-forwarded-proto", "").lower() == "https")

    @app.middleware("http")
    async def require_user(request: Request, call_next):
        request.state.user = None
        request.state.csrf = None
        if cfg.trusted_user_header and cfg.trusted_proxies and _client_trusted(request, cfg.trusted_proxies):
            name = request.headers.get(cfg.trusted_user_header, "")
            try:
                request.state.user = check_name(name) if name else None
            except ValueError:
                request.state.user = None
        if request.state.user is None:
            session = hub.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is not None:
                request.state.user, request.state.csrf = session.user, session.csrf
        if request.state.user is None and request.url.path not in PUBLIC_PATHS:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"detail": "sign in first"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Cookie realm="medsendx-hub"'})
            if request.headers.get("hx-request"):  # an expired session during htmx polling
                return Response(status_code=401, headers={"HX-Redirect": "/login"})
            return RedirectResponse("/login", status_code=303)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'",
        )
        return response

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        context |= {"user": request.state.user, "csrf": request.state.csrf}
        return templates.TemplateResponse(request, name, context)

    # --- sign in / out ----------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, failed: int = 0) -> HTMLResponse:
        import secrets as _secrets

        # One token per browser while it signs in: a second tab (or the browser's own
        # /favicon.ico request) must not invalidate the form already shown.
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
        if not re.fullmatch(r"[A-Za-z0-9_-]{43}", token):
            token = _secrets.token_urlsafe(32)
        response = templates.TemplateResponse(request, "login.html", {"csrf": token, "failed": bool(failed),
                                                                       "user": request.state.user})
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure(request),
                            max_age=3600, path="/login")
        return response

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form(""), password: str = Form(""), csrf: str = Form("")) -> Response:
        if not tokens_equal(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
            return HTMLResponse("Sign-in form expired or forged: reload the sign-in page.", status_code=403)
        address = request.client.host if request.client else ""
        if hub.failures.blocked(username, address):
            return HTMLResponse("Too many wrong passwords: wait five minutes.", status_code=429)
        if not hub.users.verify(username, password):
            hub.failures.failed(username, address)
            log.info("sign-in refused")  # no name: it may be a password typed in the wrong box
            return RedirectResponse("/login?failed=1", status_code=303)
        if username in hub.one_time_users:
            hub.users.remove(username)
            hub.one_time_users.discard(username)
        token = hub.sessions.create(username)
        response = RedirectResponse("/worklist", status_code=303)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=secure(request),
                            max_age=int(cfg.session_hours * 3600), path="/")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")) -> Response:
        if not tokens_equal(csrf, request.state.csrf):
            return HTMLResponse("Forged or expired form.", status_code=403)
        hub.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- API ----------------------------------------------------------------------------
    @app.get("/api/worklist", tags=["worklist"], summary="Studies by triage priority, then arrival")
    def api_worklist(station: str | None = None, modality: str | None = None,
                     flag: str | None = Query(None, description="repeat | report | noreport | dense"),
                     date: str | None = Query(None, description="day received, YYYY-MM-DD"),
                     limit: int = Query(200, ge=1, le=20000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        return hub.worklist(station, modality, flag, date, limit, offset)

    @app.get("/api/studies/{study_uid}", tags=["worklist"], summary="One study: triage report, key objects, segmentations")
    def api_study(study_uid: str) -> dict[str, Any]:
        study = _study_or_404(study_uid)
        return study

    @app.get("/api/stations", tags=["fleet"], summary="One row per station: status, scans, alerts, last study")
    def api_stations() -> dict[str, Any]:
        return hub.stations()

    @app.get("/api/alerts", tags=["fleet"], summary="Every fleet alert, with the sentence `mine` writes")
    def api_alerts() -> list[dict[str, Any]]:
        return hub.alerts()

    @app.get("/api/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs(request: Request) -> HTMLResponse:
        return page(request, "docs.html", schema=app.openapi())

    def _study_or_404(study_uid: str) -> dict[str, Any]:
        try:
            check_uid(study_uid)
        except ValueError:
            raise HTTPException(404, "no such study") from None
        study = hub.study(study_uid)
        if study is None:
            raise HTTPException(404, "no such study")
        return study

    # --- pages ----------------------------------------------------------------------------
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/worklist", status_code=303)

    def _filters(station, modality, flag, date) -> dict[str, str]:
        return {k: v for k, v in {"station": station, "modality": modality, "flag": flag, "date": date}.items() if v}

    @app.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request, station: str | None = None, modality: str | None = None,
                      flag: str | None = None, date: str | None = None) -> HTMLResponse:
        data = hub.worklist(station, modality, flag, date, 200, 0)
        return page(request, "worklist.html", data=data, filters=_filters(station, modality, flag, date),
                    choices=hub.cache.choices())

    @app.get("/worklist/rows", response_class=HTMLResponse, include_in_schema=False)
    def worklist_rows(request: Request, station: str | None = None, modality: str | None = None,
                      flag: str | None = None, date: str | None = None) -> HTMLResponse:
        data = hub.worklist(station, modality, flag, date, 200, 0)
        return page(request, "worklist_rows.html", data=data, filters=_filters(station, modality, flag, date))

    @app.get("/study/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, study_uid: str) -> HTMLResponse:
        return page(request, "study.html", study=_study_or_404(study_uid))

    @app.get("/study/{study_uid}/overlay.png", include_in_schema=False)
    def study_overlay(study_uid: str) -> Response:
        from medsendx.hub.overlay import NotShowable

        _study_or_404(study_uid)
        try:
            png = hub.overlay_png(study_uid)
        except KeyError:
            raise HTTPException(404, "no image in this study") from None
        except NotShowable as exc:
            raise HTTPException(409, str(exc)) from None
        except SourceError as exc:
            raise HTTPException(502, str(exc)) from None
        return Response(png, media_type="image/png")

    @app.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
    def fleet_page(request: Request) -> HTMLResponse:
        return page(request, "fleet.html", **_fleet_context())

    @app.get("/fleet/live", response_class=HTMLResponse, include_in_schema=False)
    def fleet_live(request: Request) -> HTMLResponse:
        return page(request, "fleet_live.html", **_fleet_context())

    def _fleet_context() -> dict[str, Any]:
        from medsendx.hub.charts import control_chart, scatter

        data = hub.stations()
        alerting = {s["station"] for s in data["stations"] if s["status"] == "alert"}
        report = hub.fleet.report or {}
        charts = sorted(report.get("_charts", []), key=lambda c: -abs(c["score"]) if c["score"] == c["score"] else 0)
        return {
            "data": data,
            "charts": [control_chart(c) for c in charts[:12]],
            "more_charts": max(0, len(charts) - 12),
            "scatter": scatter(report.get("_scatter"), alerting),
        }

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in ("htmx.min.js", "hub.css"):
            raise HTTPException(404)
        return FileResponse(PACKAGE_DIR / "static" / name, headers={"Cache-Control": "private, max-age=3600"})

    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the hub with uvicorn until interrupted."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(app, host=host or settings.hub.host, port=settings.hub.port if port is None else port,
                            log_level="info", access_log=True, server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    server.run()
