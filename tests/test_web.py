"""`fleet-tui web`: the console served over loopback through textual-serve, every request behind the token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from fleet_tui.cli import build_parser
from fleet_tui.tui.web import COOKIE, TokenServer


@asynccontextmanager
async def served(token: str = "s3cret-token") -> AsyncIterator[str]:
    """The web console on 127.0.0.1 (a free port); yields its base URL."""
    server = TokenServer("true", host="127.0.0.1", port=0, token=token)
    runner = web.AppRunner(await server._make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.port = port
    server.public_url = f"http://127.0.0.1:{port}"
    try:
        yield server.public_url
    finally:
        await runner.cleanup()


@pytest.mark.anyio
async def test_the_page_needs_the_token() -> None:
    async with served() as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/") as response:
            assert response.status == 403
            assert "needs the token" in await response.text()
        async with session.get(f"{base}/?token=wrong") as response:
            assert response.status == 403
        async with session.get(f"{base}/?token=s3cret-token") as response:
            assert response.status == 200
            page = await response.text()
            assert "/ws" in page and response.cookies[COOKIE].value == "s3cret-token"
            assert response.cookies[COOKIE]["httponly"] and response.cookies[COOKIE]["samesite"] == "Strict"


@pytest.mark.anyio
async def test_static_files_and_the_websocket_need_the_token_too() -> None:
    async with served() as base:
        async with aiohttp.ClientSession() as stranger:
            async with stranger.get(f"{base}/static/js/textual.js") as response:
                assert response.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await stranger.ws_connect(f"{base}/ws")
            assert refused.value.status == 403
        # a browser keeps cookies of 127.0.0.1; aiohttp's client does only when told to
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{base}/?token=s3cret-token") as response:
                assert response.status == 200
            async with browser.get(f"{base}/static/js/textual.js") as response:  # the cookie carries the token
                assert response.status == 200


def test_a_printed_url_carries_a_fresh_random_token() -> None:
    one, two = TokenServer("true"), TokenServer("true")
    assert one.token != two.token and len(one.token) >= 32
    assert one.url == f"http://127.0.0.1:8000/?token={one.token}"


def test_the_web_command_listens_on_loopback_by_default() -> None:
    args = build_parser().parse_args(["web"])
    assert (args.command, args.host, args.port) == ("web", "127.0.0.1", 8000)
    args = build_parser().parse_args(["web", "--port", "9001"])
    assert args.port == 9001
