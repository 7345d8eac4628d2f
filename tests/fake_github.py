"""A stateful fake of the GitHub REST API on loopback, for the GitHub forge's tests and benchmark.

It speaks real HTTP (stdlib `ThreadingHTTPServer` in a thread) with GitHub's JSON shapes, status codes and
headers: `ETag` / `If-None-Match` -> 304 (free against the primary limit), `Link` pagination,
`x-ratelimit-*`, 403/429 with `retry-after` for secondary limits, 422 on a duplicate PR, 404 on removing a
missing label, 401 on a bad token. Every request is recorded (`server.requests`) and faults can be scheduled
(`server.fault(...)`). Code lives in a bare git repository the forge can push to (`server.push_url`), or over
git's smart HTTP with a token in a Basic `Authorization` header (`server.git_http_url`).

GitHub Apps (`server.register_app(public_key_pem)`): `GET /app` and the installation routes take an RS256 JWT
(signature checked against the App's public key, `iss`, `iat` and `exp` checked like GitHub does);
`POST /app/installations/{id}/access_tokens` mints an installation token that acts as `<slug>[bot]`, limited
to the permissions and repositories it was minted for.

Readiness as GitHub computes it: a full PR read answers `mergeable: null` / `mergeable_state: "unknown"` for
the first read(s) after its head or its base moved (`mergeable_null_reads`), then `dirty` (conflict), `behind`
(base moved and the base's protection is `strict`), `blocked` (required checks not green, or required reviews
missing or changes requested), `unstable` (other checks not green) or `clean`. Branch protection
(`server.protect(...)`), a default branch other than `main` (`server.set_default_branch("trunk")`), a
`clone_url` on another host than the API (`localhost` instead of `127.0.0.1`, served over git's smart HTTP),
`renamed` timeline events on title edits and body edits for GraphQL (`POST /graphql`: `repository.issue`
`lastEditedAt` / `userContentEdits`).

`open_github_forge(tmp_path, **options)` yields a started `GitHubForge` wired to a fresh fake.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

OWNER = "octo"
NAME = "demo"
REPO = f"{OWNER}/{NAME}"
FLEET_TOKEN = "fleet-test-token"
OPERATOR_TOKEN = "operator-test-token"
APP_TOKEN = "app-test-token"
OUTSIDER_TOKEN = "outsider-test-token"
FLEET_LOGIN = "fleet-bot"
OPERATOR_LOGIN = "octo-operator"
APP_LOGIN = "fleet-app[bot]"
OUTSIDER_LOGIN = "mallory"
APP_ID = 4242
APP_SLUG = "fleet-app"
INSTALLATION_ID = 777
APP_PERMISSIONS = {"issues": "write", "pull_requests": "write", "contents": "write", "metadata": "read",
                   "checks": "read", "statuses": "read"}
WEB = "https://github.example"
API = "https://api.github.example"


# --- JSON shapes --------------------------------------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class User:
    login: str
    id: int
    type: str = "User"
    scopes: str | None = "repo"  # the x-oauth-scopes header; None for a fine-grained token
    app: str | None = None  # the app slug this identity acts through (an installation token)


def user_json(user: User) -> dict[str, Any]:
    login = quote(user.login)
    return {
        "login": user.login, "id": user.id, "node_id": f"U_{user.id}",
        "avatar_url": f"https://avatars.example/u/{user.id}?v=4", "gravatar_id": "",
        "url": f"{API}/users/{login}", "html_url": f"{WEB}/{login}",
        "followers_url": f"{API}/users/{login}/followers",
        "following_url": f"{API}/users/{login}/following{{/other_user}}",
        "gists_url": f"{API}/users/{login}/gists{{/gist_id}}",
        "starred_url": f"{API}/users/{login}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{API}/users/{login}/subscriptions",
        "organizations_url": f"{API}/users/{login}/orgs", "repos_url": f"{API}/users/{login}/repos",
        "events_url": f"{API}/users/{login}/events{{/privacy}}",
        "received_events_url": f"{API}/users/{login}/received_events",
        "type": user.type, "user_view_type": "public", "site_admin": False,
    }


def private_user_json(user: User) -> dict[str, Any]:
    return {
        **user_json(user), "name": user.login, "company": None, "blog": "", "location": None,
        "email": None, "hireable": None, "bio": None, "twitter_username": None, "public_repos": 1,
        "public_gists": 0, "followers": 0, "following": 0, "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z", "private_gists": 0, "total_private_repos": 1,
        "owned_private_repos": 1, "disk_usage": 10, "collaborators": 1, "two_factor_authentication": True,
    }


def app_json(slug: str, owner: User, app_id: int = APP_ID, permissions: dict[str, str] | None = None
             ) -> dict[str, Any]:
    return {
        "id": app_id, "slug": slug, "node_id": f"A_{app_id}", "client_id": "Iv1.fake", "owner": user_json(owner),
        "name": slug, "description": "", "external_url": f"https://{slug}.example",
        "html_url": f"{WEB}/apps/{slug}", "created_at": "2023-01-01T00:00:00Z",
        "updated_at": "2023-01-01T00:00:00Z",
        "permissions": dict(permissions or APP_PERMISSIONS), "events": ["issues", "pull_request"],
    }


_REPO_URLS = (
    "archive_url:/{archive_format}{/ref}", "assignees_url:/assignees{/user}", "blobs_url:/git/blobs{/sha}",
    "branches_url:/branches{/branch}", "collaborators_url:/collaborators{/collaborator}",
    "comments_url:/comments{/number}", "commits_url:/commits{/sha}", "compare_url:/compare/{base}...{head}",
    "contents_url:/contents/{+path}", "contributors_url:/contributors", "deployments_url:/deployments",
    "downloads_url:/downloads", "events_url:/events", "forks_url:/forks", "git_commits_url:/git/commits{/sha}",
    "git_refs_url:/git/refs{/sha}", "git_tags_url:/git/tags{/sha}", "hooks_url:/hooks",
    "issue_comment_url:/issues/comments{/number}", "issue_events_url:/issues/events{/number}",
    "issues_url:/issues{/number}", "keys_url:/keys{/key_id}", "labels_url:/labels{/name}",
    "languages_url:/languages", "merges_url:/merges", "milestones_url:/milestones{/number}",
    "notifications_url:/notifications{?since,all,participating}", "pulls_url:/pulls{/number}",
    "releases_url:/releases{/id}", "stargazers_url:/stargazers", "statuses_url:/statuses/{sha}",
    "subscribers_url:/subscribers", "subscription_url:/subscription", "tags_url:/tags",
    "teams_url:/teams", "trees_url:/git/trees{/sha}",
)


def minimal_repo_json(owner: User) -> dict[str, Any]:
    base = f"{API}/repos/{REPO}"
    data: dict[str, Any] = {
        "id": 1296269, "node_id": "R_1296269", "name": NAME, "full_name": REPO, "owner": user_json(owner),
        "private": False, "html_url": f"{WEB}/{REPO}", "description": "demo", "fork": False, "url": base,
    }
    for item in _REPO_URLS:
        key, suffix = item.split(":", 1)
        data[key] = base + suffix
    return data


def repo_json(owner: User, *, default_branch: str = "main", clone_url: str = f"{WEB}/{REPO}.git"
              ) -> dict[str, Any]:
    return {
        **minimal_repo_json(owner), "license": None, "forks": 0, "git_url": f"git://github.example/{REPO}.git",
        "ssh_url": f"git@github.example:{REPO}.git", "clone_url": clone_url, "mirror_url": None,
        "svn_url": f"{WEB}/{REPO}", "homepage": None, "language": "Python", "forks_count": 0,
        "stargazers_count": 0, "watchers_count": 0, "size": 10, "default_branch": default_branch,
        "open_issues_count": 0, "has_pages": False, "disabled": False, "archived": False,
        "visibility": "public", "pushed_at": "2024-01-01T00:00:00Z", "created_at": "2020-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z", "open_issues": 0, "watchers": 0,
    }


# --- state --------------------------------------------------------------------------------------


@dataclass
class LabelRec:
    id: int
    name: str
    color: str = "ededed"
    description: str | None = None


@dataclass
class CommentRec:
    id: int
    issue: int
    user: str
    body: str
    created: float
    via_app: str | None = None
    visible_at: float = 0.0  # monotonic time from which clients other than its author see it


@dataclass
class EventRec:
    id: int
    event: str
    actor: str
    created: float
    label: str | None = None
    via_app: str | None = None
    rename: tuple[str, str] | None = None  # a `renamed` event: (from, to)


@dataclass
class EditRec:
    """One revision of an issue body, as GraphQL's `userContentEdits` lists it."""

    id: int
    editor: str
    at: float
    body: str


@dataclass
class Protection:
    """Branch protection: required status checks (`strict`: the branch must be up to date with the base)
    and required approving reviews."""

    contexts: list[str] = field(default_factory=list)
    strict: bool = False
    required_reviews: int = 0
    ruleset: bool = False  # a repository ruleset (`GET /rules/branches/{b}`) instead of classic protection


@dataclass
class IssueRec:
    number: int
    title: str
    body: str
    user: str
    created: float
    updated: float
    state: str = "open"
    closed: float | None = None
    labels: list[str] = field(default_factory=list)
    comments: list[CommentRec] = field(default_factory=list)
    events: list[EventRec] = field(default_factory=list)
    is_pull: bool = False
    edits: list[EditRec] = field(default_factory=list)
    last_edited: float | None = None
    # label changes not yet visible to other clients: (visible_at monotonic, login, label, added)
    label_log: list[tuple[float, str, str, bool]] = field(default_factory=list)


@dataclass
class ReviewRec:
    id: int
    user: str
    body: str
    event: str
    commit_id: str
    submitted: float


@dataclass
class ReviewCommentRec:
    id: int
    review_id: int | None
    user: str
    body: str
    path: str
    line: int | None
    commit_id: str
    created: float


@dataclass
class PullRec:
    number: int
    head: str
    base: str
    head_sha: str
    base_sha: str
    additions: int = 0
    deletions: int = 0
    files: list[tuple[str, int, int, str]] = field(default_factory=list)  # name, add, del, status
    from_git: bool = False
    mergeable_nulls: int = 0
    computed_for: tuple[str, str] | None = None  # (head sha, base sha) the merge state was computed for
    conflict: bool = False  # PRs without git behind them: set to make them conflict with the base
    fork: str | None = None  # "owner/name" of the fork the head branch lives in; None: this repository
    reviews: list[ReviewRec] = field(default_factory=list)
    review_comments: list[ReviewCommentRec] = field(default_factory=list)


@dataclass
class StatusRec:
    id: int
    state: str
    context: str
    created: float


@dataclass
class CheckRunRec:
    id: int
    name: str
    status: str
    conclusion: str | None
    created: float


@dataclass
class FakeApp:
    """A GitHub App with one installation (on the owner's account)."""

    id: int
    slug: str
    public_key: Any  # cryptography RSAPublicKey
    installation_id: int
    permissions: dict[str, str]
    repositories: list[str]  # names of the repositories the installation was given
    repository_selection: str = "selected"

    @property
    def bot_login(self) -> str:
        return f"{self.slug}[bot]"


@dataclass
class InstallationToken:
    app_id: int
    login: str
    expires: float
    permissions: dict[str, str]
    repositories: list[str]


@dataclass
class Recorded:
    """One request as the server saw it (the Authorization header left out; `auth` says what it held:
    "none", "token", "installation" or "jwt"; `login` is who it acted as, `app:<slug>` for a JWT)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int = 0
    login: str | None = None
    auth: str = "none"
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    """A scheduled fault: matching requests after the first `skip` get it, `times` times."""

    method: str
    path: re.Pattern[str]
    kind: str  # "status" | "slow" | "secondary" | "primary"
    status: int = 502
    times: int = 1
    skip: int = 0
    delay: float = 0.0
    retry_after: int | None = 60
    apply: bool = False  # for "status": perform the request's effect, then answer with the error
    seen: int = 0
    fired: int = 0


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}


class FakeGitHub:
    """The fake server's state and its HTTP front. Start with `start()` (or use as a context manager)."""

    def __init__(self, root: Path, *, rate_limit: int = 5000, git: bool = True, mergeable_null_reads: int = 1,
                 default_branch: str = "main") -> None:
        """`mergeable_null_reads`: full reads of a PR answering `mergeable: null` after its head or base
        moved (GitHub computes it in the background)."""
        self.root = Path(root)
        self.mergeable_null_reads = mergeable_null_reads
        self.default_branch = "main"
        self.protections: dict[str, Protection] = {}
        self.refs: dict[str, str] = {"main": "0" * 40}  # branches when there is no git behind the fake
        self.clone_url: str | None = None  # None: the git smart-HTTP URL on `localhost` (another host)
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.rate_limit = rate_limit
        self.rate_used = 0
        self.rate_reset = int(time.time()) + 3600
        self._ids = 1000
        self._clock = time.time() - 86400.0
        owner = User(OWNER, 1, type="Organization", scopes=None)
        self.users: dict[str, User] = {OWNER: owner}
        self.tokens: dict[str, str] = {}
        self.owner = owner
        self.add_user(FLEET_LOGIN, FLEET_TOKEN, scopes="repo")
        self.add_user(OPERATOR_LOGIN, OPERATOR_TOKEN, scopes="repo, read:org")
        self.add_user(APP_LOGIN, APP_TOKEN, type="Bot", scopes=None, app="fleet-app")
        self.add_user(OUTSIDER_LOGIN, OUTSIDER_TOKEN, scopes="public_repo")
        self.permissions: dict[str, str] = {OPERATOR_LOGIN: "admin", FLEET_LOGIN: "write", APP_LOGIN: "write",
                                            OUTSIDER_LOGIN: "read"}
        self.labels: dict[str, LabelRec] = {}
        self.issues: dict[int, IssueRec] = {}
        self.pulls: dict[int, PullRec] = {}
        self.statuses: dict[str, list[StatusRec]] = {}
        self.check_runs: dict[str, list[CheckRunRec]] = {}
        self.apps: dict[int, FakeApp] = {}
        self.installation_tokens: dict[str, InstallationToken] = {}
        self.clock_offset = 0.0  # seconds the server's wall clock runs ahead of this machine's
        # eventual consistency GitHub does not rule out: a new comment or label change is seen by clients
        # other than its author only this many seconds later (refs stay strongly consistent)
        self.visibility_delay_s = 0.0
        self.viewer: str | None = None  # who the request being served acts as
        self.lease_commits: dict[str, dict[str, Any]] = {}  # git database commits when there is no git
        self.other_refs: dict[str, str] = {}  # refs outside refs/heads/ when there is no git
        self._trees: dict[str, str] = {}  # commit sha -> its tree
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.git_dir: Path | None = None
        if git:
            self._init_git()
        if default_branch != "main":
            self.set_default_branch(default_branch)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeGitHub:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def push_url(self) -> str:
        assert self.git_dir is not None
        return str(self.git_dir)

    @property
    def git_http_url(self) -> str:
        """The repository over git's smart HTTP, as `https://github.com/owner/name.git` serves it."""
        return f"{self.url}{REPO}.git"

    @property
    def reported_clone_url(self) -> str:
        """The `clone_url` the repository's JSON carries: git's smart HTTP on `localhost`, a host other than
        the API's `127.0.0.1` (as github.com differs from api.github.com), unless a test set `clone_url`."""
        if self.clone_url is not None:
            return self.clone_url
        if self._httpd is None:
            return f"{WEB}/{REPO}.git"
        return f"http://localhost:{self._httpd.server_address[1]}/{REPO}.git"

    # -- helpers for tests ---------------------------------------------------------------------
    def next_id(self) -> int:
        with self.lock:
            self._ids += 1
            return self._ids

    def now(self) -> float:
        """A strictly increasing server clock (one second per event) so event order is stable."""
        with self.lock:
            self._clock = max(self._clock + 1.0, self._clock)
            return self._clock

    def add_user(self, login: str, token: str | None = None, *, type: str = "User", scopes: str | None = "repo",
                 app: str | None = None, permission: str | None = None) -> User:
        with self.lock:
            user = self.users.get(login) or User(login, self.next_id(), type=type, scopes=scopes, app=app)
            self.users[login] = user
            if token:
                self.tokens[token] = login
            if permission:
                self.permissions[login] = permission
            return user

    def user(self, login: str) -> User:
        return self.users.get(login) or self.add_user(login)

    def add_label(self, name: str, color: str = "ededed") -> LabelRec:
        with self.lock:
            if name not in self.labels:
                self.labels[name] = LabelRec(self.next_id(), name, color)
            return self.labels[name]

    def add_issue(self, title: str, body: str = "", *, labels: list[str] | tuple[str, ...] = (),
                  user: str = OPERATOR_LOGIN, state: str = "open") -> IssueRec:
        with self.lock:
            number = len(self.issues) + 1
            created = self.now()
            issue = IssueRec(number, title, body, user, created, created, state=state,
                             closed=created if state == "closed" else None)
            self.issues[number] = issue
            for name in labels:
                self.apply_label(number, name, user)
            return issue

    def apply_label(self, number: int, name: str, login: str, *, via_app: str | None = None) -> None:
        """What `POST /issues/{n}/labels` does for `login`: label added, a `labeled` event recorded."""
        with self.lock:
            issue = self.issues[number]
            self.add_label(name)
            if name in issue.labels:
                return
            issue.labels.append(name)
            if self.visibility_delay_s > 0:
                issue.label_log.append((time.monotonic() + self.visibility_delay_s, login, name, True))
            via = via_app if via_app is not None else self.user(login).app
            issue.events.append(EventRec(self.next_id(), "labeled", login, self.now(), label=name, via_app=via))
            issue.updated = self.now()

    def unapply_label(self, number: int, name: str, login: str) -> bool:
        with self.lock:
            issue = self.issues[number]
            if name not in issue.labels:
                return False
            issue.labels.remove(name)
            if self.visibility_delay_s > 0:
                issue.label_log.append((time.monotonic() + self.visibility_delay_s, login, name, False))
            issue.events.append(EventRec(self.next_id(), "unlabeled", login, self.now(), label=name,
                                         via_app=self.user(login).app))
            issue.updated = self.now()
            return True

    def add_comment(self, number: int, body: str, user: str = OPERATOR_LOGIN) -> CommentRec:
        with self.lock:
            issue = self.issues[number]
            comment = CommentRec(self.next_id(), number, user, body, self.now(), self.user(user).app,
                                 time.monotonic() + self.visibility_delay_s if self.visibility_delay_s > 0 else 0.0)
            issue.comments.append(comment)
            issue.updated = comment.created
            return comment

    def close(self, number: int, user: str = OPERATOR_LOGIN) -> None:
        with self.lock:
            issue = self.issues[number]
            if issue.state != "closed":
                issue.state = "closed"
                issue.closed = self.now()
                issue.events.append(EventRec(self.next_id(), "closed", user, issue.closed))
                issue.updated = issue.closed

    def add_pull(self, title: str, head: str, *, base: str = "main", body: str = "", user: str = FLEET_LOGIN,
                 additions: int = 3, deletions: int = 1, files: tuple[str, ...] = ("app.py",),
                 fork: str | None = None) -> PullRec:
        """A PR without git behind it (the benchmark's 300 PRs); `fork`: its head is in that repository."""
        with self.lock:
            issue = self.add_issue(title, body, user=user)
            issue.is_pull = True
            sha = hashlib.sha1(f"{head}:{issue.number}".encode()).hexdigest()
            pull = PullRec(issue.number, head, base, sha, self.branch_sha(base) or "0" * 40, additions, deletions,
                           [(name, additions, deletions, "modified") for name in files])
            pull.fork = fork
            self.pulls[issue.number] = pull
            return pull

    def push_head(self, number: int) -> str:
        """A new commit on the head of PR `number` (one without git behind it); returns the new head sha."""
        with self.lock:
            pull = self.pulls[number]
            pull.head_sha = hashlib.sha1(f"{pull.head_sha}:{self.next_id()}".encode()).hexdigest()
            self.issues[number].updated = self.now()
            return pull.head_sha

    def add_status(self, sha: str, state: str, context: str = "ci/test") -> None:
        with self.lock:
            self.statuses.setdefault(sha, []).append(StatusRec(self.next_id(), state, context, self.now()))

    def add_check_run(self, sha: str, name: str, status: str = "completed", conclusion: str | None = "success") -> None:
        with self.lock:
            self.check_runs.setdefault(sha, []).append(CheckRunRec(self.next_id(), name, status, conclusion,
                                                                   self.now()))

    def set_default_branch(self, name: str) -> None:
        """Make `name` the repository's default branch (created at the current default's head if missing)."""
        with self.lock:
            if self.git_dir is not None:
                if self.branch_sha(name) is None:
                    self._git("branch", name, f"refs/heads/{self.default_branch}")
                self._git("symbolic-ref", "HEAD", f"refs/heads/{name}")
            else:
                self.refs.setdefault(name, self.refs.get(self.default_branch, "0" * 40))
            self.default_branch = name

    def protect(self, branch: str, *, contexts: list[str] | tuple[str, ...] = (), strict: bool = False,
                required_reviews: int = 0, ruleset: bool = False) -> Protection:
        """Branch protection on `branch`: required status check contexts (statuses or check run names),
        `strict` (up to date before merging), required approving reviews; `ruleset`: the same rules from a
        repository ruleset (seen through `GET /rules/branches/{b}`, not the branch's protection)."""
        with self.lock:
            rule = Protection(list(contexts), strict, required_reviews, ruleset)
            self.protections[branch] = rule
            return rule

    def move_branch(self, name: str, sha: str | None = None) -> str:
        """Move branch `name` (a fake branch without git, or a new commit on it in git); returns its sha."""
        with self.lock:
            if self.git_dir is None:
                self.refs[name] = sha or hashlib.sha1(f"{name}:{self.next_id()}".encode()).hexdigest()
                return self.refs[name]
        return self.create_branch(name, {f"moved-{self.next_id()}.txt": "moved\n"}, base=name)

    def set_check_run(self, sha: str, name: str, status: str = "completed", conclusion: str | None = "success"
                      ) -> None:
        """A new run of check `name` on `sha` (the latest run of a name is the one that counts)."""
        self.add_check_run(sha, name, status, conclusion)

    def add_review(self, number: int, user: str, state: str = "CHANGES_REQUESTED", body: str = "",
                   commit_id: str | None = None) -> ReviewRec:
        """A review by `user`: state APPROVED, CHANGES_REQUESTED or COMMENTED."""
        event = {"APPROVED": "APPROVE", "CHANGES_REQUESTED": "REQUEST_CHANGES", "COMMENTED": "COMMENT"}[state]
        with self.lock:
            pull = self.pulls[number]
            review = ReviewRec(self.next_id(), user, body, event, commit_id or pull.head_sha, self.now())
            pull.reviews.append(review)
            self.issues[number].updated = self.now()
            return review

    def add_review_comment(self, number: int, user: str, body: str, path: str, line: int | None = 1
                           ) -> ReviewCommentRec:
        """An inline review comment on `path` at `line` of the PR's head."""
        with self.lock:
            pull = self.pulls[number]
            comment = ReviewCommentRec(self.next_id(), None, user, body, path, line, pull.head_sha, self.now())
            pull.review_comments.append(comment)
            self.issues[number].updated = self.now()
            return comment

    def edit_issue(self, number: int, *, title: str | None = None, body: str | None = None,
                   user: str = OPERATOR_LOGIN) -> None:
        """What `PATCH /issues/{n}` with a title or body does for `user`: a `renamed` event for a new title, a
        body revision for GraphQL's `userContentEdits`."""
        with self.lock:
            issue = self.issues[number]
            if title is not None and title != issue.title:
                issue.events.append(EventRec(self.next_id(), "renamed", user, self.now(),
                                             rename=(issue.title, title)))
                issue.title = title
                issue.updated = self.now()
            if body is not None and body != issue.body:
                at = self.now()
                if not issue.edits:  # GitHub keeps the original as the first revision once it is edited
                    issue.edits.append(EditRec(self.next_id(), issue.user, issue.created, issue.body))
                issue.edits.append(EditRec(self.next_id(), user, at, body))
                issue.body = body
                issue.last_edited = at
                issue.updated = at

    def set_mergeable_pending(self, number: int, reads: int) -> None:
        """`mergeable: null` for the next `reads` reads of the PR, as while GitHub computes it."""
        with self.lock:
            self.pulls[number].mergeable_nulls = reads

    def fault(self, method: str, path: str, kind: str = "status", **options: Any) -> Fault:
        """Schedule a fault for requests whose method and path (a regex searched in the path) match.

        kind "status" (`status=502`, `apply=True` performs the write before failing), "slow" (`delay=`),
        "secondary" (403/429 with `retry_after=`), "primary" (403 with remaining 0 until the reset)."""
        item = Fault(method.upper(), re.compile(path), kind, **options)
        with self.lock:
            self.faults.append(item)
        return item

    def register_app(self, public_key_pem: bytes, *, app_id: int = APP_ID, slug: str = APP_SLUG,
                     installation_id: int = INSTALLATION_ID, permissions: dict[str, str] | None = None,
                     repositories: tuple[str, ...] = (NAME,), repository_selection: str = "selected") -> FakeApp:
        """A GitHub App whose JWTs verify against `public_key_pem`, installed on the owner's account."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        app = FakeApp(app_id, slug, load_pem_public_key(public_key_pem), installation_id,
                      dict(permissions or APP_PERMISSIONS), list(repositories), repository_selection)
        with self.lock:
            self.apps[app_id] = app
            self.add_user(app.bot_login, type="Bot", scopes=None, app=slug, permission="write")
        return app

    def exhaust_primary(self, reset_in: int = 3600) -> None:
        with self.lock:
            self.rate_used = self.rate_limit
            self.rate_reset = int(time.time()) + reset_in

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests, optionally filtered by method and a regex on the path."""
        with self.lock:
            found = list(self.requests)
        return [r for r in found if (method is None or r.method == method.upper())
                and (path is None or re.search(path, r.path))]

    def reset_requests(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- git ---------------------------------------------------------------------------------------
    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": "Fake", "GIT_AUTHOR_EMAIL": "fake@example.invalid",
               "GIT_COMMITTER_NAME": "Fake", "GIT_COMMITTER_EMAIL": "fake@example.invalid",
               "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(self.root), "PATH": "/usr/bin:/bin:/usr/local/bin"}
        out = subprocess.run(["git", *args], cwd=str(cwd or self.git_dir), env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip()

    def merge_state(self, pull: PullRec) -> tuple[bool, str]:
        """(mergeable, mergeable_state) as GitHub computes them for the PR's current head and base."""
        base_sha = self.branch_sha(pull.base) or pull.base_sha
        conflict = pull.conflict
        behind = False
        if pull.from_git and self.git_dir is not None and base_sha and pull.head_sha:
            tree = subprocess.run(["git", "merge-tree", "--write-tree", base_sha, pull.head_sha],
                                  cwd=str(self.git_dir), capture_output=True, check=False)
            conflict = conflict or tree.returncode == 1
            ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", base_sha, pull.head_sha],
                                      cwd=str(self.git_dir), capture_output=True, check=False)
            behind = ancestor.returncode != 0
        elif not pull.from_git:
            behind = base_sha != pull.base_sha
        if conflict:
            return False, "dirty"
        rule = self.protections.get(pull.base)
        if rule is not None and rule.strict and behind:
            return True, "behind"
        results = self.check_results(pull.head_sha)
        required = set(rule.contexts) if rule else set()
        if any(results.get(name) != "success" for name in required):
            return True, "blocked"
        if rule is not None and rule.required_reviews:
            latest: dict[str, str] = {}
            for review in pull.reviews:
                if review.event in ("APPROVE", "REQUEST_CHANGES"):
                    latest[review.user] = review.event
            approvals = sum(1 for v in latest.values() if v == "APPROVE")
            if "REQUEST_CHANGES" in latest.values() or approvals < rule.required_reviews:
                return True, "blocked"
        if any(state != "success" for name, state in results.items() if name not in required):
            return True, "unstable"
        return True, "clean"

    def check_results(self, sha: str) -> dict[str, str]:
        """Each status context's and check run name's latest outcome on `sha`: success, pending or failure."""
        results: dict[str, str] = {}
        for status in self.statuses.get(sha, []):
            results[status.context] = {"success": "success", "pending": "pending"}.get(status.state, "failure")
        for run in self.check_runs.get(sha, []):
            if run.status != "completed":
                results[run.name] = "pending"
            else:
                results[run.name] = "success" if run.conclusion in ("success", "neutral", "skipped") else "failure"
        return results

    def _init_git(self) -> None:
        self.git_dir = self.root / "fake-github" / f"{NAME}.git"
        work = self.root / "fake-github" / "work"
        self.git_dir.mkdir(parents=True)
        self._git("init", "--bare", "-q", "-b", "main", str(self.git_dir), cwd=self.root)
        self._git("clone", "-q", str(self.git_dir), str(work), cwd=self.root)
        (work / "README.md").write_text("# demo\n")
        self._git("add", "-A", cwd=work)
        self._git("commit", "-q", "-m", "initial", cwd=work)
        self._git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
        self._work = work

    def create_branch(self, name: str, files: dict[str, str], base: str = "main", message: str = "change") -> str:
        """Commit `files` on top of `base` as branch `name` in the served repository; returns the sha."""
        work = self._work
        self._git("fetch", "-q", "origin", cwd=work)
        self._git("checkout", "-q", "-B", name, f"origin/{base}", cwd=work)
        for path, text in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self._git("add", "-A", cwd=work)
        self._git("commit", "-q", "--allow-empty", "-m", message, cwd=work)
        self._git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{name}", cwd=work)
        return self._git("rev-parse", "HEAD", cwd=work)

    def merge_pull(self, number: int, user: str = OPERATOR_LOGIN) -> str:
        """A human merging PR `number` on the web page: a merge commit of its head into its base, the PR
        closed (the API never merges for the fleet: `PUT /merge` is refused). Returns the merge commit."""
        with self.lock:
            pull = self.pulls[number]
            work = self._work
            self._git("fetch", "-q", "origin", cwd=work)
            self._git("checkout", "-q", "-B", pull.base, f"origin/{pull.base}", cwd=work)
            self._git("merge", "-q", "--no-ff", "-m", f"Merge pull request #{number} from {pull.head}",
                      f"origin/{pull.head}", cwd=work)
            self._git("push", "-q", "origin", f"HEAD:refs/heads/{pull.base}", cwd=work)
            sha = self._git("rev-parse", "HEAD", cwd=work)
        self.close(number, user)
        return sha

    def branch_sha(self, name: str) -> str | None:
        if self.git_dir is None:
            return self.refs.get(name)
        try:
            return self._git("rev-parse", "--verify", "-q", f"refs/heads/{name}")
        except RuntimeError:
            return None

    def _refresh_from_git(self, pull: PullRec) -> None:
        if not pull.from_git:
            return
        sha = self.branch_sha(pull.head)
        if sha is None or sha == pull.head_sha:
            return
        pull.head_sha = sha
        pull.base_sha = self.branch_sha(pull.base) or pull.base_sha
        pull.additions = pull.deletions = 0
        pull.files = []
        numstat = self._git("diff", "--numstat", f"{pull.base}...{pull.head}")
        for line in numstat.splitlines():
            added, deleted, path = line.split("\t", 2)
            a, d = int(added.replace("-", "0")), int(deleted.replace("-", "0"))
            pull.additions += a
            pull.deletions += d
            pull.files.append((path, a, d, "modified"))
        self.issues[pull.number].updated = self.now()

    # -- JSON of the state ---------------------------------------------------------------------
    def label_json(self, name: str) -> dict[str, Any]:
        label = self.labels.get(name) or self.add_label(name)
        return {"id": label.id, "node_id": f"LA_{label.id}", "url": f"{API}/repos/{REPO}/labels/{quote(name)}",
                "name": name, "color": label.color, "default": False, "description": label.description,
                "archived_at": None, "archived_by": None}

    def issue_json(self, issue: IssueRec) -> dict[str, Any]:
        base = f"{API}/repos/{REPO}/issues/{issue.number}"
        data: dict[str, Any] = {
            "id": 10_000 + issue.number, "node_id": f"I_{issue.number}", "url": base,
            "repository_url": f"{API}/repos/{REPO}", "labels_url": base + "/labels{/name}",
            "comments_url": base + "/comments", "events_url": base + "/events",
            "html_url": f"{WEB}/{REPO}/{'pull' if issue.is_pull else 'issues'}/{issue.number}",
            "number": issue.number, "state": issue.state,
            "state_reason": "completed" if issue.state == "closed" else None,
            "title": issue.title, "body": issue.body, "user": user_json(self.user(issue.user)),
            "labels": [self.label_json(n) for n in self.visible_labels(issue)], "assignee": None,
            "assignees": [], "milestone": None, "locked": False, "active_lock_reason": None,
            "comments": len(self.visible_comments(issue)),
            "closed_at": iso(issue.closed), "created_at": iso(issue.created), "updated_at": iso(issue.updated),
            "closed_by": None, "author_association": "MEMBER",
            "reactions": {"url": base + "/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0,
                          "confused": 0, "heart": 0, "hooray": 0, "eyes": 0, "rocket": 0},
            "timeline_url": base + "/timeline",
        }
        if issue.is_pull:
            pr = f"{API}/repos/{REPO}/pulls/{issue.number}"
            data["pull_request"] = {"url": pr, "html_url": f"{WEB}/{REPO}/pull/{issue.number}",
                                    "diff_url": f"{WEB}/{REPO}/pull/{issue.number}.diff",
                                    "patch_url": f"{WEB}/{REPO}/pull/{issue.number}.patch", "merged_at": None}
        return data

    def visible_labels(self, issue: IssueRec) -> list[str]:
        """The issue's labels as the client being served sees them: another client's recent changes undone."""
        labels = list(issue.labels)
        now = time.monotonic()
        for visible_at, login, name, added in reversed(issue.label_log):
            if visible_at <= now or login == self.viewer or self.viewer is None:
                continue
            if added and name in labels:
                labels.remove(name)
            elif not added and name not in labels:
                labels.append(name)
        return labels

    def visible_comments(self, issue: IssueRec) -> list[CommentRec]:
        now = time.monotonic()
        return [c for c in issue.comments
                if c.visible_at <= now or self.viewer is None or c.user == self.viewer]

    def comment_json(self, comment: CommentRec) -> dict[str, Any]:
        url = f"{API}/repos/{REPO}/issues/comments/{comment.id}"
        return {
            "id": comment.id, "node_id": f"IC_{comment.id}", "url": url,
            "html_url": f"{WEB}/{REPO}/issues/{comment.issue}#issuecomment-{comment.id}", "body": comment.body,
            "user": user_json(self.user(comment.user)), "created_at": iso(comment.created),
            "updated_at": iso(comment.created), "issue_url": f"{API}/repos/{REPO}/issues/{comment.issue}",
            "author_association": "MEMBER",
            "performed_via_github_app": app_json(comment.via_app, self.owner) if comment.via_app else None,
        }

    def event_json(self, issue: IssueRec, event: EventRec) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": event.id, "node_id": f"E_{event.id}", "url": f"{API}/repos/{REPO}/issues/events/{event.id}",
            "actor": user_json(self.user(event.actor)), "event": event.event, "commit_id": None,
            "commit_url": None, "created_at": iso(event.created),
            "performed_via_github_app": app_json(event.via_app, self.owner) if event.via_app else None,
        }
        if event.label is not None:
            label = self.labels.get(event.label)
            data["label"] = {"name": event.label, "color": label.color if label else "ededed"}
        if event.rename is not None:
            data["rename"] = {"from": event.rename[0], "to": event.rename[1]}
        if event.event == "closed":
            data["state_reason"] = "completed"  # what real GitHub adds and the typed events model rejects
        return data

    def timeline_json(self, issue: IssueRec) -> list[dict[str, Any]]:
        items: list[tuple[float, dict[str, Any]]] = [(e.created, self.event_json(issue, e)) for e in issue.events]
        for comment in issue.comments:
            data = self.comment_json(comment)
            data.update(event="commented", actor=data["user"])
            items.append((comment.created, data))
        items.sort(key=lambda pair: pair[0])
        return [data for _, data in items]

    def pull_json(self, pull: PullRec, *, full: bool) -> dict[str, Any]:
        issue = self.issues[pull.number]
        author = self.user(issue.user)
        base = f"{API}/repos/{REPO}/pulls/{pull.number}"
        issue_url = f"{API}/repos/{REPO}/issues/{pull.number}"
        html = f"{WEB}/{REPO}/pull/{pull.number}"
        repo = repo_json(self.owner)

        def side(ref: str, sha: str, fork: str | None = None) -> dict[str, Any]:
            if fork is None:
                return {"label": f"{OWNER}:{ref}", "ref": ref, "sha": sha, "user": user_json(self.owner),
                        "repo": repo}
            owner = self.user(fork.split("/")[0])
            forked = {**repo, "id": 7_000_000 + owner.id, "node_id": f"R_{owner.id}", "name": fork.split("/")[1],
                      "full_name": fork, "owner": user_json(owner), "fork": True,
                      "html_url": f"{WEB}/{fork}", "url": f"{API}/repos/{fork}", "clone_url": f"{WEB}/{fork}.git"}
            return {"label": f"{owner.login}:{ref}", "ref": ref, "sha": sha, "user": user_json(owner),
                    "repo": forked}

        data: dict[str, Any] = {
            "url": base, "id": 20_000 + pull.number, "node_id": f"PR_{pull.number}", "html_url": html,
            "diff_url": html + ".diff", "patch_url": html + ".patch", "issue_url": issue_url,
            "commits_url": base + "/commits", "review_comments_url": base + "/comments",
            "review_comment_url": f"{API}/repos/{REPO}/pulls/comments{{/number}}",
            "comments_url": issue_url + "/comments",
            "statuses_url": f"{API}/repos/{REPO}/statuses/{pull.head_sha}", "number": pull.number,
            "state": issue.state, "locked": False, "title": issue.title, "user": user_json(author),
            "body": issue.body, "labels": [self.label_json(n) for n in issue.labels], "milestone": None,
            "active_lock_reason": None, "created_at": iso(issue.created), "updated_at": iso(issue.updated),
            "closed_at": iso(issue.closed), "merged_at": None, "merge_commit_sha": None, "assignee": None,
            "assignees": [], "requested_reviewers": [], "requested_teams": [],
            "head": side(pull.head, pull.head_sha, pull.fork), "base": side(pull.base, pull.base_sha),
            "_links": {k: {"href": v} for k, v in {
                "self": base, "html": html, "issue": issue_url, "comments": issue_url + "/comments",
                "review_comments": base + "/comments",
                "review_comment": f"{API}/repos/{REPO}/pulls/comments{{/number}}", "commits": base + "/commits",
                "statuses": f"{API}/repos/{REPO}/statuses/{pull.head_sha}"}.items()},
            "author_association": "MEMBER", "auto_merge": None, "draft": False,
        }
        if full:
            key = (pull.head_sha, self.branch_sha(pull.base) or pull.base_sha)
            if pull.computed_for != key:  # a push or a base change: GitHub recomputes in the background
                pull.computed_for = key
                pull.mergeable_nulls = max(pull.mergeable_nulls, self.mergeable_null_reads)
            mergeable: bool | None
            mergeable, state = self.merge_state(pull)
            if pull.mergeable_nulls > 0:
                pull.mergeable_nulls -= 1
                mergeable, state = None, "unknown"
            data.update(
                merged=False, mergeable=mergeable, rebaseable=mergeable, mergeable_state=state, merged_by=None,
                comments=len(issue.comments), review_comments=len(pull.review_comments),
                maintainer_can_modify=False, commits=1, additions=pull.additions, deletions=pull.deletions,
                changed_files=len(pull.files),
            )
        return data

    def review_json(self, pull: PullRec, review: ReviewRec) -> dict[str, Any]:
        html = f"{WEB}/{REPO}/pull/{pull.number}#pullrequestreview-{review.id}"
        state = {"COMMENT": "COMMENTED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}.get(review.event, review.event + "D")
        return {
            "id": review.id, "node_id": f"PRR_{review.id}", "user": user_json(self.user(review.user)),
            "body": review.body, "state": state, "html_url": html,
            "pull_request_url": f"{API}/repos/{REPO}/pulls/{pull.number}",
            "_links": {"html": {"href": html}, "pull_request": {"href": f"{API}/repos/{REPO}/pulls/{pull.number}"}},
            "submitted_at": iso(review.submitted), "commit_id": review.commit_id, "author_association": "MEMBER",
        }

    def review_comment_json(self, pull: PullRec, comment: ReviewCommentRec) -> dict[str, Any]:
        url = f"{API}/repos/{REPO}/pulls/comments/{comment.id}"
        html = f"{WEB}/{REPO}/pull/{pull.number}#discussion_r{comment.id}"
        pr = f"{API}/repos/{REPO}/pulls/{pull.number}"
        return {
            "url": url, "pull_request_review_id": comment.review_id, "id": comment.id,
            "node_id": f"PRRC_{comment.id}", "diff_hunk": "@@ -1,1 +1,2 @@", "path": comment.path,
            "position": 1, "original_position": 1, "commit_id": comment.commit_id,
            "original_commit_id": comment.commit_id, "user": user_json(self.user(comment.user)),
            "body": comment.body, "created_at": iso(comment.created), "updated_at": iso(comment.created),
            "html_url": html, "pull_request_url": pr, "author_association": "MEMBER",
            "_links": {"self": {"href": url}, "html": {"href": html}, "pull_request": {"href": pr}},
            "line": comment.line, "original_line": comment.line, "side": "RIGHT",
        }

    def file_json(self, pull: PullRec, entry: tuple[str, int, int, str]) -> dict[str, Any]:
        name, added, deleted, status = entry
        sha = hashlib.sha1(f"{pull.head_sha}:{name}".encode()).hexdigest()
        return {
            "sha": sha, "filename": name, "status": status, "additions": added, "deletions": deleted,
            "changes": added + deleted, "blob_url": f"{WEB}/{REPO}/blob/{pull.head_sha}/{name}",
            "raw_url": f"{WEB}/{REPO}/raw/{pull.head_sha}/{name}",
            "contents_url": f"{API}/repos/{REPO}/contents/{name}?ref={pull.head_sha}", "patch": self.patch(pull, name),
        }

    def patch(self, pull: PullRec, name: str) -> str | None:
        """The file's hunks as GitHub's files endpoint gives them (no `diff --git` header); None for a binary."""
        if not (pull.from_git and self.git_dir is not None):
            return "@@ -1 +1 @@"
        base = self.branch_sha(pull.base) or pull.base_sha
        out = subprocess.run(["git", "diff", "--no-color", f"{base}...{pull.head_sha}", "--", name],
                             cwd=str(self.git_dir), capture_output=True, text=True, check=False).stdout
        if "Binary files" in out and "@@" not in out:
            return None
        return out[out.index("@@"):].rstrip("\n") if "@@" in out else ""

    def combined_status_json(self, sha: str) -> dict[str, Any]:
        latest: dict[str, StatusRec] = {}
        for status in self.statuses.get(sha, []):
            latest[status.context] = status
        states = [s.state for s in latest.values()]
        if any(s in ("error", "failure") for s in states):
            combined = "failure"
        elif not states or any(s == "pending" for s in states):
            combined = "pending"  # real GitHub says pending for a commit with no status at all
        else:
            combined = "success"
        return {
            "state": combined, "sha": sha, "total_count": len(latest),
            "statuses": [{
                "url": f"{API}/repos/{REPO}/statuses/{sha}", "avatar_url": None, "id": s.id,
                "node_id": f"SC_{s.id}", "state": s.state, "description": s.state, "target_url": None,
                "context": s.context, "created_at": iso(s.created), "updated_at": iso(s.created)}
                for s in latest.values()],
            "repository": minimal_repo_json(self.owner), "commit_url": f"{API}/repos/{REPO}/commits/{sha}",
            "url": f"{API}/repos/{REPO}/commits/{sha}/status",
        }

    def check_runs_json(self, sha: str, *, latest: bool = True) -> dict[str, Any]:
        runs = self.check_runs.get(sha, [])
        if latest:  # GitHub's default filter: the most recent run of each check name
            runs = list({run.name: run for run in runs}.values())
        return {"total_count": len(runs), "check_runs": [{
            "id": run.id, "head_sha": sha, "node_id": f"CR_{run.id}", "external_id": "",
            "url": f"{API}/repos/{REPO}/check-runs/{run.id}", "html_url": f"{WEB}/{REPO}/runs/{run.id}",
            "details_url": None, "status": run.status, "conclusion": run.conclusion,
            "started_at": iso(run.created), "completed_at": iso(run.created) if run.status == "completed" else None,
            "output": {"title": None, "summary": None, "text": None, "annotations_count": 0,
                       "annotations_url": f"{API}/repos/{REPO}/check-runs/{run.id}/annotations"},
            "name": run.name, "check_suite": {"id": run.id + 1}, "app": None, "pull_requests": []}
            for run in runs]}

    # -- routing ----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any, login: str
               ) -> tuple[int, Any, dict[str, str]]:
        prefix = f"/repos/{REPO}"
        self.viewer = login
        if path == "/user" and method == "GET":
            return 200, private_user_json(self.user(login)), {}
        if path == "/rate_limit" and method == "GET":
            core = self._rate_json()
            return 200, {"resources": {"core": core, "search": {**core, "limit": 30, "remaining": 30, "used": 0},
                                       "graphql": core}, "rate": core}, {}
        if path in ("/graphql", "/api/graphql") and method == "POST":
            return 200, self.graphql(body if isinstance(body, dict) else {}), {}
        if not path.startswith(prefix):
            raise ApiError(404, "Not Found")
        rest = path[len(prefix):]
        for pattern, verb, handler in self._routes():
            match = re.fullmatch(pattern, rest)
            if match and verb == method:
                return handler(login, query, body, *[unquote(g) for g in match.groups()])
        if any(re.fullmatch(p, rest) for p, _, _ in self._routes()):
            raise ApiError(405, "Method Not Allowed")
        raise ApiError(404, "Not Found")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any, dict[str, str]]]]]:
        return [
            (r"", "GET", self._get_repo),
            (r"/branches/(.+)/protection/required_status_checks", "GET", self._required_checks),
            (r"/branches/(.+)", "GET", self._get_branch),
            (r"/rules/branches/(.+)", "GET", self._branch_rules),
            (r"/issues", "GET", self._list_issues),
            (r"/issues", "POST", self._create_issue),
            (r"/issues/(\d+)", "GET", self._get_issue),
            (r"/issues/(\d+)", "PATCH", self._update_issue),
            (r"/issues/(\d+)/comments", "GET", self._list_comments),
            (r"/issues/(\d+)/comments", "POST", self._create_comment),
            (r"/issues/(\d+)/labels", "POST", self._add_labels),
            (r"/issues/(\d+)/labels/([^/]+)", "DELETE", self._remove_label),
            (r"/issues/(\d+)/events", "GET", self._list_events),
            (r"/issues/(\d+)/timeline", "GET", self._timeline),
            (r"/labels", "GET", self._list_labels),
            (r"/labels", "POST", self._create_label),
            (r"/pulls", "GET", self._list_pulls),
            (r"/pulls", "POST", self._create_pull),
            (r"/pulls/(\d+)", "GET", self._get_pull),
            (r"/pulls/(\d+)/files", "GET", self._pull_files),
            (r"/pulls/(\d+)/reviews", "GET", self._list_reviews),
            (r"/pulls/(\d+)/reviews", "POST", self._create_review),
            (r"/pulls/(\d+)/comments", "GET", self._list_review_comments),
            (r"/pulls/(\d+)/merge", "PUT", self._refuse),
            (r"/commits/([^/]+)/status", "GET", self._combined_status),
            (r"/commits/([^/]+)/check-runs", "GET", self._check_runs),
            (r"/collaborators/([^/]+)/permission", "GET", self._permission),
            (r"/git/commits", "POST", self._create_git_commit),
            (r"/git/commits/([^/]+)", "GET", self._get_git_commit),
            (r"/git/refs", "POST", self._create_ref),
            (r"/git/refs/(.+)", "PATCH", self._update_ref),
            (r"/git/refs/(.+)", "DELETE", self._delete_ref),
            (r"/git/ref/(.+)", "GET", self._get_ref),
            (r"/git/matching-refs/(.*)", "GET", self._matching_refs),
        ]

    def _get_repo(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        permission = self.permissions.get(login, "read")
        data = repo_json(self.owner, default_branch=self.default_branch, clone_url=self.reported_clone_url)
        data.update(has_issues=True, has_projects=False, has_wiki=False, has_discussions=False,
                    subscribers_count=1, network_count=0, allow_forking=True, is_template=False, topics=[],
                    temp_clone_token=None)
        data["permissions"] = {"admin": permission == "admin", "maintain": permission in ("admin", "maintain"),
                               "push": permission in ("admin", "maintain", "write"),
                               "triage": permission != "read", "pull": True}
        return 200, data, {}

    def _get_branch(self, login: str, query: dict[str, list[str]], body: Any, name: str
                    ) -> tuple[int, Any, dict[str, str]]:
        sha = self.branch_sha(name)
        if sha is None:
            raise ApiError(404, "Branch not found")
        rule = self.protections.get(name)
        if rule is not None and rule.ruleset:
            rule = None  # rulesets do not show in the branch's protection
        base = f"{API}/repos/{REPO}/branches/{quote(name, safe='')}"
        protection: dict[str, Any] = {"enabled": False, "required_status_checks": {
            "enforcement_level": "off", "contexts": [], "checks": []}}
        if rule is not None:
            protection = {"enabled": True, "required_status_checks": {
                "enforcement_level": "non_admins", "contexts": list(rule.contexts),
                "checks": [{"context": c, "app_id": None} for c in rule.contexts]}}
        commit_url = f"{API}/repos/{REPO}/commits/{sha}"
        author = user_json(self.owner)
        return 200, {
            "name": name, "commit": {
                "sha": sha, "node_id": f"C_{sha[:12]}", "url": commit_url, "html_url": f"{WEB}/{REPO}/commit/{sha}",
                "comments_url": commit_url + "/comments", "author": author, "committer": author, "parents": [],
                "commit": {"url": f"{API}/repos/{REPO}/git/commits/{sha}", "message": "change",
                           "author": {"name": "Fake", "email": "fake@example.invalid",
                                      "date": "2024-01-01T00:00:00Z"},
                           "committer": {"name": "Fake", "email": "fake@example.invalid",
                                         "date": "2024-01-01T00:00:00Z"},
                           "tree": {"sha": (tree := self._tree_of(sha)), "url": f"{API}/repos/{REPO}/git/trees/{tree}"},
                           "comment_count": 0, "verification": None}},
            "_links": {"self": base, "html": f"{WEB}/{REPO}/tree/{name}"}, "protected": rule is not None,
            "protection": protection, "protection_url": base + "/protection",
        }, {}

    def _branch_rules(self, login: str, query: dict[str, list[str]], body: Any, name: str
                      ) -> tuple[int, Any, dict[str, str]]:
        rule = self.protections.get(name)
        if rule is None or not rule.ruleset:
            return 200, [], {}
        source = {"ruleset_source_type": "Repository", "ruleset_source": REPO, "ruleset_id": 42}
        rules: list[dict[str, Any]] = [{"type": "required_status_checks", **source, "parameters": {
            "strict_required_status_checks_policy": rule.strict, "do_not_enforce_on_create": False,
            "required_status_checks": [{"context": c} for c in rule.contexts]}}]
        if rule.required_reviews:
            rules.append({"type": "pull_request", **source, "parameters": {
                "required_approving_review_count": rule.required_reviews, "dismiss_stale_reviews_on_push": False,
                "require_code_owner_review": False, "require_last_push_approval": False,
                "required_review_thread_resolution": False}})
        return 200, rules, {}

    def _required_checks(self, login: str, query: dict[str, list[str]], body: Any, name: str
                         ) -> tuple[int, Any, dict[str, str]]:
        if self.permissions.get(login) != "admin":  # reading protection needs admin rights, as on GitHub
            raise ApiError(403, "Must have admin rights to Repository.")
        rule = self.protections.get(name)
        if rule is None or rule.ruleset:
            raise ApiError(404, "Branch not protected")
        url = f"{API}/repos/{REPO}/branches/{quote(name, safe='')}/protection/required_status_checks"
        return 200, {"url": url, "strict": rule.strict, "contexts": list(rule.contexts),
                     "checks": [{"context": c, "app_id": None} for c in rule.contexts],
                     "contexts_url": url + "/contexts"}, {}

    def graphql(self, body: dict[str, Any]) -> dict[str, Any]:
        """The one query shape served: `repository(owner, name) { issue(number) { lastEditedAt
        userContentEdits(...) { nodes { editedAt editor { login } } } } }`, with variables or literals."""
        query = str(body.get("query") or "")
        variables = body.get("variables") if isinstance(body.get("variables"), dict) else {}

        def arg(name: str) -> str | None:
            literal = re.search(rf"\b{name}\s*:\s*(\"[^\"]*\"|\d+|\$\w+)", query)
            if literal is None:
                return None
            value = literal.group(1)
            if value.startswith("$"):
                found = variables.get(value[1:])
                return None if found is None else str(found)
            return value.strip('"')

        if "repository" not in query or "issue" not in query:
            return {"errors": [{"message": "The fake serves only repository.issue edit history"}]}
        owner, name, number = arg("owner"), arg("name"), arg("number")
        if f"{owner}/{name}" != REPO:
            return {"data": {"repository": None}, "errors": [{
                "type": "NOT_FOUND", "path": ["repository"],
                "message": f"Could not resolve to a Repository with the name '{owner}/{name}'."}]}
        issue = self.issues.get(int(number)) if number and number.isdigit() else None
        if issue is None or issue.is_pull:
            return {"data": {"repository": {"issue": None}}, "errors": [{
                "type": "NOT_FOUND", "path": ["repository", "issue"],
                "message": f"Could not resolve to an Issue with the number of {number}."}]}
        nodes = [{"id": f"UCE_{e.id}", "editedAt": iso(e.at), "createdAt": iso(e.at), "updatedAt": iso(e.at),
                  "deletedAt": None, "diff": e.body,
                  "editor": {"login": e.editor, "__typename": "Bot" if self.user(e.editor).type == "Bot" else "User"}}
                 for e in reversed(issue.edits)]  # newest first
        return {"data": {"repository": {"issue": {
            "number": issue.number, "createdAt": iso(issue.created), "lastEditedAt": iso(issue.last_edited),
            "userContentEdits": {"totalCount": len(nodes), "nodes": nodes}}}}}

    def _issue(self, number: str | int) -> IssueRec:
        issue = self.issues.get(int(number))
        if issue is None:
            raise ApiError(404, "Not Found")
        return issue

    def _pull(self, number: str | int) -> PullRec:
        pull = self.pulls.get(int(number))
        if pull is None:
            raise ApiError(404, "Not Found")
        self._refresh_from_git(pull)
        return pull

    def _list_issues(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        state = _q(query, "state", "open")
        wanted = [n for n in _q(query, "labels", "").split(",") if n]
        since = _q(query, "since", "")
        creator = _q(query, "creator", "")
        since_ts = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if since else None
        found = [i for i in self.issues.values()
                 if (state == "all" or i.state == state) and all(n in self.visible_labels(i) for n in wanted)
                 and (since_ts is None or i.updated >= since_ts) and (not creator or i.user == creator)]
        key = (lambda i: i.updated) if _q(query, "sort", "created") == "updated" else (lambda i: i.number)
        found.sort(key=key, reverse=_q(query, "direction", "desc") == "desc")
        return 200, [self.issue_json(i) for i in found], {}

    def _create_issue(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict) or not body.get("title"):
            raise ApiError(422, "Validation Failed", errors=[{"resource": "Issue", "field": "title",
                                                               "code": "missing_field"}])
        issue = self.add_issue(str(body["title"]), str(body.get("body") or ""), user=login)
        for name in body.get("labels") or []:
            self.apply_label(issue.number, name, login)
        return 201, self.issue_json(issue), {"location": f"{API}/repos/{REPO}/issues/{issue.number}"}

    def _get_issue(self, login: str, query: dict[str, list[str]], body: Any, number: str
                   ) -> tuple[int, Any, dict[str, str]]:
        return 200, self.issue_json(self._issue(number)), {}

    def _update_issue(self, login: str, query: dict[str, list[str]], body: Any, number: str
                      ) -> tuple[int, Any, dict[str, str]]:
        issue = self._issue(number)
        if body.get("state") == "closed":
            self.close(issue.number, login)
        elif body.get("state") == "open" and issue.state == "closed":
            issue.state, issue.closed = "open", None
            issue.events.append(EventRec(self.next_id(), "reopened", login, self.now()))
            issue.updated = self.now()
        self.edit_issue(issue.number, title=str(body["title"] or "") if "title" in body else None,
                        body=str(body["body"] or "") if "body" in body else None, user=login)
        return 200, self.issue_json(issue), {}

    def _list_comments(self, login: str, query: dict[str, list[str]], body: Any, number: str
                       ) -> tuple[int, Any, dict[str, str]]:
        return 200, [self.comment_json(c) for c in self.visible_comments(self._issue(number))], {}

    def _create_comment(self, login: str, query: dict[str, list[str]], body: Any, number: str
                        ) -> tuple[int, Any, dict[str, str]]:
        self._issue(number)
        comment = self.add_comment(int(number), str(body.get("body") or ""), login)
        return 201, self.comment_json(comment), {}

    def _add_labels(self, login: str, query: dict[str, list[str]], body: Any, number: str
                    ) -> tuple[int, Any, dict[str, str]]:
        issue = self._issue(number)
        names = body.get("labels") if isinstance(body, dict) else body
        for name in names or []:
            self.apply_label(issue.number, str(name), login)
        return 200, [self.label_json(n) for n in issue.labels], {}

    def _remove_label(self, login: str, query: dict[str, list[str]], body: Any, number: str, name: str
                      ) -> tuple[int, Any, dict[str, str]]:
        issue = self._issue(number)
        if not self.unapply_label(issue.number, name, login):
            raise ApiError(404, "Label does not exist")
        return 200, [self.label_json(n) for n in issue.labels], {}

    def _list_events(self, login: str, query: dict[str, list[str]], body: Any, number: str
                     ) -> tuple[int, Any, dict[str, str]]:
        issue = self._issue(number)
        events = []
        for event in issue.events:
            data = self.event_json(issue, event)
            data["issue"] = self.issue_json(issue)
            events.append(data)
        return 200, events, {}

    def _timeline(self, login: str, query: dict[str, list[str]], body: Any, number: str
                  ) -> tuple[int, Any, dict[str, str]]:
        return 200, self.timeline_json(self._issue(number)), {}

    def _list_labels(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, [self.label_json(n) for n in self.labels], {}

    def _create_label(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        name = str(body.get("name") or "")
        if not name or name in self.labels:
            raise ApiError(422, "Validation Failed", errors=[{"resource": "Label", "code": "already_exists",
                                                               "field": "name"}])
        label = self.add_label(name, str(body.get("color") or "ededed"))
        label.description = body.get("description")
        return 201, self.label_json(name), {}

    def _list_pulls(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        state = _q(query, "state", "open")
        head = _q(query, "head", "")
        base = _q(query, "base", "")
        found = []
        for pull in self.pulls.values():
            issue = self.issues[pull.number]
            if state != "all" and issue.state != state:
                continue
            if head and f"{OWNER}:{pull.head}" != head:
                continue
            if base and pull.base != base:
                continue
            self._refresh_from_git(pull)
            found.append(pull)
        found.sort(key=lambda p: p.number, reverse=_q(query, "direction", "desc") == "desc")
        return 200, [self.pull_json(p, full=False) for p in found], {}

    def _create_pull(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        head = str(body.get("head") or "").split(":")[-1]
        base = str(body.get("base") or "")
        head_sha, base_sha = self.branch_sha(head), self.branch_sha(base)
        if head_sha is None or base_sha is None:
            raise ApiError(422, "Validation Failed", errors=[{"resource": "PullRequest", "field": "head" if
                                                               head_sha is None else "base", "code": "invalid"}])
        for pull in self.pulls.values():
            if pull.head == head and self.issues[pull.number].state == "open":
                raise ApiError(422, "Validation Failed", errors=[{
                    "resource": "PullRequest", "code": "custom",
                    "message": f"A pull request already exists for {OWNER}:{head}."}])
        issue = self.add_issue(str(body.get("title") or head), str(body.get("body") or ""), user=login)
        issue.is_pull = True
        pull = PullRec(issue.number, head, base, "", base_sha, from_git=True)
        self.pulls[issue.number] = pull
        self._refresh_from_git(pull)
        return 201, self.pull_json(pull, full=True), {}

    def _get_pull(self, login: str, query: dict[str, list[str]], body: Any, number: str
                  ) -> tuple[int, Any, dict[str, str]]:
        return 200, self.pull_json(self._pull(number), full=True), {}

    def _pull_files(self, login: str, query: dict[str, list[str]], body: Any, number: str
                    ) -> tuple[int, Any, dict[str, str]]:
        pull = self._pull(number)
        return 200, [self.file_json(pull, f) for f in pull.files], {}

    def _list_reviews(self, login: str, query: dict[str, list[str]], body: Any, number: str
                      ) -> tuple[int, Any, dict[str, str]]:
        pull = self._pull(number)
        return 200, [self.review_json(pull, r) for r in pull.reviews], {}

    def _create_review(self, login: str, query: dict[str, list[str]], body: Any, number: str
                       ) -> tuple[int, Any, dict[str, str]]:
        pull = self._pull(number)
        event = str(body.get("event") or "PENDING")
        review = ReviewRec(self.next_id(), login, str(body.get("body") or ""), event,
                           str(body.get("commit_id") or pull.head_sha), self.now())
        pull.reviews.append(review)
        for item in body.get("comments") or []:
            pull.review_comments.append(ReviewCommentRec(self.next_id(), review.id, login, str(item.get("body")),
                                                         str(item.get("path")), item.get("line"), review.commit_id,
                                                         review.submitted))
        self.issues[pull.number].updated = self.now()
        return 200, self.review_json(pull, review), {}

    def _list_review_comments(self, login: str, query: dict[str, list[str]], body: Any, number: str
                              ) -> tuple[int, Any, dict[str, str]]:
        pull = self._pull(number)
        return 200, [self.review_comment_json(pull, c) for c in pull.review_comments], {}

    def _refuse(self, login: str, query: dict[str, list[str]], body: Any, *args: str
                ) -> tuple[int, Any, dict[str, str]]:
        raise ApiError(405, "The fake does not implement this endpoint")

    def _combined_status(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                         ) -> tuple[int, Any, dict[str, str]]:
        return 200, self.combined_status_json(ref), {}

    def _check_runs(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                    ) -> tuple[int, Any, dict[str, str]]:
        data = self.check_runs_json(ref, latest=_q(query, "filter", "latest") == "latest")
        per_page = max(1, min(100, int(_q(query, "per_page", "30"))))
        page = max(1, int(_q(query, "page", "1")))
        runs = data["check_runs"]
        data["check_runs"] = runs[(page - 1) * per_page: page * per_page]
        host = self.url.split("//", 1)[1].rstrip("/")
        _, headers = _paginate(runs, query, host, f"/repos/{REPO}/commits/{ref}/check-runs")
        return 200, data, headers

    def _permission(self, login: str, query: dict[str, list[str]], body: Any, who: str
                    ) -> tuple[int, Any, dict[str, str]]:
        if who not in self.users or who not in self.permissions:
            raise ApiError(404, f"{who} is not a user")
        permission = self.permissions[who]
        role = {"admin": "admin", "maintain": "maintain", "write": "write", "triage": "triage"}.get(permission,
                                                                                                  "read")
        legacy = {"maintain": "write", "triage": "read"}.get(permission, permission)
        return 200, {"permission": legacy, "role_name": role, "user": {
            **user_json(self.users[who]), "role_name": role, "permissions": {"admin": permission == "admin",
                                                          "maintain": permission in ("admin", "maintain"),
                                                          "push": permission in ("admin", "maintain", "write"),
                                                          "triage": permission != "read", "pull": True}}}, {}

    # -- GitHub Apps -------------------------------------------------------------------------------
    # -- the git database: commits and refs (strongly consistent, as on GitHub) ----------------------
    EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

    def _tree_of(self, sha: str) -> str:
        if self.git_dir is None:
            return str(self.lease_commits.get(sha, {}).get("tree") or self.EMPTY_TREE)
        if sha not in self._trees:  # a commit's tree never changes
            try:
                self._trees[sha] = self._git("rev-parse", f"{sha}^{{tree}}")
            except RuntimeError:
                return self.EMPTY_TREE
        return self._trees[sha]

    def _object_types(self, shas: list[str]) -> list[str | None]:
        """`_object_type` of several objects in one `git cat-file --batch-check`."""
        if self.git_dir is None or not shas:
            return [self._object_type(sha) for sha in shas]
        if not all(re.fullmatch(r"[0-9a-f]{40}", sha or "") for sha in shas):
            return [self._object_type(sha) for sha in shas]
        out = subprocess.run(["git", "cat-file", "--batch-check=%(objecttype)"], cwd=str(self.git_dir),
                             input="\n".join(shas) + "\n", capture_output=True, text=True, check=False).stdout
        return [None if line.endswith("missing") else line for line in out.splitlines()]

    def _object_type(self, sha: str) -> str | None:
        if not re.fullmatch(r"[0-9a-f]{40}", sha or ""):
            return None
        if self.git_dir is None:
            if sha in self.lease_commits or sha in self.refs.values():
                return "commit"
            return "tree" if sha == self.EMPTY_TREE else None
        try:
            return self._git("cat-file", "-t", sha)
        except RuntimeError:
            return None

    def ref_sha(self, full: str) -> str | None:
        """Where `refs/...` points, or None."""
        if self.git_dir is None:
            if full.startswith("refs/heads/"):
                return self.refs.get(full.removeprefix("refs/heads/"))
            return self.other_refs.get(full)
        try:
            return self._git("rev-parse", "--verify", "-q", full + "^{commit}")
        except RuntimeError:
            return None

    def _all_refs(self) -> list[tuple[str, str]]:
        if self.git_dir is None:
            return sorted([(f"refs/heads/{n}", s) for n, s in self.refs.items()] + list(self.other_refs.items()))
        out = self._git("for-each-ref", "--format=%(refname) %(objectname)", "refs/")
        return sorted(tuple(line.split(" ", 1)) for line in out.splitlines() if line)  # type: ignore[misc]

    def _swap_ref(self, full: str, new: str | None, old: str | None) -> None:
        """Point `full` at `new` (None: delete) if it is at `old` (None: absent); the caller checked."""
        if self.git_dir is None:
            table, key = ((self.refs, full.removeprefix("refs/heads/")) if full.startswith("refs/heads/")
                          else (self.other_refs, full))
            if new is None:
                table.pop(key, None)
            else:
                table[key] = new
            return
        if new is None:
            self._git("update-ref", "-d", full, old or "")
        else:
            self._git("update-ref", full, new, old or "0" * 40)

    def _is_ancestor(self, old: str, new: str) -> bool:
        if old == new:
            return True
        if self.git_dir is None:
            seen, todo = set(), [new]
            while todo:
                sha = todo.pop()
                if sha == old:
                    return True
                if sha not in seen:
                    seen.add(sha)
                    todo.extend(self.lease_commits.get(sha, {}).get("parents", []))
            return False
        return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], cwd=str(self.git_dir),
                              capture_output=True, check=False).returncode == 0

    def _empty_repo(self) -> bool:
        return self.branch_sha(self.default_branch) is None and not any(
            name.startswith("refs/heads/") for name, _ in self._all_refs())

    def ref_json(self, full: str, sha: str) -> dict[str, Any]:
        return {"ref": full, "node_id": "REF_" + hashlib.sha1(full.encode()).hexdigest()[:16],
                "url": f"{API}/repos/{REPO}/git/{full}",
                "object": {"type": "commit", "sha": sha, "url": f"{API}/repos/{REPO}/git/commits/{sha}"}}

    def git_commit_json(self, sha: str) -> dict[str, Any]:
        if self.git_dir is None:
            info = self.lease_commits[sha]
            tree, parents, message, date = info["tree"], info["parents"], info["message"], info["date"]
            name, email = info["name"], info["email"]
        else:
            raw = self._git("cat-file", "commit", sha)
            head, _, message = raw.partition("\n\n")
            tree, parents, name, email, date = self.EMPTY_TREE, [], "Fake", "fake@example.invalid", iso(0)
            for line in head.splitlines():
                key, _, value = line.partition(" ")
                if key == "tree":
                    tree = value
                elif key == "parent":
                    parents.append(value)
                elif key == "author":
                    found = re.match(r"(.*) <(.*)> (\d+) ", value)
                    if found:
                        name, email, date = found.group(1), found.group(2), iso(float(found.group(3)))
        person = {"name": name, "email": email, "date": date}
        return {"sha": sha, "node_id": f"C_{sha[:16]}", "url": f"{API}/repos/{REPO}/git/commits/{sha}",
                "html_url": f"{WEB}/{REPO}/commit/{sha}", "author": person, "committer": person,
                "message": message, "tree": {"sha": tree, "url": f"{API}/repos/{REPO}/git/trees/{tree}"},
                "parents": [{"sha": p, "url": f"{API}/repos/{REPO}/git/commits/{p}",
                             "html_url": f"{WEB}/{REPO}/commit/{p}"} for p in parents],
                "verification": {"verified": False, "reason": "unsigned", "signature": None, "payload": None,
                                 "verified_at": None}}

    def _create_git_commit(self, login: str, query: dict[str, list[str]], body: Any
                           ) -> tuple[int, Any, dict[str, str]]:
        if self._empty_repo():
            raise ApiError(409, "Git Repository is empty.")
        message, tree = body.get("message"), str(body.get("tree") or "")
        parents = body.get("parents") or []
        if not isinstance(message, str) or not tree:
            raise ApiError(422, "Invalid request.\n\n\"message\" and \"tree\" are required.")
        kinds = self._object_types([tree, *[str(p) for p in parents]])
        if kinds[0] != "tree":
            raise ApiError(422, "Tree SHA does not exist")
        if any(kind != "commit" for kind in kinds[1:]):
            raise ApiError(422, "Parent SHA does not exist or is not a commit object")
        user = self.user(login)
        name, email = login, f"{user.id}+{login}@users.noreply.github.example"
        if self.git_dir is None:
            date = iso(time.time())
            sha = hashlib.sha1(json.dumps([tree, parents, message, name, date, self.next_id()]).encode()).hexdigest()
            self.lease_commits[sha] = {"tree": tree, "parents": [str(p) for p in parents], "message": message,
                                       "name": name, "email": email, "date": date}
        else:
            args = ["commit-tree", tree, "-m", message]
            for parent in parents:
                args += ["-p", str(parent)]
            sha = subprocess.run(["git", *args], cwd=str(self.git_dir), capture_output=True, text=True, check=True,
                                 env={"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
                                      "GIT_COMMITTER_EMAIL": email, "GIT_CONFIG_NOSYSTEM": "1",
                                      "HOME": str(self.root), "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()
        return 201, self.git_commit_json(sha), {"location": f"{API}/repos/{REPO}/git/commits/{sha}"}

    def _get_git_commit(self, login: str, query: dict[str, list[str]], body: Any, sha: str
                        ) -> tuple[int, Any, dict[str, str]]:
        if self._object_type(sha) != "commit":
            raise ApiError(404, "Not Found")
        return 200, self.git_commit_json(sha), {}

    def _create_ref(self, login: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        full, sha = str(body.get("ref") or ""), str(body.get("sha") or "")
        if self._empty_repo():
            raise ApiError(409, "Git Repository is empty.")
        if not full.startswith("refs/") or full.count("/") < 2:
            raise ApiError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        if self._object_type(sha) is None:
            raise ApiError(422, "Object does not exist")
        if self.ref_sha(full) is not None:
            raise ApiError(422, "Reference already exists")
        self._swap_ref(full, sha, None)
        return 201, self.ref_json(full, sha), {"location": f"{API}/repos/{REPO}/git/{full}"}

    def _update_ref(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                    ) -> tuple[int, Any, dict[str, str]]:
        full, sha = f"refs/{ref}", str(body.get("sha") or "")
        current = self.ref_sha(full)
        if current is None:
            raise ApiError(422, "Reference does not exist")
        if self._object_type(sha) != "commit":
            raise ApiError(422, "Object does not exist")
        if not body.get("force") and not self._is_ancestor(current, sha):
            raise ApiError(422, "Update is not a fast forward")
        self._swap_ref(full, sha, current)
        return 200, self.ref_json(full, sha), {}

    def _delete_ref(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                    ) -> tuple[int, Any, dict[str, str]]:
        full = f"refs/{ref}"
        current = self.ref_sha(full)
        if current is None:
            raise ApiError(422, "Reference does not exist")
        self._swap_ref(full, None, current)
        return 204, None, {}

    def _get_ref(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                 ) -> tuple[int, Any, dict[str, str]]:
        full = f"refs/{ref}"
        sha = self.ref_sha(full)
        if sha is None:
            raise ApiError(404, "Not Found")
        return 200, self.ref_json(full, sha), {}

    def _matching_refs(self, login: str, query: dict[str, list[str]], body: Any, ref: str
                       ) -> tuple[int, Any, dict[str, str]]:
        prefix = f"refs/{ref}"
        return 200, [self.ref_json(name, sha) for name, sha in self._all_refs() if name.startswith(prefix)], {}

    def verify_jwt(self, token: str) -> FakeApp:
        """The App a JWT speaks for, checked like GitHub: RS256 signature by that App's key, `iss` its id,
        `iat` not in the future (60 s leeway), `exp` in the future and at most 10 minutes after `iat`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        undecodable = ApiError(401, "A JSON web token could not be decoded")
        try:
            head_b64, payload_b64, sig_b64 = token.split(".")
            header = json.loads(_b64url(head_b64))
            payload = json.loads(_b64url(payload_b64))
            signature = _b64url(sig_b64)
        except ValueError:
            raise undecodable from None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(payload, dict):
            raise undecodable
        app = self.apps.get(int(payload["iss"])) if str(payload.get("iss", "")).isdigit() else None
        if app is None:
            raise undecodable
        try:
            app.public_key.verify(signature, f"{head_b64}.{payload_b64}".encode(), padding.PKCS1v15(),
                                  hashes.SHA256())
        except InvalidSignature:
            raise undecodable from None
        now = time.time() + self.clock_offset
        iat, exp = payload.get("iat"), payload.get("exp")
        if not isinstance(iat, int) or iat > now + 60:
            raise ApiError(401, "'Issued at' claim ('iat') must be an Integer representing the time that the "
                                "assertion was issued.")
        if not isinstance(exp, int) or exp <= now:
            raise ApiError(401, "'Expiration time' claim ('exp') must be a numeric value representing the future "
                                "time at which the assertion expires.")
        if exp - iat > 600 or exp > now + 660:
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future.")
        return app

    def installation_json(self, app: FakeApp) -> dict[str, Any]:
        base = f"{API}/app/installations/{app.installation_id}"
        return {
            "id": app.installation_id, "account": user_json(self.owner),
            "repository_selection": app.repository_selection, "access_tokens_url": base + "/access_tokens",
            "repositories_url": f"{API}/installation/repositories",
            "html_url": f"{WEB}/organizations/{OWNER}/settings/installations/{app.installation_id}",
            "app_id": app.id, "client_id": "Iv1.fake", "target_id": self.owner.id, "target_type": self.owner.type,
            "permissions": dict(app.permissions), "events": ["issues", "pull_request"],
            "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "single_file_name": None,
            "has_multiple_single_files": False, "single_file_paths": [], "app_slug": app.slug,
            "suspended_by": None, "suspended_at": None, "contact_email": None,
        }

    def handle_app(self, method: str, path: str, body: Any, app: FakeApp) -> tuple[int, Any, dict[str, str]]:
        """The routes a JWT may call."""
        if path == "/app" and method == "GET":
            return 200, {**app_json(app.slug, self.owner, app.id, app.permissions), "installations_count": 1}, {}
        if path == f"/repos/{REPO}/installation" and method == "GET":
            if app.repository_selection != "all" and NAME not in app.repositories:
                raise ApiError(404, "Not Found")
            return 200, self.installation_json(app), {}
        match = re.fullmatch(r"/app/installations/(\d+)(/access_tokens)?", path)
        if match is None or int(match.group(1)) != app.installation_id:
            raise ApiError(404, "Not Found")
        if not match.group(2) and method == "GET":
            return 200, self.installation_json(app), {}
        if match.group(2) and method == "POST":
            return 201, self._mint_installation_token(app, body if isinstance(body, dict) else {}), {}
        raise ApiError(404, "Not Found")

    def _mint_installation_token(self, app: FakeApp, body: dict[str, Any]) -> dict[str, Any]:
        repositories = [str(r) for r in body.get("repositories") or []]
        if body.get("repository_ids") or (app.repository_selection != "all"
                                          and any(r not in app.repositories for r in repositories)):
            raise ApiError(422, "There is at least one repository that does not exist or is not accessible to "
                                "the parent installation.")
        wanted = body.get("permissions") or dict(app.permissions)
        rank = {"read": 1, "write": 2, "admin": 3}
        for name, level in wanted.items():
            if rank.get(str(level), 9) > rank.get(app.permissions.get(name, ""), 0):
                raise ApiError(422, "The permissions requested are not granted to this installation.")
        token = "ghs_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))
        expires = time.time() + self.clock_offset + 3600
        self.installation_tokens[token] = InstallationToken(app.id, app.bot_login, expires, dict(wanted),
                                                            repositories or list(app.repositories))
        self.tokens[token] = app.bot_login
        return {"token": token, "expires_at": iso(expires), "permissions": dict(wanted),
                "repository_selection": "selected" if repositories else app.repository_selection}

    def check_installation_token(self, token: str, method: str, path: str, service: str = "") -> None:
        """What GitHub refuses an installation token: past its expiry, another repository, a permission it
        was not minted with (a write needs "write"), or a route for users only."""
        grant = self.installation_tokens.get(token)
        if grant is None:
            return
        if time.time() + self.clock_offset >= grant.expires:
            raise ApiError(401, "Bad credentials")
        forbidden = ApiError(403, "Resource not accessible by integration")
        repo = re.match(rf"/(?:repos/)?{OWNER}/([^/]+)", path)
        if repo is not None and repo.group(1).removesuffix(".git") not in grant.repositories:
            raise forbidden
        needed = _installation_permission(method, path, service)
        if needed is None:
            raise forbidden
        names, write = needed
        rank = {"read": 1, "write": 2, "admin": 3}
        if names and max(rank.get(grant.permissions.get(n, ""), 0) for n in names) < (2 if write else 1):
            raise forbidden

    def _rate_json(self) -> dict[str, int]:
        return {"limit": self.rate_limit, "remaining": max(0, self.rate_limit - self.rate_used),
                "reset": self.rate_reset, "used": self.rate_used}

    def rate_headers(self) -> dict[str, str]:
        rate = self._rate_json()
        return {"x-ratelimit-limit": str(rate["limit"]), "x-ratelimit-remaining": str(rate["remaining"]),
                "x-ratelimit-reset": str(rate["reset"]), "x-ratelimit-used": str(rate["used"]),
                "x-ratelimit-resource": "core"}

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for item in self.faults:
                if item.method in (method, "*") and item.path.search(path) and item.fired < item.times:
                    item.seen += 1
                    if item.seen > item.skip:
                        item.fired += 1
                        return item
            return None


_PERMISSION_ROUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"/repos/[^/]+/[^/]+/(issues|labels)(/.*)?", ("issues", "pull_requests")),
    (r"/repos/[^/]+/[^/]+/pulls(/.*)?", ("pull_requests",)),
    (r"/repos/[^/]+/[^/]+/commits/[^/]+/status", ("statuses",)),
    (r"/repos/[^/]+/[^/]+/commits/[^/]+/check-runs", ("checks",)),
    (r"/repos/[^/]+/[^/]+/branches/.+/protection(/.*)?", ("administration",)),
    (r"/repos/[^/]+/[^/]+/branches(/.*)?", ("contents", "metadata")),
    (r"/repos/[^/]+/[^/]+/rules/branches/.+", ("metadata",)),
    (r"/repos/[^/]+/[^/]+/git/(commits|refs|ref|matching-refs)(/.*)?", ("contents",)),
    (r"(/api)?/graphql", ("issues", "pull_requests")),
    (r"/repos/[^/]+/[^/]+(/collaborators/.*)?", ("metadata",)),
    (r"/[^/]+/[^/]+\.git/(info/refs|git-upload-pack|git-receive-pack)", ("contents",)),
    (r"/rate_limit", ()),
)


def _installation_permission(method: str, path: str, service: str) -> tuple[tuple[str, ...], bool] | None:
    """The App permissions (any one of them) a route needs and whether it writes; None: no token may."""
    for pattern, names in _PERMISSION_ROUTES:
        if re.fullmatch(pattern, path):
            write = (service == "git-receive-pack" or path.endswith("/git-receive-pack")
                     or (method != "GET" and not path.endswith("/git-upload-pack")))
            return names, write
    return None


def _b64url(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _q(query: dict[str, list[str]], key: str, default: str) -> str:
    values = query.get(key)
    return values[0] if values else default


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGitHub
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    wbufsize = 1 << 16  # one write per response (flushed after each request), no Nagle stalls
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":  # how git sends a large pack
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _error(self, record: Recorded, exc: ApiError, headers: dict[str, str] | None = None) -> None:
        record.status = exc.status
        self._send(exc.status, {"message": exc.message, "documentation_url": "https://docs.github.com/rest",
                                "status": str(exc.status)}, headers or {})

    def _serve(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/api/v3/"):  # GitHub Enterprise Server prefix
            path = path[len("/api/v3"):]
        query = parse_qs(parts.query)
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in ("authorization", "cookie")}
        if re.fullmatch(rf"/{OWNER}/[^/]+\.git/.*", path):
            record = Recorded(method, path, query, headers, None)
            with fake.lock:
                fake.requests.append(record)
            self._serve_git(record, raw, parts.query)
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = Recorded(method, path, query, headers, body)
        with fake.lock:
            fake.requests.append(record)
        scheme, _, credential = self.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        app: FakeApp | None = None
        app_route = path == "/app" or path.startswith("/app/") or path == f"/repos/{REPO}/installation"
        if scheme.lower() == "bearer" and credential.count(".") == 2:
            record.auth = "jwt"
            try:
                with fake.lock:
                    app = fake.verify_jwt(credential)
            except ApiError as exc:
                self._error(record, exc)
                return
            record.login = f"app:{app.slug}"
            if not app_route:
                self._error(record, ApiError(403, "Resource not accessible by integration"))
                return
        else:
            login = fake.tokens.get(credential)
            if login is None:
                self._error(record, ApiError(401, "Bad credentials"))
                return
            record.login = login
            record.auth = "installation" if credential in fake.installation_tokens else "token"
            try:
                if app_route:
                    raise ApiError(401, "A JSON web token could not be decoded")
                with fake.lock:
                    fake.check_installation_token(credential, method, path)
            except ApiError as exc:
                self._error(record, exc)
                return
        login = record.login
        fault = fake.take_fault(method, path)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "secondary":
            extra = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
            record.status = fault.status if fault.status in (403, 429) else 403
            self._send(record.status, {
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
                           "again.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits",
                "status": str(record.status)}, {**fake.rate_headers(), **extra})
            return
        if fault is not None and fault.kind == "primary":
            fake.exhaust_primary(fault.retry_after or 3600)
        with fake.lock:
            if (app is None and path != "/rate_limit" and fake.rate_used >= fake.rate_limit
                    and time.time() < fake.rate_reset):
                record.status = 403
                self._send(403, {"message": f"API rate limit exceeded for user ID {fake.user(login).id}.",
                                 "documentation_url": "https://docs.github.com/rest/overview/rate-limits",
                                 "status": "403"}, fake.rate_headers())
                return
        if fault is not None and fault.kind == "status" and not fault.apply:
            record.status = fault.status
            self._send(fault.status, {"message": "Server Error"} if fault.status >= 500 else
                       {"message": "fault"}, fake.rate_headers())
            return
        with fake.lock:
            try:
                if app is not None:
                    status, data, extra = fake.handle_app(method, path, body, app)
                else:
                    status, data, extra = fake.handle(method, path, query, body if body is not None else {}, login)
            except ApiError as exc:
                status, extra = exc.status, exc.headers
                data = {"message": exc.message, "documentation_url": "https://docs.github.com/rest",
                        "status": str(exc.status)}
                if exc.errors is not None:
                    data["errors"] = exc.errors
            if fault is not None and fault.kind == "status":
                status, data, extra = fault.status, {"message": "Server Error"}, {}
            page_headers: dict[str, str] = {}
            if status == 200 and method == "GET" and isinstance(data, list) and "/git/matching-refs/" not in path:
                data, page_headers = _paginate(data, query, self.headers.get("host", ""), parts.path)
            payload = b"" if status == 204 else json.dumps(data, separators=(",", ":")).encode()
            etag = 'W/"' + hashlib.sha256(payload).hexdigest()[:40] + '"'
            not_modified = (method == "GET" and status == 200
                            and etag in [t.strip() for t in self.headers.get("if-none-match", "").split(",")])
            if app is None and path != "/rate_limit" and not not_modified:
                fake.rate_used += 1  # a 304 costs nothing against the primary limit
            out = {**fake.rate_headers(), **page_headers, **extra}
            if path == "/user":
                scopes = fake.user(login).scopes
                if scopes is not None:
                    out["x-oauth-scopes"] = scopes
                    out["x-accepted-oauth-scopes"] = ""
            if method == "GET" and status == 200:
                out["etag"] = etag
                out["cache-control"] = "private, max-age=60, s-maxage=60"
                out["vary"] = "Accept, Authorization, Cookie, X-GitHub-OTP"
            record.status = 304 if not_modified else status
        if not_modified:
            self._send_raw(304, b"", out)
        else:
            self._send_raw(status, payload, out)

    def _serve_git(self, record: Recorded, body: bytes, query: str) -> None:
        """git's smart HTTP through `git http-backend`, for a token in a Basic header (as GitHub takes it)."""
        fake = self.fake
        scheme, _, credential = self.headers.get("authorization", "").partition(" ")
        token = ""
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(credential.strip(), validate=True).decode().partition(":")[2]
            except ValueError:
                token = ""
        login = fake.tokens.get(token)
        if login is None or fake.git_dir is None:
            record.status = 401
            self._send_git(401, b"", {"www-authenticate": 'Basic realm="GitHub"'})
            return
        record.login = login
        record.auth = "installation" if token in fake.installation_tokens else "token"
        service = _q(parse_qs(query), "service", "")
        try:
            with fake.lock:
                fake.check_installation_token(token, record.method, record.path, service)
        except ApiError as exc:
            record.status = exc.status
            self._send_git(exc.status, exc.message.encode(), {"content-type": "text/plain"})
            return
        env = {"GIT_PROJECT_ROOT": str(fake.git_dir.parent), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": "/" + record.path.split("/", 2)[2], "QUERY_STRING": query,
               "REQUEST_METHOD": record.method, "CONTENT_TYPE": self.headers.get("content-type", ""),
               "REMOTE_USER": login, "REMOTE_ADDR": "127.0.0.1", "HOME": str(fake.root),
               "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"}
        for name in ("content-encoding", "git-protocol"):
            if self.headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = out.stdout.partition(b"\r\n\r\n")
        status, extra = 200, {}
        for line in head.decode(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                extra[key.lower()] = value.strip()
        record.status = status
        self._send_git(status, payload, extra)

    def _send_git(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, data: Any, headers: dict[str, str]) -> None:
        self._send_raw(status, json.dumps(data).encode(), headers)

    def _send_raw(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json; charset=utf-8")
            self.send_header("x-github-request-id", hashlib.md5(self.path.encode()).hexdigest()[:16].upper())
            self.send_header("x-github-api-version-selected", "2026-03-10")
            for key, value in headers.items():
                self.send_header(key, value)
            if status not in (204, 304):
                self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if status != 304 and payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _paginate(items: list[Any], query: dict[str, list[str]], host: str, path: str
              ) -> tuple[list[Any], dict[str, str]]:
    per_page = max(1, min(100, int(_q(query, "per_page", "30"))))
    page = max(1, int(_q(query, "page", "1")))
    last = max(1, -(-len(items) // per_page))
    chunk = items[(page - 1) * per_page: page * per_page]
    if last == 1:
        return chunk, {}

    def link(n: int) -> str:
        params = {k: v[0] for k, v in query.items()}
        params.update(per_page=str(per_page), page=str(n))
        encoded = "&".join(f"{k}={quote(v, safe=',:')}" for k, v in params.items())
        return f"<http://{host}{path}?{encoded}>"

    rels = []
    if page < last:
        rels += [f'{link(page + 1)}; rel="next"', f'{link(last)}; rel="last"']
    if page > 1:
        rels += [f'{link(1)}; rel="first"', f'{link(page - 1)}; rel="prev"']
    return chunk, {"link": ", ".join(rels)}


@asynccontextmanager
async def open_github_forge(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Any, FakeGitHub]]:
    """A started `GitHubForge` (entered) for "octo/demo" on a fresh fake server, and the server.

    The fleet writes as `fleet-bot` (a separate identity), the approve key acts as `octo-operator`; git goes to
    the `clone_url` the API reports (smart HTTP on `localhost`, the token in a header).
    `options` go to `GitHubForge` (e.g. `write_spacing`, `max_wait`); a `server_options` dict goes to the fake.
    """
    from fleet_tui.forge.github import GitHubForge

    server = FakeGitHub(Path(tmp_path), **options.pop("server_options", {})).start()
    settings: dict[str, Any] = dict(token=FLEET_TOKEN, operator_token=OPERATOR_TOKEN, base_url=server.url,
                                    write_spacing=0.0, retry_backoff=0.01, secondary_backoff=0.05, timeout=5.0,
                                    settle_s=0.05, readiness_backoff=0.01)
    settings.update(options)
    try:
        forge = GitHubForge(REPO, **settings)
        async with forge:
            yield forge, server
    finally:
        server.stop()
