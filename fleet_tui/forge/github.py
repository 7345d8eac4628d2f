"""The GitHub forge: the `Forge` protocol over GitHub's REST API through githubkit.

Owns the request queue (serial, writes spaced, rate limits obeyed by pausing rather than sleeping),
conditional requests (an ETag cache of its own in the transport, so an unchanged poll is a free 304),
the two identities (fleet and operator), GitHub App installation auth (a JWT signed with the App's key buys
short-lived installation tokens; githubkit renews them), pushing branches with the fleet's credentials, and the
token report for `fleet-tui check`. The fleet can comment on a pull request; nothing here can accept or land one.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio

from fleet_tui.forge.base import (
    DIFF_LIMIT,
    ClaimLease,
    ForgeError,
    GitSource,
    NotFound,
    Permission,
    RateLimitedError,
    cut_diff,
)
from fleet_tui.forge.github_claims import GitHubClaims
from fleet_tui.forge.github_shapes import (
    EDITS_QUERY,
    actor_of,
    branch_sha,
    ci_verdict,
    comment_of,
    forbidden,
    head_repo_of,
    issue_of,
    pull_summary,
    record_outcome,
    required_checks,
    review_comment_of,
    review_of,
    settled,
    time_of,
)
from fleet_tui.forge.github_wire import Meter, Transient, metered_transport
from fleet_tui.model import (
    Actor,
    CIState,
    Comment,
    Issue,
    LabelEvent,
    PullRequest,
    RateLimit,
    Review,
    ReviewComment,
    TextEdit,
)

if TYPE_CHECKING:
    import httpx
    from githubkit import GitHub

    from fleet_tui.config import FleetConfig

log = logging.getLogger("fleet_tui.forge.github")
T = TypeVar("T")
RateListener = Callable[[RateLimit], None]

# Classic-token scopes the fleet can use; anything else is more than it needs.
NEEDED_SCOPES = frozenset({"repo", "public_repo"})
HARMLESS_SCOPES = frozenset({"read:org", "read:user", "user:email", "repo:status", "public_repo"})
DANGEROUS_SCOPES = ("workflow", "delete_repo", "admin:", "write:packages", "delete:packages", "site_admin",
                    "write:org", "user", "codespace", "gist", "write:discussion")

_WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_CI_OK = frozenset({"success", "neutral", "skipped"})
_SECONDARY_RE = re.compile(r"secondary rate|abuse", re.IGNORECASE)

# App permissions the fleet uses, and read-only ones that do no harm; anything else is more than it needs.
APP_NEEDED_PERMISSIONS = {"issues": "write", "pull_requests": "write", "contents": "write", "metadata": "read"}
APP_HARMLESS_PERMISSIONS = frozenset({"checks", "statuses", "actions"})
# What a push token is minted with: code only, this repository only.
_PUSH_PERMISSIONS = {"contents": "write", "metadata": "read"}
_AUTH_APP_HINT = "GitHub App auth needs PyJWT and cryptography: pip install 'githubkit[auth-app]'"


@dataclass(frozen=True)
class AppCredentials:
    """A GitHub App installation the fleet writes as. `installation_id` None: looked up for the repository."""

    app_id: int
    installation_id: int | None
    private_key: str = field(repr=False)


def check_app_key(private_key: str, where: str = "the GitHub App private key") -> None:
    """Raise `ForgeError` unless `private_key` is an unencrypted RSA private key in PEM (what GitHub issues).
    The message never quotes the key."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise ForgeError(_AUTH_APP_HINT) from None
    try:
        key = load_pem_private_key(private_key.encode(), password=None)
    except TypeError:
        raise ForgeError(f"{where} is encrypted with a passphrase; use the unencrypted .pem GitHub "
                         "downloads") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ForgeError(f"{where} is not a PEM private key; download a new one from the App's settings "
                         "(Private keys > Generate a private key)") from None
    if not isinstance(key, RSAPrivateKey):
        raise ForgeError(f"{where} is not an RSA key; GitHub Apps sign with RSA (RS256)")


def load_app_key(path: str | Path) -> str:
    """The App's private key from `path`, refused when group or others can read it (like ssh does)."""
    key_path = Path(path).expanduser()
    where = f"forge.app_private_key_path ({key_path})"
    try:
        info = key_path.stat()
        if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ForgeError(f"{where} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); the "
                             f"App's key is a password, readable by you alone: run `chmod 600 {key_path}`")
        text = key_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ForgeError(f"{where}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ForgeError(f"{where} is not a PEM private key (not text)") from None
    check_app_key(text, where)
    return text


class _Identity:
    """One authenticated githubkit client, its wire meter and its login."""

    def __init__(self, github: GitHub[Any], meter: Meter, token: str | None, app: AppCredentials | None) -> None:
        self.github = github
        self.meter = meter
        self.token = token
        self.app = app
        self.actor: Actor | None = None
        self.push_token: tuple[str, float] | None = None  # an App's push token and when to stop using it


class GitHubForge:
    """`Forge` on GitHub (or GitHub Enterprise Server: `base_url="https://HOST/api/v3/"`)."""

    kind = "github"

    def __init__(
        self,
        repo: str,
        *,
        token: str | None = None,
        app: AppCredentials | None = None,
        operator_token: str | None = None,
        base_url: str = "https://api.github.com",
        timeout: float = 30.0,
        write_spacing: float = 1.0,
        max_retries: int = 3,
        retry_backoff: float = 1.0,
        secondary_backoff: float = 60.0,
        max_wait: float = 5.0,
        max_pause: float = 3600.0,
        per_page: int = 100,
        git_url: str | None = None,
        clock: Callable[[], float] = time.time,
        conditional: bool = True,
        settle_s: float = 5.0,
        readiness_reads: int = 3,
        readiness_backoff: float = 1.0,
        ci_rechecks: int = 1,
    ) -> None:
        """`write_spacing`: seconds between two writes. `max_wait`: longest rate-limit pause a call sits
        out; a longer one raises `RateLimitedError` and pauses the queue. `max_retries` / `retry_backoff`:
        5xx and timeouts. `secondary_backoff`: first wait on a secondary limit without `retry-after`,
        doubled each time in a row. `git_url`: where git fetches and pushes (`forge.push_url`; None: the
        repository's `clone_url` from the API). `clock`: wall time, for tests. `conditional=False` sends no
        ETags (for comparison only). `settle_s`: after a write timed out, how often to look for it before
        writing again. `readiness_reads` / `readiness_backoff`: extra reads of a PR (first wait, doubled)
        while GitHub still computes its mergeability."""
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(f"repo must be 'owner/name', got {repo!r}")
        if token is None and app is None:
            raise ValueError("a token or GitHub App credentials are needed")
        if app is not None:
            check_app_key(app.private_key)
        self.repo = repo
        self.owner, self.name = repo.split("/", 1)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.write_spacing = write_spacing
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.secondary_backoff = secondary_backoff
        self.max_wait = max_wait
        self.max_pause = max_pause
        self.per_page = per_page
        self.git_url = git_url or None
        self.settle_s = settle_s
        self.readiness_reads = readiness_reads
        self.readiness_backoff = readiness_backoff
        self.ci_rechecks = ci_rechecks  # settled PRs whose CI each poll reads again (round robin)
        self._clock = clock
        self.conditional = conditional
        self._token = token
        self._app = app
        self._operator_token = operator_token
        self._fleet: _Identity | None = None
        self._operator: _Identity | None = None
        self._app_github: GitHub[Any] | None = None
        self._queue = anyio.Lock()
        self._last_write = -math.inf
        self._paused_until: float | None = None
        self._pause_reason = ""
        self._secondary_strikes = 0
        self._listeners: list[RateListener] = []
        self._pull_details: dict[int, tuple[tuple[str, str], tuple[tuple[str, ...], tuple[Review, ...],
                                                                   tuple[ReviewComment, ...]]]] = {}
        self._pulls: dict[int, tuple[tuple[Any, ...], PullRequest]] = {}  # last full read, by its key
        self._ci_checked: dict[int, float] = {}  # when each PR's CI was last read
        self._claims = GitHubClaims(self)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: FleetConfig, token: str, operator_token: str | None = None,
                    **options: Any) -> GitHubForge:
        """The forge fleet.toml describes; `token` is the fleet's (unused when an App is configured:
        `forge.app_id` set means the fleet writes as that App's installation, never silently as the token)."""
        forge = config.forge
        app = None
        if forge.app_id is not None:
            if not forge.app_private_key_path:
                raise ForgeError("forge.app_id is set but forge.app_private_key_path is empty: point it at the "
                                 "App's private key (.pem, chmod 600)")
            app = AppCredentials(forge.app_id, forge.app_installation_id, load_app_key(forge.app_private_key_path))
        settings: dict[str, Any] = {"base_url": forge.api_url, "timeout": forge.timeout_s,
                                    "git_url": forge.push_url or None, "settle_s": forge.settle_s, **options}
        return cls(forge.repo, token=None if app else token, app=app, operator_token=operator_token, **settings)

    def _client(self, token: str | None, app: AppCredentials | None) -> _Identity:
        from githubkit import AppInstallationAuthStrategy, GitHub, TokenAuthStrategy
        from githubkit.cache import MemCacheStrategy

        meter = Meter()
        auth: Any
        if app is not None:
            assert app.installation_id is not None
            # githubkit mints the installation token (JWT-signed POST) on first use and renews it before expiry;
            # the token is limited to this one repository.
            auth = AppInstallationAuthStrategy(app.app_id, app.private_key, app.installation_id,
                                               repositories=[self.name])
        else:
            auth = TokenAuthStrategy(token or "")
        github = GitHub(
            auth, base_url=self.base_url, timeout=self.timeout, auto_retry=False, http_cache=False,
            cache_strategy=MemCacheStrategy(),
            # the ETag cache lives in the transport, one per identity: cached replies never cross tokens
            async_transport=metered_transport(meter, self.timeout, self.conditional), user_agent="fleet-tui",
        )
        return _Identity(github, meter, token, app)

    def _new_app_client(self, app: AppCredentials) -> GitHub[Any]:
        """A client that speaks as the App itself (a JWT), for /app, the installation and push tokens. Its own
        cache: githubkit's default one is process-wide and keyed by App id, so a JWT signed with another key
        of the same App would be reused."""
        from githubkit import AppAuthStrategy, GitHub
        from githubkit.cache import MemCacheStrategy

        return GitHub(AppAuthStrategy(app.app_id, app.private_key), base_url=self.base_url, timeout=self.timeout,
                      auto_retry=False, http_cache=False, cache_strategy=MemCacheStrategy(),
                      user_agent="fleet-tui")

    @property
    def _app_rest(self) -> Any:
        if self._app_github is None:
            raise ForgeError("the GitHub forge is not open (use `async with forge:`)")
        return self._app_github.rest

    async def __aenter__(self) -> GitHubForge:
        try:
            app = self._app
            if app is not None:
                app_github = self._new_app_client(app)
                await app_github.__aenter__()
                self._app_github = app_github
                if app.installation_id is None:
                    app = dataclasses.replace(app, installation_id=await self._find_installation(app))
                    self._app = app
            fleet = self._client(self._token, app)
            await fleet.github.__aenter__()
            self._fleet = fleet
            if self._operator_token:
                operator = self._client(self._operator_token, None)
                await operator.github.__aenter__()
                self._operator = operator
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for github in (self._operator and self._operator.github, self._fleet and self._fleet.github,
                       self._app_github):
            if github is not None:
                await github.__aexit__(None, None, None)
        self._fleet = self._operator = None
        self._app_github = None

    async def _find_installation(self, app: AppCredentials) -> int:
        """The id of the App's installation that covers this repository."""
        response = await self._call(self._app_rest.apps.async_get_repo_installation, self.owner, self.name,
                                    what=f"GET installation on {self.repo}")
        return int(response.parsed_data.id)

    @property
    def fleet_is_separate(self) -> bool:
        """The fleet writes as its own bot or App, apart from the operator."""
        return self._app is not None or bool(self._operator_token)

    def _ident(self, as_operator: bool = False) -> _Identity:
        ident = self._operator if as_operator and self._operator is not None else self._fleet
        if ident is None:
            raise ForgeError("the GitHub forge is not open (use `async with forge:`)")
        return ident

    @property
    def _rest(self) -> Any:
        return self._ident().github.rest

    # --- rate limits and the queue -------------------------------------------------------------
    def add_rate_listener(self, listener: RateListener) -> None:
        """Call `listener(rate_limit)` whenever the queue pauses or resumes."""
        self._listeners.append(listener)

    def remove_rate_listener(self, listener: RateListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def rate_limit(self) -> RateLimit:
        meters = [i.meter for i in (self._fleet, self._operator) if i is not None]
        fleet = meters[0] if meters else Meter()
        gets = sum(m.gets for m in meters)
        not_modified = sum(m.not_modified for m in meters)
        paused = self._paused_until if self._paused_until and self._paused_until > self._clock() else None
        return RateLimit(
            remaining=fleet.remaining, limit=fleet.limit,
            reset_at=datetime.fromtimestamp(fleet.reset, UTC) if fleet.reset else None,
            paused_until=datetime.fromtimestamp(paused, UTC) if paused else None,
            not_modified_share=(not_modified / gets) if gets else 0.0,
        )

    @property
    def wire(self) -> dict[str, int]:
        """Requests that reached the network, 304s among them, and primary rate points spent."""
        meters = [i.meter for i in (self._fleet, self._operator) if i is not None]
        return {"requests": sum(m.requests for m in meters), "not_modified": sum(m.not_modified for m in meters),
                "points": sum(m.points for m in meters)}

    def pause_message(self) -> str:
        """"rate limited until HH:MM" while paused, else ""."""
        until = self.rate_limit.paused_until
        if until is None:
            return ""
        return f"rate limited until {until.astimezone().strftime('%H:%M')} ({self._pause_reason})"

    def _publish(self) -> None:
        rate = self.rate_limit
        for listener in list(self._listeners):
            listener(rate)

    def _pause(self, seconds: float, reason: str) -> None:
        seconds = min(max(seconds, 0.0), self.max_pause)
        until = self._clock() + seconds
        if self._paused_until is None or until > self._paused_until:
            self._paused_until = until
            self._pause_reason = reason
            self._publish()

    async def _wait_pause(self) -> None:
        if self._paused_until is None:
            return
        left = self._paused_until - self._clock()
        if left <= 0:
            self._paused_until = None
            self._pause_reason = ""
            self._publish()
            return
        if left > self.max_wait:
            until = datetime.fromtimestamp(self._paused_until, UTC)
            raise RateLimitedError(f"GitHub {self.pause_message()}; the queued action runs after that", until)
        await anyio.sleep(left)
        self._paused_until = None
        self._pause_reason = ""
        self._publish()

    async def _space_write(self) -> None:
        wait = self._last_write + self.write_spacing - time.monotonic()
        if wait > 0:
            await anyio.sleep(wait)

    def _limit_seconds(self, response: httpx.Response) -> tuple[float, str] | None:
        """How long a 403/429 asks us to wait, or None when it is not a rate limit."""
        headers = response.headers
        try:
            message = str(response.json().get("message", ""))
        except Exception:
            message = ""
        retry_after = headers.get("retry-after")
        remaining = headers.get("x-ratelimit-remaining")
        reset = headers.get("x-ratelimit-reset")
        secondary = bool(_SECONDARY_RE.search(message)) or (retry_after is not None and remaining != "0")
        if secondary:
            self._secondary_strikes += 1
            base = float(retry_after) if retry_after and retry_after.isdigit() else self.secondary_backoff
            return base * 2 ** (self._secondary_strikes - 1), "secondary rate limit"
        if remaining == "0":
            if retry_after and retry_after.isdigit():
                return float(retry_after), "primary rate limit"
            if reset and reset.isdigit():
                return max(0.0, int(reset) - self._clock()) + 1.0, "primary rate limit"
            return 60.0, "primary rate limit"
        if response.status_code == 429:
            return self.secondary_backoff, "too many requests"
        return None

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, method: str = "GET", what: str = "",
                    retry_transient: bool = True, **kwargs: Any) -> T:
        """Run one request through the queue: pauses obeyed, writes spaced, limits and 5xx handled."""
        from githubkit.exception import RequestError, RequestFailed, RequestTimeout

        what = what or f"{method} {getattr(fn, '__name__', 'request').removeprefix('async_')}"
        attempt = 0
        while True:
            failure = ""
            async with self._queue:
                await self._wait_pause()
                write = method in _WRITE_METHODS
                if write:
                    await self._space_write()
                try:
                    try:
                        result = await fn(*args, **kwargs)
                    except RequestError as exc:
                        raise self._unwrap(exc, what) from None
                except RequestFailed as exc:
                    raw = exc.response.raw_response
                    status = raw.status_code
                    limit = self._limit_seconds(raw) if status in (403, 429) else None
                    if limit is not None:
                        seconds, reason = limit
                        self._pause(seconds, reason)
                        if seconds > self.max_wait:
                            until = datetime.fromtimestamp(self._paused_until or self._clock(), UTC)
                            raise RateLimitedError(f"GitHub {self.pause_message()} during {what}", until) from None
                        continue  # a short pause: _wait_pause sleeps it out on the next turn
                    if status >= 500:
                        failure = f"{status} {raw.reason_phrase}"
                    else:
                        raise self._client_error(exc, what) from None
                except (RequestTimeout, RequestError) as exc:
                    failure = "no answer (timeout)" if isinstance(exc, RequestTimeout) else f"network error ({exc})"
                else:
                    self._secondary_strikes = 0
                    self._note_primary()
                    return result
                finally:
                    if write:
                        self._last_write = time.monotonic()
            attempt += 1
            if not retry_transient:
                raise Transient(f"GitHub {what}: {failure}")
            if attempt > self.max_retries:
                raise ForgeError(f"GitHub {what} failed {attempt} times ({failure}); the next poll tries again")
            await anyio.sleep(self.retry_backoff * 2 ** (attempt - 1))

    def _unwrap(self, exc: Any, what: str) -> Exception:
        """githubkit wraps what goes wrong inside the auth flow (an App minting its installation token) in a
        plain `RequestError`: give back the failed token request, or a `ForgeError` for a key that cannot
        sign, so neither passes for a network error and gets retried."""
        import httpx
        from githubkit.exception import RequestFailed, RequestTimeout

        inner = getattr(exc, "exc", None)
        if isinstance(exc, (RequestFailed, RequestTimeout)) or inner is None:
            return exc
        if isinstance(inner, RequestFailed):
            return inner
        if self._app is None or isinstance(inner, httpx.TransportError):
            return exc
        if isinstance(inner, RuntimeError) and "auth-app" in str(inner):
            return ForgeError(_AUTH_APP_HINT)
        # the exception's text can quote key material: name its type only
        return ForgeError(f"GitHub {what}: GitHub App {self._app.app_id} could not sign its JWT with the key in "
                          f"forge.app_private_key_path ({type(inner).__name__}); download a new key from the "
                          "App's settings")

    def _note_primary(self) -> None:
        if self._fleet is None:
            return
        meter = self._fleet.meter
        if meter.remaining == 0 and meter.reset:
            self._pause(max(0.0, meter.reset - self._clock()) + 1.0, "primary rate limit")

    def _client_error(self, exc: Any, what: str) -> ForgeError:
        raw = exc.response.raw_response
        try:
            message = str(raw.json().get("message", ""))
        except Exception:
            message = raw.text[:200]
        app_error = self._app_error(raw, message, what)
        if app_error is not None:
            return app_error
        if raw.status_code == 404:
            return NotFound(f"GitHub {what}: not found")
        if raw.status_code == 401:
            return ForgeError(f"GitHub {what}: the token was refused (401 {message}); check GITHUB_TOKEN")
        error = ForgeError(f"GitHub {what}: {raw.status_code} {message}")
        error.status = raw.status_code  # type: ignore[attr-defined]
        try:
            error.details = raw.json()  # type: ignore[attr-defined]
        except Exception:
            error.details = {}  # type: ignore[attr-defined]
        return error

    def _app_error(self, raw: httpx.Response, message: str, what: str) -> ForgeError | None:
        """What an App's failure means, in fleet.toml's terms; None when it is no App auth failure. Never a
        `NotFound`: callers take that for a missing issue or label."""
        app = self._app
        if app is None:
            return None
        path = raw.request.url.path
        status = raw.status_code
        name = f"GitHub {what}: GitHub App {app.app_id}"
        auth = raw.request.headers.get("authorization", "")
        if self._operator_token and auth.endswith(self._operator_token):
            return None  # the operator's own token: no App involved
        if auth.lower().startswith("bearer "):  # the App's own JWT
            if status == 401:
                return ForgeError(f"{name} was refused ({message}): check forge.app_id, that "
                                  "forge.app_private_key_path holds a current key of that App (a deleted or "
                                  "rotated key is refused), and that this machine's clock is right")
            if status == 404 and path.endswith("/installation"):
                return ForgeError(f"{name} is not installed on {self.repo}: install it there (Issues, Pull "
                                  "requests and Contents read/write) or check forge.app_id")
            if status == 404 and "/app/installations/" in path:
                return ForgeError(f"{name} has no installation {app.installation_id}: check "
                                  "forge.app_installation_id, or leave it out to look it up")
            if status == 422 and path.endswith("/access_tokens"):
                return ForgeError(f"{name} cannot get a token for {self.repo} ({message}): the installation "
                                  f"must include {self.repo} and grant Contents, Issues and Pull requests "
                                  "read/write")
            if status in (401, 403, 404, 422):
                return ForgeError(f"{name}: {status} {message}")
            return None
        if status == 401:
            return ForgeError(f"{name}: its installation token was refused (401 {message}); the installation "
                              "may have been suspended or removed")
        if status == 403 and "not accessible by integration" in message.lower():
            return ForgeError(f"{name} lacks a permission for this ({message}): grant Issues, Pull requests "
                              "and Contents read/write, Metadata, Checks and Commit statuses read")
        return None

    async def _pages(self, fn: Callable[..., Awaitable[Any]], *args: Any, what: str, **kwargs: Any) -> list[Any]:
        """Every page of a list endpoint as raw JSON items (each page revalidated on its own)."""
        items: list[Any] = []
        page = 1
        while True:
            response = await self._call(fn, *args, what=what, per_page=self.per_page, page=page, **kwargs)
            data = response.json()
            items.extend(data)
            if 'rel="next"' not in response.headers.get("link", "") or not data:
                return items
            page += 1

    async def _typed_pages(self, fn: Callable[..., Awaitable[Any]], *args: Any, what: str,
                           **kwargs: Any) -> list[Any]:
        items: list[Any] = []
        page = 1
        while True:
            response = await self._call(fn, *args, what=what, per_page=self.per_page, page=page, **kwargs)
            data = response.parsed_data
            items.extend(data)
            if 'rel="next"' not in response.headers.get("link", "") or not data:
                return items
            page += 1

    # --- identities ----------------------------------------------------------------------------
    async def _whoami(self, ident: _Identity) -> Actor:
        if ident.actor is not None:
            return ident.actor
        if ident.app is not None:
            response = await self._call(self._app_rest.apps.async_get_authenticated, what="GET /app")
            app = response.parsed_data
            slug = (app.slug or app.name) if app is not None else None
            if not slug:
                raise ForgeError(f"GitHub GET /app: no App {ident.app.app_id} in the answer")
            ident.actor = Actor(f"{slug}[bot]", "Bot")
        else:
            response = await self._call(ident.github.rest.users.async_get_authenticated, what="GET /user")
            ident.actor = Actor(response.parsed_data.login, response.parsed_data.type)
        return ident.actor

    async def fleet_identity(self) -> Actor:
        return await self._whoami(self._ident())

    async def operator_identity(self) -> Actor:
        return await self._whoami(self._ident(as_operator=True))

    async def token_report(self) -> dict[str, Any]:
        """What the fleet's token (and the operator's) is and can do, with warnings for excess scopes."""
        report = await self._report(self._ident())
        if self._operator is not None:
            report["operator"] = await self._report(self._operator)
        return report

    async def _report(self, ident: _Identity) -> dict[str, Any]:
        if ident.app is not None:
            return await self._app_report(ident, ident.app)
        response = await self._call(ident.github.rest.users.async_get_authenticated, what="GET /user")
        user = response.parsed_data
        ident.actor = Actor(user.login, user.type)
        header = response.headers.get("x-oauth-scopes")
        warnings: list[str] = []
        if header is None:
            kind, scopes = "fine-grained", []
            warnings.append("fine-grained token: make sure it grants only Issues, Pull requests and Contents "
                            "(read/write) and Metadata (read) on this repository, never Workflows or "
                            "Administration")
        else:
            kind = "classic"
            scopes = [s.strip() for s in header.split(",") if s.strip()]
            for scope in scopes:
                if scope in NEEDED_SCOPES or scope in HARMLESS_SCOPES:
                    continue
                danger = any(scope == d or (d.endswith(":") and scope.startswith(d)) for d in DANGEROUS_SCOPES)
                warnings.append(f"scope {scope!r} is more than the fleet needs"
                                + (" and lets a leaked token do real damage" if danger else "")
                                + "; make a token with only 'repo' (or a fine-grained token)")
            if not NEEDED_SCOPES & set(scopes):
                warnings.append("the token has neither 'repo' nor 'public_repo': the fleet cannot write issues")
        return {"login": user.login, "type": user.type, "kind": kind, "scopes": scopes, "warnings": warnings,
                "rate": self._rate_dict()}

    async def _app_report(self, ident: _Identity, app: AppCredentials) -> dict[str, Any]:
        actor = await self._whoami(ident)
        response = await self._call(self._app_rest.apps.async_get_repo_installation, self.owner, self.name,
                                    what=f"GET installation on {self.repo}")
        installation = response.json()
        permissions = {str(k): str(v) for k, v in (installation.get("permissions") or {}).items()}
        selection = str(installation.get("repository_selection") or "")
        warnings: list[str] = []
        if int(installation.get("id") or 0) != app.installation_id:
            warnings.append(f"forge.app_installation_id is {app.installation_id}, but the App's installation on "
                            f"{self.repo} is {installation.get('id')}")
        for name, level in sorted(permissions.items()):
            if APP_NEEDED_PERMISSIONS.get(name) == level or (name in APP_NEEDED_PERMISSIONS and level == "read"):
                continue
            if name in APP_HARMLESS_PERMISSIONS and level == "read":
                continue
            warnings.append(f"the App has {name!r}: {level!r}, more than the fleet needs; a leaked installation "
                            "token could use it")
        for name, level in APP_NEEDED_PERMISSIONS.items():
            if {"read": 1, "write": 2, "admin": 3}.get(permissions.get(name, ""), 0) < (2 if level == "write"
                                                                                       else 1):
                warnings.append(f"the App lacks {name!r}: {level!r}, which the fleet needs")
        if selection == "all":
            warnings.append(f"the App is installed on all of {self.owner}'s repositories; select only "
                            f"{self.repo}")
        return {"login": actor.login, "type": actor.type, "kind": "app", "scopes": [], "warnings": warnings,
                "app_id": app.app_id, "installation_id": app.installation_id, "permissions": permissions,
                "repository_selection": selection, "rate": self._rate_dict()}

    def _rate_dict(self) -> dict[str, Any]:
        rate = self.rate_limit
        return {"remaining": rate.remaining, "limit": rate.limit,
                "reset_at": rate.reset_at.isoformat() if rate.reset_at else None}

    # --- issues -------------------------------------------------------------------------------
    async def list_issues(
        self, *, labels: Sequence[str] = (), state: Literal["open", "closed", "all"] = "open",
        since: datetime | None = None,
    ) -> list[Issue]:
        options: dict[str, Any] = {"state": state, "sort": "created", "direction": "asc"}
        if labels:
            options["labels"] = ",".join(labels)
        if since is not None:
            options["since"] = since
        # oldest first: a new issue changes only the last page, so the other pages stay 304
        items = await self._pages(self._rest.issues.async_list_for_repo, self.owner, self.name,
                                  what="GET issues", **options)
        return [issue_of(item) for item in items if "pull_request" not in item]

    async def get_issue(self, number: int) -> Issue:
        response = await self._call(self._rest.issues.async_get, self.owner, self.name, number,
                                    what=f"GET issue #{number}")
        comments = await self._comments(number)
        return dataclasses.replace(issue_of(response.json()), comments=tuple(comments))

    async def _comments(self, number: int) -> list[Comment]:
        items = await self._pages(self._rest.issues.async_list_comments, self.owner, self.name, number,
                                  what=f"GET comments of #{number}")
        return [comment_of(item) for item in items]

    async def create_issue(self, title: str, body: str, labels: Sequence[str] = ()) -> Issue:
        async def lookup() -> Issue | None:
            me = await self.fleet_identity()
            response = await self._call(self._rest.issues.async_list_for_repo, self.owner, self.name,
                                        what="GET issues (lookup)", state="all", creator=me.login,
                                        sort="created", direction="desc", per_page=30)
            for item in response.json():
                if "pull_request" not in item and item["title"] == title and (item.get("body") or "") == body:
                    return issue_of(item)
            return None

        async def create() -> Issue:
            response = await self._call(self._rest.issues.async_create, self.owner, self.name, method="POST",
                                        what="POST issue", retry_transient=False, title=title, body=body,
                                        labels=list(labels))
            return issue_of(response.json())

        return await self._write_once(create, lookup, check_first=False)

    async def close_issue(self, number: int) -> None:
        await self._call(self._rest.issues.async_update, self.owner, self.name, number, method="PATCH",
                         what=f"close #{number}", state="closed")

    async def add_labels(self, number: int, labels: Sequence[str], *, as_operator: bool = False) -> None:
        if not labels:
            return
        rest = self._ident(as_operator).github.rest
        await self._call(rest.issues.async_add_labels, self.owner, self.name, number, method="POST",
                         what=f"label #{number}", labels=list(labels))

    async def remove_label(self, number: int, label: str) -> None:
        try:
            await self._call(self._rest.issues.async_remove_label, self.owner, self.name, number, label,
                             method="DELETE", what=f"unlabel #{number}")
        except NotFound:
            return

    async def label_events(self, number: int) -> list[LabelEvent]:
        # The timeline, read as plain JSON: the typed /events models reject some real entries
        # (a `closed` event, for one), and one unknown event must not hide the label history.
        items = await self._pages(self._rest.issues.async_list_events_for_timeline, self.owner, self.name,
                                  number, what=f"GET timeline of #{number}")
        events: list[LabelEvent] = []
        for item in items:
            if not isinstance(item, dict) or item.get("event") not in ("labeled", "unlabeled"):
                continue
            actor = item.get("actor") or {}
            app = item.get("performed_via_github_app") or None
            events.append(LabelEvent(
                event_id=str(item.get("id", "")), kind=item["event"],
                label=str((item.get("label") or {}).get("name", "")),
                actor=Actor(str(actor.get("login", "ghost")), str(actor.get("type", "User")),
                            via_app=(app.get("slug") or app.get("name")) if isinstance(app, dict) else None),
                created_at=time_of(item.get("created_at")) or datetime.fromtimestamp(0, UTC),
            ))
        events.sort(key=lambda e: e.created_at)
        return events

    async def missing_labels(self, names: Iterable[str]) -> list[str]:
        items = await self._pages(self._rest.issues.async_list_labels_for_repo, self.owner, self.name,
                                  what="GET labels")
        have = {str(item["name"]).lower() for item in items}
        return [name for name in dict.fromkeys(names) if name.lower() not in have]

    async def ensure_labels(self, names: Iterable[str]) -> list[str]:
        created: list[str] = []
        for name in await self.missing_labels(names):
            try:
                await self._call(self._rest.issues.async_create_label, self.owner, self.name, method="POST",
                                 what=f"create label {name!r}", name=name, color="ededed")
            except ForgeError as exc:
                if getattr(exc, "status", None) != 422:  # 422: it exists (made meanwhile)
                    raise
                continue
            created.append(name)
        return created

    # --- comments ------------------------------------------------------------------------------
    async def find_comment(self, number: int, marker_text: str) -> Comment | None:
        for comment in reversed(await self._comments(number)):
            if marker_text in comment.body:
                return comment
        return None

    async def post_comment(self, number: int, body: str, marker_text: str) -> Comment:
        async def create() -> Comment:
            response = await self._call(self._rest.issues.async_create_comment, self.owner, self.name, number,
                                        method="POST", what=f"comment on #{number}", retry_transient=False,
                                        body=f"{body}\n\n{marker_text}")
            return comment_of(response.json())

        return await self._write_once(create, lambda: self.find_comment(number, marker_text))

    async def _write_once(self, create: Callable[[], Awaitable[T]], lookup: Callable[[], Awaitable[T | None]],
                          *, check_first: bool = True) -> T:
        """A non-idempotent write: look first, and after a failure that may have landed, look again before
        retrying, so a retried call never writes twice.

        GitHub can apply a write well after the request timed out. So after a timeout or a 5xx the look-up is
        repeated every `settle_s` over a window longer than the request timeout before the write is sent
        again."""
        if check_first:
            found = await lookup()
            if found is not None:
                return found
        attempt = 0
        while True:
            try:
                return await create()
            except Transient as exc:
                attempt += 1
                found = await self._settle(lookup)
                if found is not None:
                    return found
                if attempt > self.max_retries:
                    raise ForgeError(f"{exc}; gave up after {attempt} tries, the next poll tries again") from None
                await anyio.sleep(self.retry_backoff * 2 ** (attempt - 1))

    async def _settle(self, lookup: Callable[[], Awaitable[T | None]]) -> T | None:
        """Look for a write that may still land: at once, then every `settle_s` until a window of
        `timeout + settle_s` has passed (at least twice). `settle_s` 0: one look only."""
        found = await lookup()
        if found is not None or self.settle_s <= 0:
            return found
        deadline = time.monotonic() + self.timeout + self.settle_s
        looks = 1
        while looks < 2 or time.monotonic() < deadline:
            await anyio.sleep(self.settle_s)
            found = await lookup()
            looks += 1
            if found is not None:
                return found
        return None

    # --- code ------------------------------------------------------------------------------------
    async def _repository(self) -> dict[str, Any]:
        """The repository as the API reports it (revalidated with its ETag: free when unchanged)."""
        response = await self._call(self._rest.repos.async_get, self.owner, self.name, what=f"GET {self.repo}")
        data = response.json()
        return data if isinstance(data, dict) else {}

    async def default_branch(self) -> str:
        branch = str((await self._repository()).get("default_branch") or "")
        if not branch:
            raise ForgeError(f"GitHub GET {self.repo}: no default_branch in the answer (an empty repository?)")
        return branch

    async def branch_exists(self, name: str) -> bool:
        return await self._branch(name) is not None

    async def _branch(self, name: str, *, rules: bool = False) -> dict[str, Any] | None:
        """`GET /branches/{name}`: its head commit and protection summary; None when it does not exist. With
        `rules`, also the rules repository rulesets apply to it (`GET /rules/branches/{name}`, readable with
        read access, unlike classic protection's own endpoint), under the key `fleet_rules`."""
        try:
            response = await self._call(self._rest.repos.async_get_branch, self.owner, self.name, name,
                                        what=f"GET branch {name}")
        except NotFound:
            return None
        data = response.json()
        if not isinstance(data, dict):
            return None
        if rules:
            try:
                data["fleet_rules"] = await self._pages(self._rest.repos.async_get_branch_rules, self.owner,
                                                        self.name, name, what=f"GET rules of {name}")
            except ForgeError as exc:  # a server without rulesets (older Enterprise Server)
                if not isinstance(exc, NotFound) and getattr(exc, "status", None) not in (403, 404):
                    raise
                data["fleet_rules"] = []
        return data

    async def git_source(self) -> GitSource:
        """`forge.push_url` when set, else the repository's `clone_url` as the API reports it. For an http(s)
        URL the token goes into `env` as an `Authorization` header scoped to that URL's host (git's
        `http.<url>.extraHeader`, set through `GIT_CONFIG_COUNT`): never in the URL, argv or a file."""
        url = self.git_url or str((await self._repository()).get("clone_url") or "")
        if not url:
            raise ForgeError(f"GitHub GET {self.repo}: no clone_url in the answer; set forge.push_url")
        parts = urlsplit(url)
        if parts.password or (parts.username and parts.scheme in ("http", "https")):
            raise ForgeError("forge.push_url carries credentials; remove them (the fleet sends its token in a "
                             "header of its own)")
        if parts.scheme not in ("http", "https"):
            return GitSource(url, {})
        token = await self._push_token()
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        scope = f"{parts.scheme}://{parts.netloc}/"
        return GitSource(url, {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{scope}.extraHeader",
                               "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"})

    def _redact(self, text: str, source: GitSource) -> str:
        for secret in [self._token or "", *(v for k, v in source.env.items() if k.startswith("GIT_CONFIG_VALUE"))]:
            if secret:
                text = text.replace(secret, "***")
        if self._fleet is not None and self._fleet.push_token is not None:
            text = text.replace(self._fleet.push_token[0], "***")
        return text

    async def _ls_remote(self, source: GitSource, *refs: str) -> str:
        from fleet_tui.git import git

        with anyio.fail_after(max(self.timeout, 1.0) * 2):
            return await git("ls-remote", "--heads", source.url, *refs, cwd=tempfile.gettempdir(),
                             env=dict(source.env))

    async def check_push_access(self) -> None:
        """`git ls-remote` against `git_source()` with the fleet's credentials, then the token's `push`
        permission on the repository from the API; nothing is pushed."""
        from fleet_tui.git import GitError

        source = await self.git_source()
        where = source.url
        try:
            await self._ls_remote(source)
        except TimeoutError:
            raise ForgeError(f"git cannot reach {where} (no answer): check the network or proxy, or "
                             "forge.push_url") from None
        except GitError as exc:
            stderr = self._redact(exc.stderr, source)
            low = stderr.lower()
            if any(s in low for s in ("authentication failed", "could not read username", "401", "403",
                                      "permission", "denied", "invalid username or password")):
                raise ForgeError(f"git at {where} refused the fleet's token: give it Contents read/write "
                                 "(fine-grained token or App) or the 'repo' scope (classic token), or check "
                                 f"forge.push_url ({stderr.strip()[-200:]})") from None
            if "not found" in low or "does not appear to be a git repository" in low or "404" in low:
                raise ForgeError(f"git finds no repository at {where}: check forge.push_url (or forge.repo), "
                                 "and that the token can see the repository") from None
            if any(s in low for s in ("could not resolve", "connection refused", "timed out", "unable to access",
                                      "network", "ssl")):
                raise ForgeError(f"git cannot reach {where}: check the network or proxy, or forge.push_url "
                                 f"({stderr.strip()[-200:]})") from None
            raise ForgeError(f"git ls-remote {where} failed: {stderr.strip()[-300:]}") from None
        permissions = (await self._repository()).get("permissions")
        if isinstance(permissions, dict) and permissions.get("push") is False:
            raise ForgeError(f"the fleet's token can read {self.repo} but not push to it: give it Contents "
                             "read/write (fine-grained token or App) or the 'repo' scope (classic token)")

    async def push_branch(self, source: Path, branch: str, *, force: bool = False,
                          expected: str | None = None) -> str:
        """`git push` to `git_source()` with the fleet's credentials in the environment only. `force`: a
        rebased branch, pushed with `--force-with-lease` against `expected` (the head the caller last saw on
        the forge), or when None the forge's head read just before the push."""
        from fleet_tui.git import GitError, git

        target = await self.git_source()
        args = ["push", "--quiet"]
        try:
            if force:
                if expected is None:
                    listed = await self._ls_remote(target, f"refs/heads/{branch}")
                    expected = listed.split("\t", 1)[0].strip() if listed.strip() else ""
                args.append(f"--force-with-lease=refs/heads/{branch}:{expected}")
            await git(*args, target.url, f"refs/heads/{branch}:refs/heads/{branch}", cwd=source,
                      env=dict(target.env))
            return await git("rev-parse", f"refs/heads/{branch}", cwd=source)
        except TimeoutError:
            raise ForgeError(f"pushing {branch} to {self.repo}: no answer from {target.url}") from None
        except GitError as exc:
            stderr = self._redact(exc.stderr, target)
            if force and ("stale info" in stderr or "rejected" in stderr):
                raise ForgeError(f"pushing {branch} to {self.repo}: the branch moved on the forge since the fleet "
                                 "read it; not overwritten") from None
            raise ForgeError(f"pushing {branch} to {self.repo} failed: {stderr[-300:]}") from None

    async def _push_token(self) -> str:
        """The fleet's token, or for an App an installation token that can push to this repository only (and
        do nothing else), minted once and reused until ten minutes before it expires."""
        ident = self._ident()
        if ident.token:
            return ident.token
        app = ident.app
        assert app is not None and app.installation_id is not None
        if ident.push_token is not None and ident.push_token[1] > time.time():
            return ident.push_token[0]
        response = await self._call(self._app_rest.apps.async_create_installation_access_token,
                                    app.installation_id, method="POST", what="installation token for git push",
                                    repositories=[self.name], permissions=dict(_PUSH_PERMISSIONS))
        minted = response.parsed_data
        token = str(minted.token)
        from fleet_tui.logs import register_secret

        register_secret(token)
        expires = time_of(minted.expires_at) or datetime.now(UTC)
        ident.push_token = (token, (expires - timedelta(minutes=10)).timestamp())
        return token

    # --- pull requests ---------------------------------------------------------------------------
    async def find_pull(self, head: str) -> PullRequest | None:
        response = await self._call(self._rest.pulls.async_list, self.owner, self.name, what="GET pulls (head)",
                                    state="open", head=f"{self.owner}:{head}", per_page=10)
        items = response.json()
        if not items:
            return None
        return await self._read_pull(int(items[0]["number"]), base_info=None, tries=1)

    async def open_pull(self, *, title: str, body: str, head: str, base: str) -> PullRequest:
        async def create() -> PullRequest:
            try:
                response = await self._call(self._rest.pulls.async_create, self.owner, self.name, method="POST",
                                            what=f"open PR for {head}", retry_transient=False, title=title,
                                            body=body, head=head, base=base)
            except ForgeError as exc:
                if getattr(exc, "status", None) != 422:
                    raise
                details = getattr(exc, "details", {}) or {}
                if "already exists" in str(details):
                    found = await self.find_pull(head)
                    if found is not None:
                        return found
                raise self._pull_refused(details, head, base) from None
            # a new PR's mergeability is still being computed: the next poll reads it, nobody waits here
            return await self._read_pull(int(response.json()["number"]), base_info=None, tries=1)

        return await self._write_once(create, lambda: self.find_pull(head))

    def _pull_refused(self, details: dict[str, Any], head: str, base: str) -> ForgeError:
        """GitHub's 422 on opening a PR, in words: which branch is missing, or what else it said."""
        errors = details.get("errors") if isinstance(details, dict) else None
        fields = {str(e.get("field")) for e in errors or [] if isinstance(e, dict)}
        messages = [str(e.get("message")) for e in errors or [] if isinstance(e, dict) and e.get("message")]
        if "base" in fields:
            return ForgeError(f"cannot open a PR for {head}: the base branch {base!r} does not exist on {self.repo} "
                              "(check forge.base_branch)")
        if "head" in fields:
            return ForgeError(f"cannot open a PR: the branch {head!r} does not exist on {self.repo} (push it first)")
        said = "; ".join(messages) or str(details.get("message") or "Validation Failed")
        return ForgeError(f"GitHub refused to open a PR from {head} into {base}: {said}")

    async def list_pulls(self, *, details_for: Collection[str] | None = None) -> list[PullRequest]:
        """Every open PR from the list call (revalidated page by page: an idle poll is all 304s). PRs whose head
        is in `details_for` (all when None) are read in full, but only when their list entry changed (head
        sha, updated_at), their base branch moved, or their state has not settled (mergeable unknown, CI
        pending); otherwise the last full read is reused."""
        items = await self._pages(self._rest.pulls.async_list, self.owner, self.name, what="GET pulls",
                                  state="open", sort="created", direction="asc")
        wanted = None if details_for is None else set(details_for)
        bases: dict[str, dict[str, Any] | None] = {}
        pulls: list[PullRequest] = []
        unsettled: list[int] = []
        for item in items:
            head = str(item["head"]["ref"])
            fork = head_repo_of(item).lower() != self.repo.lower()  # a fork's branch is never the fleet's
            if wanted is not None and (fork or head not in wanted):
                pulls.append(pull_summary(item))
                continue
            base = str(item["base"]["ref"])
            try:
                if base not in bases:
                    bases[base] = await self._branch(base, rules=True)
                pull = await self._detailed(item, bases[base])
            except RateLimitedError:
                raise
            except ForgeError as exc:  # this PR waits for the next poll (unknown mergeability); the rest go on
                log.warning("cannot read PR #%s in full this poll: %s", item.get("number"), exc)
                pulls.append(dataclasses.replace(pull_summary(item), ci_summary=f"cannot read: {exc}"[:200]))
                continue
            if pull.mergeable is None:
                unsettled.append(len(pulls))
            pulls.append(pull)
        if unsettled:  # GitHub computes mergeability after the first read: one more look, a moment later
            await anyio.sleep(self.readiness_backoff)
            for index in unsettled:
                pull = pulls[index]
                pulls[index] = await self._read_pull(pull.number, base_info=bases.get(pull.base), tries=1)
        await self._recheck_ci(pulls, bases)
        live = {int(item["number"]) for item in items}
        for cache in (self._pull_details, self._pulls, self._ci_checked):
            for number in [n for n in cache if n not in live]:
                del cache[number]
        return pulls

    async def _detailed(self, item: dict[str, Any], base_info: dict[str, Any] | None) -> PullRequest:
        number = int(item["number"])
        key = (str(item["head"]["sha"]), str(item.get("updated_at")), branch_sha(base_info),
               tuple(sorted(required_checks(base_info))))
        cached = self._pulls.get(number)
        if cached is not None and cached[0] == key and settled(cached[1]):
            return cached[1]
        return await self._read_pull(number, base_info=base_info, tries=1)

    async def _recheck_ci(self, pulls: list[PullRequest], bases: dict[str, dict[str, Any] | None]) -> None:
        """A check re-run or a late status on a settled head moves nothing in the PR list, so the CI of
        `ci_rechecks` settled PRs, longest unchecked first, is read again each poll (two conditional
        requests each, free while nothing changed): an idle poll's cost stays flat however many PRs there are,
        and every PR's CI is seen again within as many polls as the fleet has PRs."""
        settled = [(self._ci_checked.get(p.number, 0.0), i) for i, p in enumerate(pulls)
                   if p.number in self._pulls and self._pulls[p.number][1] is p]
        for _, index in sorted(settled)[:self.ci_rechecks]:
            pull = pulls[index]
            ci, summary = await self._ci(pull.head_sha, required_checks(bases.get(pull.base)))
            if (ci, summary) != (pull.ci, pull.ci_summary):
                pull = dataclasses.replace(pull, ci=ci, ci_summary=summary)
                key = self._pulls[pull.number][0]
                self._pulls[pull.number] = (key, pull)
                pulls[index] = pull
            self._ci_checked[pull.number] = time.monotonic()

    async def get_pull(self, number: int) -> PullRequest:
        """One PR in full. While GitHub still computes mergeability (`mergeable: null`) it is read again a
        few times with a short backoff; if it is still unknown then, `mergeable` is None (ask again later)."""
        return await self._read_pull(number, base_info=None, tries=1 + self.readiness_reads)

    async def _read_pull(self, number: int, *, base_info: dict[str, Any] | None, tries: int) -> PullRequest:
        data: dict[str, Any] = {}
        for attempt in range(max(1, tries)):
            if attempt:
                await anyio.sleep(self.readiness_backoff * 2 ** (attempt - 1))
            response = await self._call(self._rest.pulls.async_get, self.owner, self.name, number,
                                        what=f"GET PR #{number}")
            data = response.json()
            if data.get("mergeable") is not None or data.get("state") != "open":
                break
        head_sha = str(data["head"]["sha"])
        base = str(data["base"]["ref"])
        if base_info is None and data.get("state") == "open":
            base_info = await self._branch(base, rules=True)
        key = (str(data.get("updated_at")), head_sha)
        cached = self._pull_details.get(number)
        if cached is not None and cached[0] == key:
            files, reviews, review_comments = cached[1]
        else:  # files, reviews and review comments all move the PR's updated_at or head
            file_items = await self._pages(self._rest.pulls.async_list_files, self.owner, self.name, number,
                                           what=f"GET files of PR #{number}")
            files = tuple(str(f["filename"]) for f in file_items)
            review_items = await self._pages(self._rest.pulls.async_list_reviews, self.owner, self.name, number,
                                             what=f"GET reviews of PR #{number}")
            reviews = tuple(review_of(r) for r in review_items)
            comment_items = await self._pages(self._rest.pulls.async_list_review_comments, self.owner,
                                              self.name, number, what=f"GET review comments of PR #{number}")
            review_comments = tuple(review_comment_of(c) for c in comment_items)
            self._pull_details[number] = (key, (files, reviews, review_comments))
        ci, summary = CIState.NONE, ""
        if data.get("state") == "open":
            ci, summary = await self._ci(head_sha, required_checks(base_info))
        pull = PullRequest(
            number=number, title=str(data.get("title") or ""), body=str(data.get("body") or ""),
            head=str(data["head"]["ref"]), base=base, head_sha=head_sha,
            html_url=str(data.get("html_url") or ""),
            state="merged" if data.get("merged") else ("closed" if data.get("state") == "closed" else "open"),
            author=actor_of(data.get("user")), additions=int(data.get("additions") or 0),
            deletions=int(data.get("deletions") or 0), changed_files=int(data.get("changed_files") or 0),
            files=files, mergeable=data.get("mergeable"),
            mergeable_state=str(data.get("mergeable_state") or "unknown"),
            ci=ci, ci_summary=summary, reviews=reviews, review_comments=review_comments,
            draft=bool(data.get("draft")), updated_at=time_of(data.get("updated_at")), head_repo=head_repo_of(data),
        )
        if pull.state == "open":
            self._pulls[number] = ((head_sha, str(data.get("updated_at")), branch_sha(base_info),
                                    tuple(sorted(required_checks(base_info)))), pull)
            self._ci_checked[number] = time.monotonic()
        return pull

    async def _ci(self, sha: str, required: frozenset[str]) -> tuple[CIState, str]:
        """The head's CI from the combined status and the check runs together, and a one-line summary. When
        the base's protection names required checks, only those count: one failing is FAILURE, one pending
        or not reported yet is PENDING. No status and no check run at all is NONE (GitHub says "pending")."""
        outcomes: dict[str, str] = {}
        unreadable: list[str] = []
        try:
            status = (await self._call(self._rest.repos.async_get_combined_status_for_ref, self.owner, self.name,
                                       sha, what="GET combined status", per_page=self.per_page)).json()
        except ForgeError as exc:
            if not forbidden(exc):
                raise
            status = {}
            unreadable.append("commit statuses")
        for item in status.get("statuses") or []:
            state = str(item.get("state"))
            outcome = "success" if state == "success" else "pending" if state == "pending" else "failure"
            record_outcome(outcomes, str(item.get("context") or "status"), outcome)
        try:
            runs = await self._check_runs(sha)
        except ForgeError as exc:
            if not forbidden(exc):
                raise
            runs = []
            unreadable.append("check runs")
        for run in runs:
            if run.get("status") != "completed":
                outcome = "pending"
            else:
                outcome = "success" if run.get("conclusion") in _CI_OK else "failure"
            record_outcome(outcomes, str(run.get("name") or "check"), outcome)
        if unreadable:  # a token without Checks or Commit statuses read: say so rather than fail the poll
            ci, summary = ci_verdict(outcomes, required)
            note = f"{' and '.join(unreadable)} not readable with this token (grant Checks and Commit statuses read)"
            if ci == CIState.NONE or (ci == CIState.SUCCESS and not required):
                ci = CIState.PENDING  # what it cannot see may be failing; required checks all seen green is enough
            return ci, f"{summary}; {note}"
        return ci_verdict(outcomes, required)

    async def _check_runs(self, sha: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        page = 1
        while True:
            response = await self._call(self._rest.checks.async_list_for_ref, self.owner, self.name, sha,
                                        what="GET check runs", per_page=self.per_page, page=page)
            data = response.json()
            runs.extend(data.get("check_runs") or [])
            if 'rel="next"' not in response.headers.get("link", "") or not data.get("check_runs"):
                return runs
            page += 1

    async def pull_diff(self, number: int, *, limit: int = DIFF_LIMIT) -> str:
        """From the files endpoint's per-file patches (revalidated with ETags, so a second look is free);
        GitHub leaves out the patch of a binary or very large file, which is said instead."""
        items = await self._pages(self._rest.pulls.async_list_files, self.owner, self.name, number,
                                  what=f"GET files of PR #{number}")
        parts: list[str] = []
        for item in items:
            name = str(item.get("filename") or "")
            old = str(item.get("previous_filename") or name)
            parts.append(f"diff --git a/{old} b/{name}\n--- a/{old}\n+++ b/{name}\n")
            patch = item.get("patch")
            parts.append(f"{patch}\n" if patch else f"(no text diff: {item.get('status', 'changed')}, binary or "
                                                     "too large for GitHub to show)\n")
        return cut_diff("".join(parts), limit)

    async def post_review(self, number: int, body: str, commit_id: str) -> Review:
        """A review with event COMMENT: the one review event this forge can send."""
        async def lookup() -> Review | None:
            me = await self.fleet_identity()
            items = await self._pages(self._rest.pulls.async_list_reviews, self.owner, self.name, number,
                                      what=f"GET reviews of PR #{number}")
            for item in items:
                review = review_of(item)
                if review.author.login == me.login and review.body == body and review.commit_id == commit_id:
                    return review
            return None

        async def create() -> Review:
            response = await self._call(self._rest.pulls.async_create_review, self.owner, self.name, number,
                                        method="POST", what=f"review PR #{number}", retry_transient=False,
                                        body=body, event="COMMENT", commit_id=commit_id)
            return review_of(response.json())

        return await self._write_once(create, lookup, check_first=False)

    # --- edits ---------------------------------------------------------------------------------
    async def edit_issue(self, number: int, *, title: str | None = None, body: str | None = None,
                         as_user: str | None = None) -> None:
        """PATCH the issue's title and/or body, as the fleet, or as the operator when `as_user` is the
        operator's login. GitHub records the edit itself (a `renamed` event; the body's edit history)."""
        fields = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
        if not fields:
            return
        as_operator = False
        if as_user is not None and as_user.lower() != (await self.fleet_identity()).login.lower():
            if self._operator is None or as_user.lower() != (await self.operator_identity()).login.lower():
                raise ForgeError(f"GitHub can edit #{number} only as the fleet or the operator, not as {as_user}")
            as_operator = True
        rest = self._ident(as_operator).github.rest
        await self._call(rest.issues.async_update, self.owner, self.name, number, method="PATCH",
                         what=f"edit #{number}", **fields)

    async def text_edits(self, number: int) -> list[TextEdit]:
        """Title edits from the timeline's `renamed` events; body edits from GraphQL's `userContentEdits`
        (the original text left out), or the issue's `lastEditedAt` when GitHub lists no edit."""
        edits: list[TextEdit] = []
        items = await self._pages(self._rest.issues.async_list_events_for_timeline, self.owner, self.name,
                                  number, what=f"GET timeline of #{number}")
        for item in items:
            if isinstance(item, dict) and item.get("event") == "renamed":
                at = time_of(item.get("created_at"))
                if at is not None:
                    actor = actor_of(item.get("actor"), item.get("performed_via_github_app"))
                    edits.append(TextEdit("title", at, actor))
        issue = await self._graphql(EDITS_QUERY, {"owner": self.owner, "name": self.name, "number": number},
                                    what=f"edit history of #{number}")
        node = ((issue.get("repository") or {}).get("issue") or {}) if isinstance(issue, dict) else {}
        created = time_of(node.get("createdAt"))
        bodies: list[TextEdit] = []
        for entry in ((node.get("userContentEdits") or {}).get("nodes") or []):
            at = time_of((entry or {}).get("editedAt"))
            if at is None or (created is not None and at <= created):
                continue  # the original text, which GitHub lists as the first revision
            editor = entry.get("editor") or {}
            bodies.append(TextEdit("body", at, Actor(str(editor.get("login") or "ghost"),
                                                     str(editor.get("__typename") or "User"))))
        last = time_of(node.get("lastEditedAt"))
        if not bodies and last is not None and (created is None or last > created):
            bodies.append(TextEdit("body", last, Actor("ghost")))
        edits.extend(bodies)
        edits.sort(key=lambda e: e.at)
        return edits

    async def _graphql(self, query: str, variables: dict[str, Any], *, what: str) -> dict[str, Any]:
        from githubkit.exception import GraphQLFailed

        github = self._ident().github
        try:
            data = await self._call(github.async_graphql, query, variables, method="GRAPHQL",
                                    what=f"GraphQL {what}")
        except GraphQLFailed as exc:
            errors = getattr(exc.response, "errors", None) or []
            said = "; ".join(str(getattr(e, "message", e)) for e in errors) or str(exc)
            raise ForgeError(f"GitHub GraphQL {what}: {said}") from None
        return data if isinstance(data, dict) else {}

    # --- claims across orchestrators (a git ref swapped atomically: see github_claims) ------------
    async def list_claims(self) -> dict[int, ClaimLease]:
        return await self._claims.list()

    async def get_claim(self, issue: int) -> ClaimLease | None:
        return await self._claims.get(issue)

    async def acquire_claim(self, issue: int, holder: str, run_id: str, *, lease_s: float) -> ClaimLease | None:
        return await self._claims.acquire(issue, holder, run_id, lease_s)

    async def replace_claim(self, seen: ClaimLease, holder: str, run_id: str, *,
                            lease_s: float) -> ClaimLease | None:
        return await self._claims.replace(seen, holder, run_id, lease_s)

    async def release_claim(self, lease: ClaimLease) -> None:
        await self._claims.release(lease)

    # --- access --------------------------------------------------------------------------------
    async def permission(self, login: str) -> Permission:
        try:
            response = await self._call(self._rest.repos.async_get_collaborator_permission_level, self.owner,
                                        self.name, login, what=f"GET permission of {login}")
        except NotFound:
            return "none"
        data = response.json()
        role = str(data.get("role_name") or data.get("permission") or "none")
        allowed: tuple[Permission, ...] = ("admin", "maintain", "write", "triage", "read", "none")
        for value in allowed:
            if role == value:
                return value
        return "read" if data.get("permission") == "read" else "none"
