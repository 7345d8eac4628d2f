"""The fleet.toml schema (one model, a docstring per field), where config lives, and how it is loaded.

Each section is a frozen dataclass checked by the small validation layer below: TOML types strictly (no
"yes" for a bool, no 1.5 for a whole number; a whole number is fine for a float), unknown keys refused,
bounds and choices enforced. The docstring under each field is its description, read from this module's
source only when asked (`field_descriptions`), so importing the schema stays cheap.

Errors never surface as tracebacks: `ConfigError` carries one line per problem naming the file, the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Self, dataclass_transform, get_args, get_origin

if TYPE_CHECKING:
    from pathlib import Path  # imported where used: it is not needed to load the schema

APP_NAME = "fleet-tui"
CONFIG_FILENAME = "fleet.toml"

# Token shapes that must never sit in a config file.
TOKEN_RE = re.compile(r"\b(?:ghp_|gho_|ghs_|ghu_|ghr_|github_pat_|sk-)[A-Za-z0-9_\-]{8,}")


class ConfigError(Exception):
    """A config file that cannot be used; `str()` is the message to show (exit code 2)."""


# --- the validation layer -----------------------------------------------------------------------

# A problem: the key path, how to word it, and the text. `_TYPED` texts follow the key ("must be ...");
# `_UNKNOWN` is a key that is not in the schema; `_CHECKED` texts come from a section's own checks and are
# shown as they are when they already name the key.
_TYPED, _UNKNOWN, _CHECKED = "typed", "unknown", "checked"
Problem = tuple[tuple[str, ...], str, str]
Check = Callable[[Any, tuple[str, ...], list[Problem]], Any]
_BAD = object()  # what a check returns for a value it refused (the problem is recorded)


class InvalidConfig(ValueError):
    """Values a section refuses; `problems` in field order, `str()` one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [_describe(loc, kind, text) for loc, kind, text in self.problems]


def _describe(loc: tuple[str, ...], kind: str, text: str) -> str:
    key = ".".join(loc)
    if kind == _UNKNOWN:
        return f"unknown key {key!r} (check the spelling; fleet.toml.example lists every key)"
    if kind == _TYPED:
        return f"{key} {text}"
    if key and not text.startswith(key.split(".")[0]):
        return f"{key} {text}" if text.startswith("must") else f"{key}: {text}"
    return text


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def Field(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A field with a lower bound: `ge` (>=) or `gt` (>)."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt})


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field, dataclasses.field))
class _Section:
    """Base of every section: subclasses become frozen, keyword-only dataclasses checked on creation.

    A list or dict default is copied for each instance. `_clean` checks or normalises one field's value after
    its type and bounds passed (raise ValueError("must ...") to refuse it); `_check` looks at the whole
    section once every field is valid and returns a message, or None when it is fine.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in inspect.get_annotations(cls):
            default = cls.__dict__.get(name)
            if isinstance(default, (list, dict)):
                setattr(cls, name, dataclasses.field(default_factory=lambda d=default: type(d)(d)))
        # eq, hash and repr come from this base: generating them for each section would double import time.
        dataclasses.dataclass(frozen=True, kw_only=True, eq=False, repr=False)(cls)

    def __post_init__(self) -> None:
        cls = type(self)
        problems: list[Problem] = []
        values = _check_fields(cls, {name: getattr(self, name) for name, *_ in _specs(cls)}, (), problems)
        if problems:
            raise InvalidConfig(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        message = self._check()
        if message:
            raise InvalidConfig([((), _CHECKED, message)])

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, *_ in _specs(type(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Section) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in _specs(type(self)))
        return f"{type(self).__qualname__}({shown})"

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        return value

    def _check(self) -> str | None:
        return None

    @classmethod
    def from_toml(cls, data: Any) -> Self:
        """The section from parsed TOML; raises InvalidConfig naming every problem."""
        problems: list[Problem] = []
        section = _build(cls, data, (), problems)
        if problems:
            raise InvalidConfig(problems)
        return section  # type: ignore[no-any-return]

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Self:
        """A checked copy with some fields replaced."""
        return dataclasses.replace(self, **(update or {}))


# Per section: (name, check, ge, gt) of each field, built on the section's first use.
_SPECS: dict[type, tuple[tuple[str, Check, Any, Any], ...]] = {}
# The check of each annotation string (`from __future__ import annotations` keeps them strings).
_CHECKS: dict[str, Check] = {}


def _specs(cls: type[_Section]) -> tuple[tuple[str, Check, Any, Any], ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = tuple((field.name, _annotation_check(field.type), field.metadata.get("ge"),
                                     field.metadata.get("gt")) for field in dataclasses.fields(cls))
    return specs


def _annotation_check(annotation: str) -> Check:
    check = _CHECKS.get(annotation)
    if check is None:
        # The annotations are this module's own source; evaluating each distinct one once is much cheaper
        # at import than typing.get_type_hints, which compiles every field's annotation.
        check = _CHECKS[annotation] = _check_for(eval(annotation, globals()))
    return check


def _check_fields(cls: type[_Section], data: dict[str, Any], loc: tuple[str, ...],
                  problems: list[Problem]) -> dict[str, Any]:
    """The valid values of `cls`'s fields present in `data`, recording a problem for each invalid one."""
    values = {}
    for name, check, ge, gt in _specs(cls):
        if name not in data:
            continue
        raw = data[name]
        where = (*loc, name)
        value = check(raw, where, problems)
        if value is _BAD:
            continue
        if ge is not None and not value >= ge:
            problems.append((where, _TYPED, f"must be >= {_bound(ge)}, got {raw!r}"))
            continue
        if gt is not None and not value > gt:
            problems.append((where, _TYPED, f"must be > {_bound(gt)}, got {raw!r}"))
            continue
        try:
            values[name] = cls._clean(name, value)
        except ValueError as exc:
            problems.append((where, _CHECKED, str(exc)))
    return values


def _build(cls: type[_Section], data: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
    if not isinstance(data, dict):
        problems.append((loc, _TYPED, f"must be a table, got {_shown(data)}"))
        return _BAD
    before = len(problems)
    values = _check_fields(cls, data, loc, problems)
    known = {name for name, *_ in _specs(cls)}
    problems.extend(((*loc, str(key)), _UNKNOWN, "") for key in data if key not in known)
    if len(problems) > before:
        return _BAD  # like the section's own check, which needs every field valid
    try:
        return cls(**values)
    except InvalidConfig as exc:
        problems.extend(((*loc, *where), kind, text) for where, kind, text in exc.problems)
        return _BAD


def _bound(value: float) -> float:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _scalar(kind: type, wording: str) -> Check:
    def check(value: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        problems.append((loc, _TYPED, f"must be {wording}, got {_shown(value)}"))
        return _BAD

    return check


_SCALARS: dict[Any, Check] = {str: _scalar(str, "a string"), int: _scalar(int, "a whole number"),
                              float: _scalar(float, "a number"), bool: _scalar(bool, "true or false")}


def _check_for(hint: Any) -> Check:
    """The check of one field type: str, int, float, bool, X | None, Literal, list[str], dict[str, X], a section."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return _literal(args)
    if type(None) in args:
        inner = _check_for(next(arg for arg in args if arg is not type(None)))
        return lambda value, loc, problems: None if value is None else inner(value, loc, problems)
    if origin is list:
        return _list(_check_for(args[0]))
    if origin is dict:
        return _dict(_check_for(args[1]))
    if isinstance(hint, type) and issubclass(hint, _Section):
        return _section(hint)
    raise TypeError(f"no check for fields of type {hint!r}")


def _literal(choices: tuple[Any, ...]) -> Check:
    shown = [repr(choice) for choice in choices]
    expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    def check(value: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return value
        problems.append((loc, _TYPED, f"must be one of {expected}, got {_shown(value)}"))
        return _BAD

    return check


def _list(item: Check) -> Check:
    def check(value: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
        if not isinstance(value, list):
            problems.append((loc, _TYPED, f"must be a list, got {_shown(value)}"))
            return _BAD
        before = len(problems)
        items = [item(entry, (*loc, str(index)), problems) for index, entry in enumerate(value)]
        return items if len(problems) == before else _BAD

    return check


def _dict(item: Check) -> Check:
    key_check = _SCALARS[str]

    def check(value: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
        if not isinstance(value, dict):
            problems.append((loc, _TYPED, f"must be a table, got {_shown(value)}"))
            return _BAD
        before = len(problems)
        items = {key_check(key, (*loc, str(key), "[key]"), problems): item(entry, (*loc, str(key)), problems)
                 for key, entry in value.items()}
        return items if len(problems) == before else _BAD

    return check


def _section(cls: type[_Section]) -> Check:
    def check(value: Any, loc: tuple[str, ...], problems: list[Problem]) -> Any:
        return value if isinstance(value, cls) else _build(cls, value, loc, problems)

    return check


def field_descriptions(section: type[_Section]) -> dict[str, str]:
    """Each field's description: the docstring under it in this module's source (read on first use)."""
    return _docstrings().get(section.__name__, {})


@functools.cache
def _docstrings() -> dict[str, dict[str, str]]:
    import ast

    with open(__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = found.setdefault(node.name, {})
        for field, doc in zip(node.body, node.body[1:]):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str)):
                docs[field.target.id] = inspect.cleandoc(doc.value.value)
    return found


# --- the schema ---------------------------------------------------------------------------------


class ForgeConfig(_Section):
    """[forge]: where issues and PRs live and how the fleet signs in."""

    kind: Literal["local", "github"] = "local"
    """Where issues and PRs live: `local` (embedded, no account needed) or `github`."""

    repo: str = ""
    """GitHub: `owner/name`. Local: path of the git repository (empty means the current directory)."""

    api_url: str = "https://api.github.com"
    """GitHub API base URL; for GitHub Enterprise Server use `https://HOST/api/v3/`."""

    base_branch: str = ""
    """Branch PRs target; empty means the default branch the forge reports (GitHub: the repository's default
    branch; local: the branch checked out in the repository)."""

    push_url: str = ""
    """Git URL the fleet fetches bases from and pushes branches to; empty means the repository's `clone_url` as
    the API reports it. The token travels only in a per-command HTTP header, never in this URL."""

    token_env: list[str] = ["GITHUB_TOKEN", "GH_TOKEN"]
    """Environment variables read, in order, for the fleet's GitHub token (never put a token in this file)."""

    use_gh_cli: bool = True
    """When no token variable is set, ask `gh auth token` for one."""

    operator_token_env: str = ""
    """Variable holding the operator's own token for the approve key, when the fleet writes as a separate
    bot; empty means the fleet's token is the operator's too."""

    app_id: int | None = None
    """GitHub App id, to write as an App installation instead of a token."""

    app_installation_id: int | None = None
    """Installation id of that App on the repository."""

    app_private_key_path: str = ""
    """Path of the App's private key (PEM); the file must not be readable by group or others."""

    timeout_s: float = Field(30.0, gt=0)
    """Timeout of one HTTP request to the forge, in seconds."""

    settle_s: float = Field(5.0, ge=0)
    """After a write timed out, how long to wait before looking for it again (it may still land); the look is
    repeated over a window longer than `timeout_s` before the write is sent again."""

    claim_lease_s: float = Field(180.0, ge=5)
    """Seconds a claim of an issue holds without renewal. The holder renews it every third of this; another
    orchestrator takes the issue over only after it has seen the same lease unrenewed for this long (so a
    dead orchestrator's issues wait this long before another picks them up)."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        return value.strip() if name == "repo" else value

    def _check(self) -> str | None:
        if self.kind == "github" and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo):
            return f"forge.repo must be 'owner/name' when forge.kind is 'github', got {self.repo!r}"
        return None


class LabelsConfig(_Section):
    """[labels]: the label names the fleet reads and writes."""

    proposed: str = "proposed"
    """Label the PM puts on the issues it proposes."""

    approved: str = "approved"
    """Label that approves an issue for a Dev agent (counts only when applied by an approver)."""

    in_progress: str = "fleet:in-progress"
    """Label the fleet puts on an issue it has claimed."""

    needs_human: str = "fleet:needs-human"
    """Label for issues the fleet stopped on (rounds exhausted, policy, failures, budget)."""

    rejected: str = "rejected"
    """Label a rejected proposal gets when `reject_action` is `label`."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class RoleConfig(_Section):
    """[roles.pm], [roles.dev], [roles.qa]: one role's engine, limits and budgets."""

    engine: str = "codex"
    """Name of the engine (a key of `[engines]`, or a built-in: codex, claude, aider, scripted). The PM may
    also use `builtin`: proposals from TODO/FIXME comments and unchecked ROADMAP.md items, no model."""

    max_concurrent: int = Field(1, ge=1)
    """How many runs of this role may be live at once."""

    timeout_s: int = Field(1800, ge=10)
    """A run is killed after this many seconds."""

    max_qa_rounds: int = Field(3, ge=1)
    """QA review rounds before the issue goes to needs-human (used by the dev and qa roles)."""

    max_attempts: int = Field(2, ge=1)
    """Attempts of a failed run before the issue goes to needs-human."""

    budget_tokens: int = Field(0, ge=0)
    """Token budget of one run (0 means no limit)."""

    budget_usd: float = Field(0.0, ge=0)
    """USD budget of one run (0 means no limit)."""

    max_output_bytes: int = Field(0, ge=0)
    """Bytes of output a run may print before it is stopped as over budget (0: no limit); the limit that acts
    mid-run for engines that report usage only at a turn's end."""

    network: str = ""
    """Docker network of this role's containers; empty uses `runner.network` (QA test runs use `none`)."""


class RolesConfig(_Section):
    """[roles]: the three roles."""

    pm: RoleConfig = RoleConfig()
    """The PM: proposes issues."""

    dev: RoleConfig = RoleConfig(max_concurrent=2)
    """Dev agents: implement approved issues and fix QA findings."""

    qa: RoleConfig = RoleConfig()
    """The QA agent: reviews PRs."""


class EngineConfig(_Section):
    """[engines.NAME]: how one agent CLI is run. Runs get a HOME of their own, so the CLI's own config in the
    operator's home (~/.codex/config.toml, ~/.claude/) is not read: set the model, provider, key and extra
    options here instead. String values may use `${VAR}` from the operator's environment."""

    kind: Literal["codex", "claude", "aider", "command", "scripted"] = "command"
    """Adapter that builds the command line and parses the output."""

    command: str = ""
    """Executable (or argv template for `command`: `{prompt_file}`, `{workspace}`, `{issue}` fields)."""

    model: str = ""
    """Model name passed to the CLI; empty uses the CLI's default (priced, until you set prices, as the
    family that default comes from)."""

    base_url: str = ""
    """Base URL of the model provider's API, e.g. `http://127.0.0.1:8000/v1` for a model server on the host
    (with `runner.network = "host"`); empty uses the CLI's default provider. Codex: becomes a `model_providers.fleet` entry; Claude
    Code: ANTHROPIC_BASE_URL; aider: `--openai-api-base`."""

    api_key_env: str = ""
    """Variable in the operator's environment that holds the provider's API key; it is passed to the runs
    (no need to list it in `env`). Codex: the provider's `env_key`; Claude Code: given to the CLI as
    ANTHROPIC_API_KEY; aider: handed to aider as the provider's key variable (OPENAI_API_KEY for an
    OpenAI-compatible `base_url`, PROVIDER_API_KEY for `provider/model`) through its env file."""

    wire_api: Literal["", "responses", "chat"] = ""
    """Codex: the provider's wire protocol, `responses` or `chat` (Chat Completions; recent Codex CLI
    versions accept only `responses`); empty means `responses` when `base_url` or `api_key_env` is set."""

    sandbox: Literal["", "read-only", "workspace-write", "danger-full-access"] = ""
    """Codex's own sandbox mode. Empty: bypassed in Docker (the container is the sandbox) and
    `workspace-write` with the local runner. `workspace-write` keeps `.git` read-only for the agent's commands
    (the fleet commits what the agent leaves) and needs bubblewrap and a state dir outside /tmp."""

    extra: dict[str, str] = {}
    """Codex: extra config passed as `-c KEY=VALUE` (VALUE is read as TOML, else as a string), e.g.
    `model_reasoning_effort = "high"`."""

    args: list[str] = []
    """Extra arguments appended to the command line."""

    env: list[str] = []
    """Names of environment variables passed from the operator's environment to this engine's runs
    (e.g. OPENAI_API_KEY). Nothing else is passed; never the forge token."""

    max_turns: int = Field(30, ge=1)
    """Turn cap passed to CLIs that take one (budgets are enforced outside the agent too)."""

    price_input_per_mtok: float = Field(0.0, ge=0)
    """USD per million input tokens, for cost accounting when the CLI reports tokens only; 0 takes the
    built-in price of `model` (fleet_tui/engines/prices.py), if it has one."""

    price_output_per_mtok: float = Field(0.0, ge=0)
    """USD per million output tokens; 0 takes the built-in price of `model`, if it has one."""

    script: str = ""
    """For `scripted`: path of the script to follow (empty: the built-in demo script)."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        if name == "api_key_env" and value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"must be an environment variable name, got {value!r}")
        if name == "base_url" and value and not re.match(r"https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        if name == "extra":
            bad = [key for key in value if not re.fullmatch(r"[A-Za-z0-9_.-]+", key)]
            if bad:
                raise ValueError(f"keys must be dotted config names, got {bad[0]!r}")
        return value


class DockerHostConfig(_Section):
    """[[runner.hosts]]: one Docker engine of the pool the docker runner places runs on."""

    url: str = ""
    """The engine: `unix:///var/run/docker.sock`, `tcp://HOST:2376` (with the TLS files below) or
    `ssh://user@host` (key-based SSH; `docker` must be installed on the remote)."""

    name: str = ""
    """Short name shown in the Agents pane and events; empty: the URL's host (or `local` for a unix socket)."""

    max_runs: int = Field(4, ge=1)
    """How many runs this host takes at once."""

    tls_ca: str = ""
    """tcp:// only: the CA certificate (PEM) that signed the engine's certificate."""

    tls_cert: str = ""
    """tcp:// only: the client certificate (PEM) the engine accepts."""

    tls_key: str = ""
    """tcp:// only: the client certificate's private key (PEM)."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        if name == "url" and value and not re.match(r"(unix|tcp|ssh)://\S+$", value.strip()):
            raise ValueError(f"must start with unix://, tcp:// or ssh://, got {value!r}")
        return value.strip() if isinstance(value, str) else value

    def _check(self) -> str | None:
        if not self.url:
            return "url: every [[runner.hosts]] entry needs the engine's url (unix://, tcp:// or ssh://)"
        tls = [self.tls_ca, self.tls_cert, self.tls_key]
        if any(tls) and not all(tls):
            return "tls_ca, tls_cert and tls_key go together: set all three, or none"
        if any(tls) and not self.url.startswith("tcp://"):
            return "TLS files apply to tcp:// hosts only"
        return None

    @property
    def label(self) -> str:
        """The name people see: `name`, else the URL's host, else `local`."""
        if self.name:
            return self.name
        rest = self.url.split("://", 1)[1] if "://" in self.url else self.url
        if self.url.startswith("unix://"):
            return "local"
        return rest.split("@")[-1].split("/")[0] or self.url


class KubernetesConfig(_Section):
    """[runner.kubernetes]: where and how agents run as Kubernetes Jobs (`runner.kind = "kubernetes"`)."""

    kubeconfig: str = ""
    """Path of the kubeconfig; empty: $KUBECONFIG or ~/.kube/config, or the in-cluster service account when the
    fleet itself runs in a pod."""

    context: str = ""
    """kubeconfig context to use; empty: the current one."""

    namespace: str = "default"
    """Namespace the Jobs run in."""

    service_account: str = ""
    """Service account of the agent pods; empty: the namespace's default. It needs no API rights at all."""

    image: str = ""
    """Image of the agent pods; empty: `runner.image`. The cluster must be able to pull it."""

    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image."""

    engine_secret: str = ""
    """Name of a Secret in the namespace whose keys become the agent's environment (the engines' API keys).
    Never put the forge token in it."""

    node_selector: dict[str, str] = {}
    """Node labels the agent pods must run on, e.g. { "fleet/agents" = "yes" }."""

    tolerations: list[dict[str, str]] = []
    """Tolerations of the agent pods, as Kubernetes spells them, e.g.
    [{ key = "fleet", operator = "Equal", value = "agents", effect = "NoSchedule" }]."""

    max_runs: int = Field(10, ge=1)
    """How many agent Jobs run at once."""

    read_only_root: bool = True
    """Agent pods get a read-only root file system (only /workspace, /fleet and /tmp are writable); turn it off
    for an image whose engine must write elsewhere."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        if name == "namespace" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise ValueError(f"must be a Kubernetes namespace name (lowercase letters, digits, '-'), got {value!r}")
        if name == "tolerations":
            allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
            for entry in value:
                bad = sorted(set(entry) - allowed)
                if bad:
                    raise ValueError(f"a toleration may have {', '.join(sorted(allowed))}; got {bad[0]!r}")
        return value


class RunnerConfig(_Section):
    """[runner]: where agent processes run, and their limits."""

    kind: Literal["docker", "local", "kubernetes"] = "docker"
    """Where agents run: `docker` (a container per run, on one engine or a pool of hosts), `kubernetes` (a Job
    per run) or `local` (a subprocess; trusted setups only)."""

    hosts: list[DockerHostConfig] = []
    """docker only: the pool of engines runs are placed on ([[runner.hosts]] tables). None: the one engine of
    $DOCKER_HOST, or the local socket."""

    kubernetes: KubernetesConfig = KubernetesConfig()
    """kubernetes only: cluster, namespace and pod settings."""

    image: str = "fleet-agent:latest"
    """Docker image of the agents; `fleet-tui image build` builds it for the engines the roles use."""

    network: str = "bridge"
    """Docker network for engine runs that need their model API; `none` cuts all egress."""

    memory: str = "4g"
    """Memory limit of one container (Docker syntax: 512m, 4g)."""

    cpus: float = Field(2.0, gt=0)
    """CPU limit of one container."""

    pids: int = Field(512, ge=16)
    """Process limit of one container."""

    user: str = "1000:1000"
    """uid:gid the agent runs as inside the container (never root)."""

    workspace_retention_h: float = Field(24.0, ge=0)
    """Hours finished workspaces are kept before cleanup."""

    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    """Local runner only: `auto` runs agents inside bubblewrap when `bwrap` is installed (and plainly, with a
    warning from `check`, when not); `bwrap` requires it; `none` runs them as you with no isolation."""

    ro_paths: list[str] = []
    """Local runner with bubblewrap: extra host paths shown read-only inside the sandbox (e.g. where an agent
    CLI is installed under a home directory)."""

    @classmethod
    def _clean(cls, name: str, value: Any) -> Any:
        if name != "memory":
            return value
        if not re.fullmatch(r"\d+[bkmg]?", value.strip().lower()):
            raise ValueError(f"must look like 512m or 4g, got {value!r}")
        return value.strip().lower()

    def _check(self) -> str | None:
        if self.hosts and self.kind != "docker":
            return f'hosts: [[runner.hosts]] is for runner.kind = "docker", not {self.kind!r}'
        labels = [host.label for host in self.hosts]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            return f"hosts: two hosts are both named {twice[0]!r}; give them distinct `name`s"
        return None


class PolicyConfig(_Section):
    """[policy]: what a PR may be before it reaches a human, and budgets."""

    max_pr_lines: int = Field(800, ge=1)
    """A diff with more changed lines than this goes to needs-human instead of a ready PR."""

    protected_paths: list[str] = [
        ".github/workflows/",
        "CODEOWNERS",
        ".github/CODEOWNERS",
        "AGENTS.md",
        "CLAUDE.md",
        ".codex/",
        ".claude/",
        ".aider.conf.yml",
    ]
    """Paths (a trailing / means a folder) the fleet never changes in a PR without a human."""

    test_command: str = ""
    """The repository's test command QA runs (in a container with no network); empty skips it."""

    reject_action: Literal["close", "label"] = "close"
    """What rejecting a proposal does besides removing the proposed label."""

    max_open_proposals: int = Field(5, ge=1)
    """Most PM proposals waiting for the operator at once."""

    pm_interval_s: float = Field(0.0, ge=0)
    """Seconds between two scheduled PM runs; 0 runs the PM only when asked (the run-PM key). A due run waits
    while `max_open_proposals` proposals are already waiting."""

    approvers_with_write: bool = False
    """Also count approvals by anyone with write/maintain/admin permission (checked live)."""

    budget_day_tokens: int = Field(0, ge=0)
    """Fleet token budget per day (0 means no limit)."""

    budget_day_usd: float = Field(0.0, ge=0)
    """Fleet USD budget per day (0 means no limit)."""

    budget_issue_usd: float = Field(0.0, ge=0)
    """USD budget of one issue over all its runs (0 means no limit)."""

    max_live_runs: int = Field(4, ge=1)
    """Most runs live at once across all roles."""

    max_pr_bytes: int = Field(1_000_000, ge=1)
    """A diff whose changed files (binary files by size) add up to more bytes than this goes to needs-human."""

    allow_binary: bool = False
    """Let a PR add or change files git treats as binary; when false such a PR goes to needs-human with the
    file names."""

    update_strategy: Literal["merge", "rebase"] = "merge"
    """How an update round brings a fleet PR that turned dirty or behind up to the fresh base."""

    max_update_rounds: int = Field(2, ge=0)
    """Update rounds a PR may have before it goes to needs-human (0: straight to needs-human)."""

    max_action_failures: int = Field(5, ge=1)
    """Failures of one forge action (push, open PR, post review, claim) before the issue goes to needs-human
    with the last error; retries back off exponentially in between."""

    stall_s: float = Field(300.0, ge=0)
    """A run with no output for this many seconds is killed as stalled (0: never)."""


class UiConfig(_Section):
    """[ui]: the console."""

    theme: str = "fleet-dark"
    """Theme name: fleet-dark, fleet-light, any Textual theme (textual-dark, nord, gruvbox, ...), or the name of
    a TOML file in the user's themes folder (~/.config/fleet-tui/themes/ on Linux)."""

    keys: dict[str, str] = {}
    """Key remaps by binding id, e.g. `approve = "A"` or `stop = "ctrl+s"`. The ids: approve, reject, details,
    tail_log, stop, retry, run_pm, open, merge, copy_url, restart_loop, pause, inbox, stats, filter, switch_pane,
    fullscreen, help, detach, quit. Two ids on one key, or another id on `q`, is refused by `fleet-tui check`."""

    bell: bool = True
    """Ring the terminal bell when something needs the human."""

    log_lines: int = Field(5000, ge=100)
    """Lines the log pane keeps (the full log stays on disk)."""


class FleetConfig(_Section):
    """The whole of fleet.toml."""

    forge: ForgeConfig = ForgeConfig()
    """Where issues and PRs live."""

    labels: LabelsConfig = LabelsConfig()
    """Label names (all renameable)."""

    approvers: list[str] = []
    """Logins whose approval label counts. Local forge: empty means the local user."""

    roles: RolesConfig = RolesConfig()
    """PM, Dev and QA settings."""

    engines: dict[str, EngineConfig] = {}
    """Named engines the roles refer to."""

    runner: RunnerConfig = RunnerConfig()
    """Where agent processes run."""

    policy: PolicyConfig = PolicyConfig()
    """What a PR may be before it reaches a human, and budgets."""

    poll_interval_s: float = Field(30.0, ge=1)
    """Seconds between two polls of the forge (operator keys and runner events wake the loop at once)."""

    ui: UiConfig = UiConfig()
    """The console."""

    state_dir: str = ""
    """Where the journal and logs live; empty means the user state dir."""

    def _check(self) -> str | None:
        for role in ("pm", "dev", "qa"):
            name = getattr(self.roles, role).engine
            if role == "pm" and name == BUILTIN_PM:
                continue
            if name not in self.engines and name not in BUILTIN_ENGINES:
                known = sorted(set(self.engines) | set(BUILTIN_ENGINES))
                return (f"roles.{role}.engine names {name!r}, which is neither in [engines] nor built in "
                        f"(known: {', '.join(known)})")
        return None

    def engine(self, name: str) -> EngineConfig:
        if name in self.engines:
            return self.engines[name]
        return BUILTIN_ENGINES[name]


# `roles.pm.engine = "builtin"`: the PM that needs no model.
BUILTIN_PM = "builtin"

BUILTIN_ENGINES: dict[str, EngineConfig] = {
    "codex": EngineConfig(kind="codex", command="codex", env=["OPENAI_API_KEY"]),
    "claude": EngineConfig(kind="claude", command="claude", env=["ANTHROPIC_API_KEY"]),
    "aider": EngineConfig(kind="aider", command="aider", env=["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]),
    "scripted": EngineConfig(kind="scripted", command=""),
}




# --- where things live ------------------------------------------------------------------------


def user_config_dir() -> Path:
    from pathlib import Path

    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_state_dir() -> Path:
    from pathlib import Path

    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def find_config(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file to use: `--config`, then `FLEET_CONFIG`, then `./fleet.toml`, then the user config dir.

    An explicit path (flag or variable) that does not exist is an error; the others are optional.
    """
    from pathlib import Path

    for source, value in (("--config", explicit), ("FLEET_CONFIG", os.environ.get("FLEET_CONFIG"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file (given by {source})")
            return path
    for candidate in ((cwd or Path.cwd()) / CONFIG_FILENAME, user_config_dir() / CONFIG_FILENAME):
        if candidate.is_file():
            return candidate
    return None


# --- loading ----------------------------------------------------------------------------------


def token_variable(token: str) -> str:
    """The variable a token of this shape belongs in: GitHub tokens in GITHUB_TOKEN, model keys in theirs."""
    if token.startswith("sk-ant-"):
        return "ANTHROPIC_API_KEY"
    if token.startswith("sk-"):
        return "OPENAI_API_KEY"
    return "GITHUB_TOKEN"


def check_file_secrets(path: Path, text: str) -> None:
    """Refuse a config file that holds a token, that others may write (the config names the commands the
    fleet runs), or that holds secrets and is readable by group or others."""
    match = TOKEN_RE.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        variable = token_variable(match.group(0))
        if variable == "GITHUB_TOKEN":
            instead = "export GITHUB_TOKEN (or use `gh auth login`) instead"
        else:
            instead = f"export {variable} instead and list it in the engine's env (engines.NAME.env)"
        raise ConfigError(
            f"{path}:{line}: holds a token-shaped string ({match.group(0)[:4]}…); tokens never go in fleet.toml. "
            f"Remove it and {instead}."
        )
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path}: writable by group/others, who could change the commands the fleet runs; "
                          f"run `chmod go-w {path}`")
    if mode & (stat.S_IRGRP | stat.S_IROTH) and re.search(r"(?im)^\s*(app_private_key|password|secret)\w*\s*=", text):
        raise ConfigError(f"{path}: holds secret settings and is readable by group/others; run `chmod 600 {path}`")


_VAR_RE = re.compile(r"\$\$|\$\{([^}]*)\}")


def substitute_env(data: Any, environ: Any, loc: tuple[str, ...] = ()) -> Any:
    """`data` with `${VAR}` in every string value replaced by VAR from `environ` (`$$` is a literal `$`).
    Raises InvalidConfig naming the key of an unset or malformed reference."""

    def one(text: str, where: tuple[str, ...]) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise InvalidConfig([(where, _CHECKED, f"${{{name}}} is not a variable name")])
            if name not in environ:
                raise InvalidConfig([(where, _CHECKED, f"${{{name}}} is not set in the environment; export "
                                                       f"{name}, or write $$ for a literal $")])
            return str(environ[name])

        return _VAR_RE.sub(replace, text) if "$" in text else text

    if isinstance(data, str):
        return one(data, loc)
    if isinstance(data, list):
        return [substitute_env(item, environ, (*loc, str(index))) for index, item in enumerate(data)]
    if isinstance(data, dict):
        return {key: substitute_env(value, environ, (*loc, str(key))) for key, value in data.items()}
    return data


def parse_config(text: str, source: str = CONFIG_FILENAME, environ: Any = None) -> FleetConfig:
    """The config in `text`; `${VAR}` in the string values of `[engines]` comes from `environ` (default: this
    process's)."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        # Only engine settings: elsewhere (test_command, argv templates of other sections) `$` belongs to the
        # shell that runs them.
        if isinstance(data.get("engines"), dict):
            data["engines"] = substitute_env(data["engines"], os.environ if environ is None else environ,
                                             ("engines",))
    except InvalidConfig as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in exc.lines())) from None
    try:
        return FleetConfig.from_toml(data)
    except InvalidConfig as exc:
        raise ConfigError("\n".join(f"{source}: {line}" for line in exc.lines())) from None


def load_config(path: Path | None) -> FleetConfig:
    """Load and validate `path`; `None` gives the defaults (local forge in the current directory)."""
    if path is None:
        return FleetConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    check_file_secrets(path, text)
    source = path.name if path.parent == path.cwd() else str(path)
    config = parse_config(text, source)
    check_approvers(config, source)
    return config


def check_approvers(config: FleetConfig, source: str = CONFIG_FILENAME) -> None:
    """Refuse a GitHub fleet nobody can approve for: an empty `approvers` list counts no one's approval
    (unless write permission counts), so every proposal would stay unverified."""
    if config.forge.kind == "github" and not config.approvers and not config.policy.approvers_with_write:
        raise ConfigError(
            f'{source}: approvers is empty, so no approval on GitHub would count; set approvers = ["your-login"] '
            "(the logins whose approval label counts), or policy.approvers_with_write = true"
        )


def to_toml_data(config: FleetConfig, *, only_changed: bool = True) -> dict[str, Any]:
    """Config as plain data for tomli-w (`fleet-tui init`)."""

    def plain(value: Any) -> Any:
        if isinstance(value, _Section):
            return section(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return list(map(plain, value)) if isinstance(value, list) else value

    def section(instance: _Section) -> dict[str, Any]:
        out = {}
        for field in dataclasses.fields(instance):
            value = getattr(instance, field.name)
            default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
            if value is None or (only_changed and value == default):
                continue
            out[field.name] = plain(value)
        return out

    return section(config)


# --- tokens -------------------------------------------------------------------------------------


def resolve_token(forge: ForgeConfig, env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The fleet's GitHub token and where it came from (`GITHUB_TOKEN`, `gh auth token`, ...)."""
    env = os.environ if env is None else env
    for name in forge.token_env:
        value = env.get(name, "").strip()
        if value:
            return value, name
    import shutil
    import subprocess

    if forge.use_gh_cli and shutil.which("gh"):
        host = forge.api_url.split("//", 1)[-1].split("/", 1)[0]
        args = ["gh", "auth", "token"]
        if host not in ("api.github.com", "github.com"):
            args += ["--hostname", host]
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None, ""
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip(), "gh auth token"
    return None, ""


# --- the documented example ---------------------------------------------------------------------


def render_example() -> str:
    """fleet.toml.example, generated from the schema so every key and its docstring are in it."""
    import textwrap

    import tomli_w

    def comment(text: str, indent: str = "") -> list[str]:
        return [f"{indent}# {line}".rstrip() for line in textwrap.wrap(" ".join(text.split()), 100 - len(indent))]

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(item)}" for k, item in v.items()) + " }" if v else "{}"
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return tomli_w.dumps({"x": v}).split("=", 1)[1].strip()

    def section(instance: _Section, name: str, out: list[str]) -> None:
        docs = field_descriptions(type(instance))
        scalars, tables = [], []
        for field in dataclasses.fields(instance):
            current = getattr(instance, field.name)
            (tables if isinstance(current, _Section) else scalars).append((field.name, current))
        if name:
            out.append(f"[{name}]")
        for field_name, current in scalars:
            if field_name == "engines":
                continue  # documented with an example table at the end
            out.extend(comment(docs.get(field_name, "")))
            if current is None:
                out.append(f"# {field_name} = 0  (not set)")
            else:
                out.append(f"{field_name} = {value(current)}")
            out.append("")
        for field_name, current in tables:
            out.extend(comment(docs.get(field_name, "")))
            section(current, f"{name}.{field_name}" if name else field_name, out)

    lines = comment("fleet-tui configuration. Every key is optional; the values shown are the defaults. "
                    "Lookup order: --config, $FLEET_CONFIG, ./fleet.toml, the user config dir. Never put a "
                    "token in this file: the GitHub token comes from GITHUB_TOKEN / GH_TOKEN or `gh auth token`.")
    lines.append("")
    section(FleetConfig(), "", lines)
    lines += comment("Named engines the roles refer to ([engines.NAME]). Built in: codex, claude, aider, "
                     "scripted. Runs get a HOME of their own, so ~/.codex/config.toml and ~/.claude/ are not read: "
                     "set the model, provider and options here. String values may use ${VAR} from your environment "
                     "(an unset one is an error; $$ is a literal $). An example to uncomment: Codex against an "
                     "OpenAI-compatible model server on the host.")
    lines.append("# [engines.local-model]")
    example = EngineConfig(kind="codex", command="codex", model="gpt-5.1-codex-mini",
                           base_url="http://127.0.0.1:8000/v1", api_key_env="LLM_API_KEY", wire_api="responses",
                           extra={"model_reasoning_effort": "high"}, env=[],
                           price_input_per_mtok=0.25, price_output_per_mtok=2.0)
    engine_docs = field_descriptions(EngineConfig)
    for field in dataclasses.fields(example):
        lines.extend(comment(engine_docs.get(field.name, "")))
        lines.append(f"# {field.name} = {value(getattr(example, field.name))}")
    lines.append("")
    lines += comment("A pool of Docker hosts for runner.kind = \"docker\" (one table per engine; none means the "
                     "local engine). An example to uncomment:")
    host_docs = field_descriptions(DockerHostConfig)
    hosts = (DockerHostConfig(url="unix:///var/run/docker.sock", max_runs=2),
             DockerHostConfig(url="ssh://fleet@build-2.example", name="build-2", max_runs=4))
    for index, host in enumerate(hosts):
        lines.append("# [[runner.hosts]]")
        for key in ("url", "name", "max_runs"):
            if index == 0:
                lines.extend(comment(host_docs.get(key, "")))
            lines.append(f"# {key} = {value(getattr(host, key))}")
        lines.append("")
    return "\n".join(lines)
