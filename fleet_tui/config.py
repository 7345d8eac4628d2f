"""The fleet.toml schema (one model, a docstring per field), where config lives, and how it is loaded.

Errors never surface as tracebacks: `ConfigError` carries one line per problem naming the file, the key,
the bad value and what is allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

APP_NAME = "fleet-tui"
CONFIG_FILENAME = "fleet.toml"

# Token shapes that must never sit in a config file.
TOKEN_RE = re.compile(r"\b(?:ghp_|gho_|ghs_|ghu_|ghr_|github_pat_|sk-)[A-Za-z0-9_\-]{8,}")


class ConfigError(Exception):
    """A config file that cannot be used; `str()` is the message to show (exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, strict=True)


class ForgeConfig(_Section):
    kind: Literal["local", "github"] = "local"
    """Where issues and PRs live: `local` (embedded, no account needed) or `github`."""

    repo: str = ""
    """GitHub: `owner/name`. Local: path of the git repository (empty means the current directory)."""

    api_url: str = "https://api.github.com"
    """GitHub API base URL; for GitHub Enterprise Server use `https://HOST/api/v3/`."""

    base_branch: str = ""
    """Branch PRs target; empty means the repository's default branch."""

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

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _github_needs_repo(self) -> ForgeConfig:
        if self.kind == "github" and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo):
            raise ValueError(f"forge.repo must be 'owner/name' when forge.kind is 'github', got {self.repo!r}")
        return self


class LabelsConfig(_Section):
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

    @field_validator("*")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class RoleConfig(_Section):
    engine: str = "scripted"
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

    network: str = ""
    """Docker network of this role's containers; empty uses `runner.network` (QA test runs use `none`)."""


class RolesConfig(_Section):
    pm: RoleConfig = RoleConfig()
    """The PM: proposes issues."""

    dev: RoleConfig = RoleConfig(max_concurrent=2)
    """Dev agents: implement approved issues and fix QA findings."""

    qa: RoleConfig = RoleConfig()
    """The QA agent: reviews PRs."""


class EngineConfig(_Section):
    kind: Literal["codex", "claude", "aider", "command", "scripted"] = "command"
    """Adapter that builds the command line and parses the output."""

    command: str = ""
    """Executable (or argv template for `command`: `{prompt_file}`, `{workspace}`, `{issue}` fields)."""

    model: str = ""
    """Model name passed to the CLI; empty uses the CLI's default."""

    args: list[str] = []
    """Extra arguments appended to the command line."""

    env: list[str] = []
    """Names of environment variables passed from the operator's environment to this engine's runs
    (e.g. OPENAI_API_KEY). Nothing else is passed; never the forge token."""

    max_turns: int = Field(30, ge=1)
    """Turn cap passed to CLIs that take one (budgets are enforced outside the agent too)."""

    price_input_per_mtok: float = Field(0.0, ge=0)
    """USD per million input tokens, for cost accounting when the CLI reports tokens only."""

    price_output_per_mtok: float = Field(0.0, ge=0)
    """USD per million output tokens."""

    script: str = ""
    """For `scripted`: path of the script to follow (empty: the built-in demo script)."""


class RunnerConfig(_Section):
    kind: Literal["docker", "local"] = "local"
    """Where agents run: `docker` (a container per run) or `local` (a subprocess; trusted setups only)."""

    image: str = "fleet-agent:latest"
    """Docker image of the agents (see `docker/Dockerfile`)."""

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

    @field_validator("memory")
    @classmethod
    def _memory_shape(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[bkmg]?", value.strip().lower()):
            raise ValueError(f"must look like 512m or 4g, got {value!r}")
        return value.strip().lower()


class PolicyConfig(_Section):
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


class UiConfig(_Section):
    theme: str = "fleet-dark"
    """Theme name: fleet-dark, fleet-light, any Textual theme, or a file in the user's themes folder."""

    keys: dict[str, str] = {}
    """Key remaps by binding id, e.g. `approve = "A"`; see `fleet-tui --help` for the ids."""

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

    @model_validator(mode="after")
    def _roles_name_engines(self) -> FleetConfig:
        for role in ("pm", "dev", "qa"):
            name = getattr(self.roles, role).engine
            if role == "pm" and name == BUILTIN_PM:
                continue
            if name not in self.engines and name not in BUILTIN_ENGINES:
                known = sorted(set(self.engines) | set(BUILTIN_ENGINES))
                raise ValueError(f"roles.{role}.engine names {name!r}, which is neither in [engines] nor built in "
                                 f"(known: {', '.join(known)})")
        return self

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
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def find_config(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file to use: `--config`, then `FLEET_CONFIG`, then `./fleet.toml`, then the user config dir.

    An explicit path (flag or variable) that does not exist is an error; the others are optional.
    """
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


def _describe_error(err: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind == "extra_forbidden":
        return f"unknown key {key!r} (check the spelling; fleet.toml.example lists every key)"
    if kind == "missing":
        return f"{key} is required"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{key} must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"{key} must be one of {ctx.get('expected')}, got {shown}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{key} must be a whole number, got {shown}"
    if kind in ("float_type", "float_parsing"):
        return f"{key} must be a number, got {shown}"
    if kind in ("string_type",):
        return f"{key} must be a string, got {shown}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{key} must be true or false, got {shown}"
    if kind in ("list_type",):
        return f"{key} must be a list, got {shown}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{key} must be a table, got {shown}"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if key and not message.startswith(key.split(".")[0]):
        return f"{key} {message}" if message.startswith("must") else f"{key}: {message}"
    return message


def check_file_secrets(path: Path, text: str) -> None:
    """Refuse a config file that holds a token, or that holds secrets and is readable by group or others."""
    match = TOKEN_RE.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise ConfigError(
            f"{path}:{line}: holds a token-shaped string ({match.group(0)[:4]}…); tokens never go in fleet.toml. "
            "Remove it and export GITHUB_TOKEN (or use `gh auth login`) instead."
        )
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH) and re.search(r"(?im)^\s*(app_private_key|password|secret)\w*\s*=", text):
        raise ConfigError(f"{path}: holds secret settings and is readable by group/others; run `chmod 600 {path}`")


def parse_config(text: str, source: str = CONFIG_FILENAME) -> FleetConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_describe_error(err)}" for err in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None


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
    return parse_config(text, path.name if path.parent == Path.cwd() else str(path))


def to_toml_data(config: FleetConfig, *, only_changed: bool = True) -> dict[str, Any]:
    """Config as plain data for tomli-w (`fleet-tui init`)."""
    return config.model_dump(mode="json", exclude_defaults=only_changed, exclude_none=True)


# --- tokens -------------------------------------------------------------------------------------


def resolve_token(forge: ForgeConfig, env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The fleet's GitHub token and where it came from (`GITHUB_TOKEN`, `gh auth token`, ...)."""
    env = os.environ if env is None else env
    for name in forge.token_env:
        value = env.get(name, "").strip()
        if value:
            return value, name
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

    def section(model: type[BaseModel], instance: BaseModel, name: str, out: list[str]) -> None:
        scalars, tables = [], []
        for field_name, info in model.model_fields.items():
            current = getattr(instance, field_name)
            (tables if isinstance(current, BaseModel) else scalars).append((field_name, info, current))
        if name:
            out.append(f"[{name}]")
        for field_name, info, current in scalars:
            if field_name == "engines":
                continue  # documented with an example table at the end
            out.extend(comment(info.description or ""))
            if current is None:
                out.append(f"# {field_name} = 0  (not set)")
            else:
                out.append(f"{field_name} = {value(current)}")
            out.append("")
        for field_name, info, current in tables:
            out.extend(comment(info.description or ""))
            section(type(current), current, f"{name}.{field_name}" if name else field_name, out)

    lines = comment("fleet-tui configuration. Every key is optional; the values shown are the defaults. "
                    "Lookup order: --config, $FLEET_CONFIG, ./fleet.toml, the user config dir. Never put a "
                    "token in this file: the GitHub token comes from GITHUB_TOKEN / GH_TOKEN or `gh auth token`.")
    lines.append("")
    section(FleetConfig, FleetConfig(), "", lines)
    lines += comment("Named engines the roles refer to ([engines.NAME]). Built in: codex, claude, aider, "
                     "scripted. An example to uncomment:")
    lines.append("# [engines.codex-fast]")
    example = EngineConfig(kind="codex", command="codex", model="gpt-5.5", env=["OPENAI_API_KEY"],
                           price_input_per_mtok=1.25, price_output_per_mtok=10.0)
    for field_name, info in EngineConfig.model_fields.items():
        lines.extend(comment(info.description or ""))
        lines.append(f"# {field_name} = {value(getattr(example, field_name))}")
    lines.append("")
    return "\n".join(lines)
