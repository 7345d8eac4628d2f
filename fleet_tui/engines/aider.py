"""The aider engine: `aider --message-file ... --yes-always` with plain-text output, and tokens and cost
from its analytics log (`message_send` events) after the run, or from its "Tokens: ..." lines meanwhile.

aider reads settings from the repository it works in (`.env`, `.aider.conf.yml`, `.aider.model.settings.yml`);
a run's command line, env file and model settings file (in the scratch dir) come after them and win for where
the API calls and the key go, for what aider may run, and for where its own files are written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleet_tui.config import EngineConfig
from fleet_tui.engines import (
    PROMPT_FILE,
    ConfiguredEngine,
    as_float,
    as_int,
    json_object,
)
from fleet_tui.engines.base import (
    EngineResult,
    Invocation,
    LogLine,
    Output,
    Task,
    UsageUpdate,
)
from fleet_tui.engines.prices import priced_usage
from fleet_tui.model import Usage

ANALYTICS_FILE = "analytics.jsonl"
# Loaded by aider after every other .env (the repository's included) and with override, so what it sets wins.
ENV_FILE = "aider.env"
# aider reads .aider.model.settings.yml from the repository too, whose `extra_params` (api_base, base_url) go
# to every completion call and win over the variables and flags, key included. Its `aider/extra_params` entry
# is laid over every model's, and the last file read (--model-settings-file) replaces a same-named entry.
MODEL_SETTINGS_FILE = "aider.model.settings.yml"
CHAT_HISTORY_FILE = "aider.chat.history.md"
INPUT_HISTORY_FILE = "aider.input.history"
# aider downloads litellm's model price list into ~/.aider/caches when its cached copy is missing or empty;
# a small non-empty copy in the run's HOME keeps it offline, and it then reads litellm's bundled list.
MODEL_INFO_CACHE_FILE = "home/.aider/caches/model_prices_and_context_window.json"
MODEL_INFO_CACHE = '{"fleet-placeholder": {}}\n'
# The key goes to aider under this name, and the env file hands it on to the provider's variable.
KEY_VAR = "FLEET_AIDER_API_KEY"
# Where requests go and how they are trusted. A repository's .env may set any of these (aider loads it with
# override); the env file sets each back to the operator's value, or to empty (the library default).
_DESTINATION_VARS = (
    "ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)
# Set in both cases: an empty lower-case one would cancel an upper-case one the operator passed.
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
# Without it litellm downloads its price list when aider first loads it (after the env files are read).
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
# "Tokens: 2.3k sent, 1.1k cache write, 45 received. Cost: $0.01 message, $0.03 session."
_TOKENS_RE = re.compile(r"^Tokens:\s*(?P<sent>[\d.,]+[kKmM]?) sent,.*?(?P<recv>[\d.,]+[kKmM]?) received\.")
_SESSION_COST_RE = re.compile(r"\$(?P<cost>[\d.,]+) session")
# What aider prints (and still exits 0) when an edit did land, when edits were rejected, and when the model
# API could not be reached or kept failing.
_APPLIED_RE = re.compile(r"^Applied edit to ")
_EDIT_FAILED_RE = re.compile(
    r"^(The LLM did not conform to the edit format\.|# \d+ SEARCH/REPLACE blocks? failed to match|"
    r"Only \d+ reflections allowed, stopping\.)"
)
_API_FAILED_RE = re.compile(r"^litellm\.[A-Za-z]*(Error|Exception)\b|^The API provider's servers are down")
MAX_SUMMARY_LINES = 40


class AiderEngine(ConfiguredEngine):
    """Builds aider command lines that never commit (the fleet commits on the branch), never prompt, leave
    nothing of aider's own in the workspace and reach no host but the model API's."""

    default_name = "aider"

    def invocation(self, task: Task, *, workdir: str, scratch: str) -> Invocation:
        scratch = scratch.rstrip("/")
        argv = [
            self.config.command or "aider",
            "--message-file",
            f"{scratch}/{PROMPT_FILE}",
            "--yes-always",
            "--no-auto-commits",
            "--no-pretty",
            "--no-stream",
            "--analytics-log",
            f"{scratch}/{ANALYTICS_FILE}",
            # --yes-always would also say yes to sharing analytics; the log file above is local only.
            "--analytics-disable",
            "--no-analytics",
            "--no-check-update",
            "--no-show-release-notes",
            "--no-show-model-warnings",  # looks the model up online otherwise
            "--no-detect-urls",  # would fetch URLs the prompt (an issue's text) mentions
            "--no-browser",
            # Otherwise aider adds .aider* to .gitignore, a change no issue asked for.
            "--no-gitignore",
            # aider's own files go to the scratch dir, not into the workspace the fleet commits.
            "--chat-history-file",
            f"{scratch}/{CHAT_HISTORY_FILE}",
            "--input-history-file",
            f"{scratch}/{INPUT_HISTORY_FILE}",
            # The repo map keeps its tags cache in .aider.tags.cache.v4/ at the repository root, with no flag to
            # move it; without the map aider adds the files the model names (--yes-always) and edits those.
            "--map-tokens",
            "0",
            # Which settings win: aider loads ~/.env, then the repository's .env, then --env-file, each with
            # override, then applies flags. So the fleet's env file wins over the repository's .env; the flags
            # below win over both, and, being on the command line, also keep the repository's .env and
            # .aider.conf.yml from setting them (AIDER_OPENAI_API_BASE, AIDER_SET_ENV, AIDER_ENV_FILE).
            "--env-file",
            f"{scratch}/{ENV_FILE}",
            "--openai-api-base",
            self.config.base_url,
            "--set-env",
            "LITELLM_LOCAL_MODEL_COST_MAP=True",
            "--model-settings-file",
            f"{scratch}/{MODEL_SETTINGS_FILE}",
            # A repository's .aider.conf.yml (or AIDER_* in its .env) could have aider run its own commands, with
            # the API key in their environment, write into the workspace, or make the run do nothing; given
            # here, these win. Built-in linting stays (aider fixes the syntax errors it made); the lint command
            # is one for no language.
            "--lint-cmd",
            "fleetnone: true",
            "--test-cmd",
            "",
            "--no-auto-test",
            "--load",
            "",
            "--no-notifications",
            "--notifications-command",
            "",
            "--no-suggest-shell-commands",
            "--llm-history-file",
            "",
            "--no-dry-run",
            "--no-watch-files",
            "--verify-ssl",
        ]
        if self.config.model:
            argv += ["--model", self.config.model]
        argv += self.config.args
        env = self.env(scratch)
        if self.config.api_key_env and self.config.api_key_env in env:
            env[KEY_VAR] = env.pop(self.config.api_key_env)
        files = {
            PROMPT_FILE: task.prompt,
            ENV_FILE: self.env_file(env),
            MODEL_SETTINGS_FILE: self.model_settings(),
            MODEL_INFO_CACHE_FILE: MODEL_INFO_CACHE,
        }
        return Invocation(argv=tuple(argv), env=env, files=files, needs_network=True)

    def env_file(self, env: dict[str, str]) -> str:
        """The run's `--env-file`: where requests go (the configured base URL, or the provider's default),
        proxies and CA settings only as the operator passed them, and the configured key under the variable
        the model's provider reads. The key itself is not written: the file names the variable it is in."""
        lines = ["# Written by fleet-tui for this run; aider loads it after the repository's .env."]
        pinned = {"OPENAI_API_BASE": self.config.base_url, "OPENAI_BASE_URL": self.config.base_url}
        pinned.update({name: env.get(name, "") for name in _DESTINATION_VARS})
        for name in _PROXY_VARS:
            value = env.get(name.lower(), env.get(name, ""))  # lower case wins, as in urllib
            pinned[name] = pinned[name.lower()] = value
        # An empty SSL_VERIFY reads as "do not verify" to litellm.
        pinned["SSL_VERIFY"] = env.get("SSL_VERIFY", "True")
        pinned.update(OFFLINE_ENV)
        lines += [f"{name}={_dotenv_literal(value)}" for name, value in pinned.items()]
        if KEY_VAR in env:
            lines.append(f'{provider_key_var(self.config.model)}="${{{KEY_VAR}}}"')
        return "\n".join(lines) + "\n"

    def model_settings(self) -> str:
        """The run's `--model-settings-file`: an `aider/extra_params` entry that sets where every call goes (the
        configured base URL, or none: the provider's default), over whatever a repository's file says."""
        base = json.dumps(self.config.base_url or None)  # JSON is YAML; null leaves litellm its default
        return (
            "# Written by fleet-tui for this run; read after the repository's .aider.model.settings.yml.\n"
            f"- name: aider/extra_params\n  extra_params:\n    api_base: {base}\n    base_url: {base}\n"
        )

    def parser(self) -> AiderParser:
        return AiderParser(self.config)


def provider_key_var(model: str) -> str:
    """The variable litellm reads the key from for `model`, as aider's `--api-key provider=key` names it:
    `PROVIDER_API_KEY` for `provider/model`, Anthropic's for bare Claude names, else OpenAI's."""
    provider, _, rest = model.partition("/")
    if rest and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", provider):
        return f"{provider.upper()}_API_KEY"
    if model.startswith("claude"):
        return "ANTHROPIC_API_KEY"
    return "OPENAI_API_KEY"


def _dotenv_literal(value: str) -> str:
    """`value` as a python-dotenv single-quoted literal: no interpolation, one line."""
    value = value.replace("\r", "").replace("\n", "")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _count(text: str) -> int:
    text = text.replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        return int(float(text.rstrip("kKmM")) * scale)
    except ValueError:
        return 0


class AiderParser:
    """Plain lines; usage from aider's per-message "Tokens:" reports, replaced by the analytics log at the end.
    aider exits 0 when its edits were all rejected or the API kept failing; the lines say which."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._lines: list[str] = []
        self._sent = 0
        self._received = 0
        self._applied = 0
        self._edit_failures = 0
        self._api_failing = False  # the last word on the model API was a failure, not a reply
        self.usage = Usage()

    def feed(self, line: str) -> list[Output]:
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        self._lines.append(line)
        del self._lines[:-MAX_SUMMARY_LINES]
        out: list[Output] = [LogLine(line)]
        stripped = line.strip()
        if _APPLIED_RE.match(stripped):
            self._applied += 1
        elif _EDIT_FAILED_RE.match(stripped):
            self._edit_failures += 1
        elif _API_FAILED_RE.match(stripped):
            self._api_failing = True
        match = _TOKENS_RE.match(stripped)
        if match:
            self._api_failing = False
            self._sent += _count(match.group("sent"))
            self._received += _count(match.group("recv"))
            cost_match = _SESSION_COST_RE.search(line)
            cost = as_float(cost_match.group("cost").replace(",", "")) if cost_match else None
            self.usage = priced_usage(self._config, self._sent, self._received, 0, cost or None)
            out.append(UsageUpdate(self.usage))
        return out

    def result(self, exit_code: int, scratch: Path) -> EngineResult:
        usage = read_analytics(self._config, Path(scratch) / ANALYTICS_FILE) or self.usage
        summary = "\n".join(row for row in self._lines if not _TOKENS_RE.match(row.strip())).strip()
        failure = self.failure() if exit_code == 0 else ""
        if failure:
            summary = f"{failure}\n{summary}".strip()
        return EngineResult(ok=exit_code == 0 and not failure, summary=summary, usage=usage)

    def failure(self) -> str:
        """Why a run aider ended with 0 did not work, or "": no edit applied where edits were rejected, or the
        model API failed and no reply came after (a retry that worked is fine). A reply without edits (a review,
        nothing to change) is fine."""
        if self._edit_failures and not self._applied:
            return "aider applied none of the model's edits"
        if self._api_failing:
            return "aider got no reply from the model API"
        return ""


def read_analytics(config: EngineConfig, path: Path) -> Usage | None:
    """Totals of the `message_send` events in aider's analytics log; None when there are none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    sent = received = 0
    cost = 0.0
    session_cost: float | None = None
    seen = False
    for line in text.splitlines():
        event = json_object(line)
        if event is None or event.get("event") != "message_send":
            continue
        props = event.get("properties")
        if not isinstance(props, dict):
            continue
        seen = True
        sent += as_int(props.get("prompt_tokens"))
        received += as_int(props.get("completion_tokens"))
        cost += as_float(props.get("cost")) or 0.0
        session_cost = as_float(props.get("total_cost")) or session_cost
    if not seen:
        return None
    reported = session_cost if session_cost else (cost or None)
    return priced_usage(config, sent, received, 0, reported)
