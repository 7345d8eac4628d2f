"""The wire under githubkit: every request counted, and an ETag cache of its own so an unchanged poll is a
free 304 (githubkit's hishel cache spent a second point per change)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fleet_tui.forge.base import ForgeError

if TYPE_CHECKING:
    import httpx

class Transient(ForgeError):
    """A 5xx or a timeout: the request may or may not have taken effect."""


@dataclass
class Meter:
    """What the wire saw (below the http cache): real requests, 304s, rate points spent."""

    requests: int = 0
    gets: int = 0
    not_modified: int = 0
    remaining: int | None = None
    limit: int | None = None
    reset: int | None = None

    @property
    def points(self) -> int:
        return self.requests - self.not_modified


CACHE_ENTRIES = 20_000


def metered_transport(meter: Meter, timeout: float, conditional: bool = True) -> httpx.AsyncBaseTransport:
    """The wire: every request counted (`meter`), and with `conditional` an ETag cache for GETs: a stored
    reply's ETag goes out as `If-None-Match`, and a 304 is answered from the store (with the 304's fresh
    headers), costing no rate-limit point.

    This replaces githubkit's hishel cache, which costs a second point per change: after a changed reply (a
    200 to a conditional request) hishel 1.x keeps the old entry beside the new one, and when the next 304
    comes it can match stored entries only by a strong ETag or a single entry; GitHub's ETags are weak
    (`W/"..."`), so it drops both and fetches the same URL again unconditionally."""
    import httpx

    timeouts = httpx.Timeout(timeout).as_dict()
    store: OrderedDict[tuple[str, str], tuple[str, httpx.Headers, bytes]] = OrderedDict()

    class MeteredTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if not request.extensions.get("timeout"):
                request.extensions = {**request.extensions, "timeout": timeouts}
            key = (str(request.url), request.headers.get("accept", ""))
            cached = store.get(key) if conditional and request.method == "GET" else None
            if cached is not None:
                request.headers["If-None-Match"] = cached[0]
            response = await self._send(request)
            if not conditional or request.method != "GET":
                return response
            if response.status_code == 304 and cached is not None:
                await response.aclose()  # hands the connection back to the pool
                store.move_to_end(key)
                headers = httpx.Headers(cached[1])
                for name, value in response.headers.items():
                    if name.lower() not in ("content-length", "content-encoding", "transfer-encoding"):
                        headers[name] = value
                return httpx.Response(200, headers=headers, content=cached[2], request=request,
                                      extensions={"fleet_not_modified": True})
            etag = response.headers.get("etag")
            if response.status_code == 200 and etag:
                content = await response.aread()
                headers = httpx.Headers(response.headers)
                for name in ("content-encoding", "transfer-encoding"):
                    headers.pop(name, None)
                store[key] = (etag, headers, content)
                store.move_to_end(key)
                while len(store) > CACHE_ENTRIES:
                    store.popitem(last=False)
                return httpx.Response(200, headers=headers, content=content, request=request)
            if response.status_code in (404, 410):
                store.pop(key, None)
            return response

        async def _send(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            meter.requests += 1
            if request.method == "GET":
                meter.gets += 1
            if response.status_code == 304:
                meter.not_modified += 1
            headers = response.headers
            if headers.get("x-ratelimit-resource", "core") == "core":
                for attr, name in (("remaining", "x-ratelimit-remaining"), ("limit", "x-ratelimit-limit"),
                                   ("reset", "x-ratelimit-reset")):
                    value = headers.get(name)
                    if value is not None and value.isdigit():
                        setattr(meter, attr, int(value))
            return response

    return MeteredTransport(retries=0)
