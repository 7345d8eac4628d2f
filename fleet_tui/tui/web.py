"""`fleet-tui web`: the attached console in a browser, through textual-serve, behind a random access token.

textual-serve runs one console process per browser tab (`fleet-tui --attach`, so a tab never hosts the fleet
and closing it never stops it). It has no authentication of its own: `TokenServer` adds an aiohttp middleware
that refuses (403) every request, page, static file or websocket, without the token. The token comes in the
URL's `token` query; a page opened with it sets an HttpOnly, SameSite=Strict cookie so the page's own
requests (scripts, the websocket) carry it too. It listens on 127.0.0.1 unless told otherwise: reach it
from a laptop with SSH port forwarding. The browser shows the same app as the terminal, so untrusted text is
sanitized the same way.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web
from textual_serve.server import Server

COOKIE = "fleet_tui_token"


def token_ok(request: web.Request, token: str) -> bool:
    given = request.query.get("token") or request.cookies.get(COOKIE) or ""
    return hmac.compare_digest(given.encode(), token.encode())


class TokenServer(Server):
    """textual-serve's `Server`, every route behind `token`."""

    def __init__(self, command: str, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 title: str = "fleet-tui") -> None:
        super().__init__(command, host=host, port=port, title=title)
        self.token = token or secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        return f"{self.public_url}/?token={quote(self.token)}"

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        token = self.token

        @web.middleware
        async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
            if not token_ok(request, token):
                return web.Response(status=403, text="403: this fleet-tui console needs the token from the URL "
                                                     "`fleet-tui web` printed\n")
            response = await handler(request)
            if request.query.get("token") and not response.prepared:
                response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            return response

        app.middlewares.append(require_token)
        return app

    async def on_startup(self, app: web.Application) -> None:
        self.console.print(f"fleet-tui console on [bold]{self.url}[/bold]", highlight=False, soft_wrap=True)
        self.console.print("Anyone with this URL can operate the fleet: share it like a password. "
                           "Ctrl+C stops serving (the fleet keeps running).", highlight=False)


def serve_console(command: str, *, host: str, port: int) -> int:
    """Serve `command` (the attached console) until Ctrl+C."""
    TokenServer(command, host=host, port=port).serve()
    return 0


__all__ = ["TokenServer", "serve_console", "token_ok"]
