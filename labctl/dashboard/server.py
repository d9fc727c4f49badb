"""The dashboard's HTTP side (aiohttp): one page (overview, and a view per cluster), its script and style from this
package (no CDN, works offline), and the collector's newest snapshot as JSON, which the page polls.

Bound to 127.0.0.1 only. Every URL starts with a random token (`/<token>/...`); any other request gets 403, so
other local users and web pages the browser has open cannot read the lab's state. The page is served with a
Content-Security-Policy of its own origin only (the browser refuses any request elsewhere) and no Referer (the
token never leaves in a link to a stack's URL).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import threading
from importlib import resources

from aiohttp import web

from ..errors import LabctlError
from .collector import Collector

HOST = "127.0.0.1"
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Cache-Control": "no-store",
    # the page's own origin only; data: for the empty favicon (no /favicon.ico request, which would be a 403)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text()


def make_app(collector: Collector, token: str, title: str) -> web.Application:
    """The aiohttp application: `/<token>/` (overview), `/<token>/cluster/<name>`, `/<token>/api/snapshot`
    (Collector.latest() as JSON), `/<token>/static/<app.js|style.css>`. 403 for a path without the token."""
    prefix = f"/{token}"

    @web.middleware
    async def guard(request: web.Request, handler):
        first = request.path.split("/", 2)[1] if request.path.startswith("/") else ""
        if not hmac.compare_digest(first.encode(), token.encode()):
            return web.Response(status=403, text="forbidden: open the URL `labctl dashboard` printed (it carries "
                                                 "the token)\n", headers=HEADERS)
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

    page = _asset("index.html").replace("{{base}}", prefix + "/").replace("{{title}}", title)

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def snapshot(_request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(collector.latest()), content_type="application/json")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=STATIC[name])

    async def to_slash(_request: web.Request) -> web.Response:
        raise web.HTTPFound(prefix + "/")

    app = web.Application(middlewares=[guard])
    app.router.add_get(prefix, to_slash)
    app.router.add_get(prefix + "/", index)
    app.router.add_get(prefix + "/cluster/{name}", index)
    app.router.add_get(prefix + "/api/snapshot", snapshot)
    app.router.add_get(prefix + "/static/{name}", static)
    return app


class DashboardServer:
    """The app served on 127.0.0.1:`port` (0: a free one) by an event loop in a daemon thread.

    `start()` returns the URL with the token; raises LabctlError when the port cannot be bound."""

    def __init__(self, collector: Collector, port: int = 0, title: str = "labctl", token: str | None = None):
        self.collector, self.requested_port, self.title = collector, port, title
        self.token = token or secrets.token_urlsafe(24)  # 192 bits, URL-safe
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dashboard-http", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/{self.token}/"

    async def _start(self) -> int:
        self._runner = web.AppRunner(make_app(self.collector, self.token, self.title), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.requested_port)
        await site.start()
        return self._runner.addresses[0][1]

    def start(self) -> str:
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except OSError as exc:
            self.stop()
            raise LabctlError(f"cannot listen on {HOST}:{self.requested_port}: {exc.strerror or exc}",
                              hint="choose another --port, or --port 0 for a free one") from None
        return self.url

    def stop(self) -> None:
        if self._runner is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
