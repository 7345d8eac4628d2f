"""`fleet-tui init`: the questions (or flags) that make a fleet.toml, and the GitHub repository parser.

Every answer is checked as it is given and asked again when it is wrong; Enter takes the default shown; a
prompt without a default is asked again; end of input takes the default, or stops with the flag to pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

GITHUB_COM = "github.com"
DEFAULT_API_URL = "https://api.github.com"
_NAME = r"[A-Za-z0-9_.-]+"


class InitError(Exception):
    """init cannot go on; the message says what to pass."""


@dataclass(frozen=True)
class GitHubRepo:
    repo: str  # owner/name
    api_url: str = DEFAULT_API_URL  # GitHub Enterprise: https://HOST/api/v3/

    @property
    def host(self) -> str:
        return GITHUB_COM if self.api_url == DEFAULT_API_URL else self.api_url.split("//", 1)[1].split("/", 1)[0]


def parse_github_repo(text: str) -> GitHubRepo:
    """`owner/name`, or a GitHub URL (https, ssh, scp-like `git@host:owner/name.git`; GitHub.com or an
    Enterprise host). Raises ValueError saying what is accepted."""
    value = text.strip()
    owner_name = rf"(?P<owner>{_NAME})/(?P<name>{_NAME}?)(?:\.git)?/?"
    patterns = (
        rf"^{owner_name}$",
        rf"^https?://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/{owner_name}$",
        rf"^ssh://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/{owner_name}$",
        rf"^(?:[^@/]+@)(?P<host>[^/:]+):{owner_name}$",
    )
    for pattern in patterns:
        match = re.match(pattern, value)
        if not match or not match.group("name") or match.group("name") in (".", ".."):
            continue
        name = match.group("name").removesuffix(".git")
        if not name:
            continue
        host = (match.groupdict().get("host") or GITHUB_COM).lower()
        repo = f"{match.group('owner')}/{name}"
        if host in (GITHUB_COM, "www.github.com", "api.github.com"):
            return GitHubRepo(repo)
        return GitHubRepo(repo, f"https://{host}/api/v3/")
    raise ValueError("expected owner/name or a repository URL such as https://github.com/owner/name or "
                     "git@github.com:owner/name.git")


def git_toplevel(path: Path) -> Path | None:
    """The git work tree `path` is in, or None outside one (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def origin_repo(top: Path | None) -> GitHubRepo | None:
    """The GitHub repository the checkout's `origin` remote points at, when it parses as one."""
    if top is None:
        return None
    try:
        out = subprocess.run(["git", "remote", "get-url", "origin"], cwd=top, capture_output=True, text=True,
                             timeout=10, check=False)
        return parse_github_repo(out.stdout) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


class Prompter:
    """Asks on `out`, reads answers from `inp`; each answer is parsed by `parse` (ValueError: ask again)."""

    def __init__(self, inp: TextIO | None = None, out: TextIO | None = None) -> None:
        self.inp = inp or sys.stdin
        self.out = out or sys.stdout

    def ask(self, prompt: str, default: str, parse: Callable[[str], Any] = str, *, flag: str = "",
            choices: tuple[str, ...] = ()) -> Any:
        hint = f" [{'/'.join(choices)}]" if choices else ""
        shown = f" ({default})" if default else ""
        while True:
            self.out.write(f"{prompt}{hint}{shown}: ")
            self.out.flush()
            line = self.inp.readline()
            if not line:  # end of input
                self.out.write("\n")
                if default:
                    return parse(default)
                raise InitError(f"no answer for {prompt.lower()!r}" + (f"; pass {flag}" if flag else ""))
            answer = line.strip() or default
            if not answer:
                self.out.write("  an answer is needed\n")
                continue
            if choices and answer not in choices:
                self.out.write(f"  please answer one of: {', '.join(choices)}\n")
                continue
            try:
                return parse(answer)
            except ValueError as exc:
                self.out.write(f"  {exc}\n")


def parse_logins(text: str) -> list[str]:
    logins = [part.strip().lstrip("@") for part in re.split(r"[,\s]+", text) if part.strip()]
    if not logins:
        raise ValueError("at least one login is needed")
    bad = [login for login in logins if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(\[bot\])?",
                                                         login)]
    if bad:
        raise ValueError(f"not a GitHub login: {', '.join(bad)}")
    return logins


def init_data(args: Any, *, repo_dir: Path, prompter: Prompter | None, warn: Callable[[str], None]) -> dict[str, Any]:
    """The fleet.toml data from the flags in `args`, asking `prompter` for anything not given (None: defaults
    only, as with --yes). Raises InitError when a required answer is missing."""
    top = git_toplevel(repo_dir)
    if top is None:
        warn(f"note: {repo_dir} is not inside a git repository; the fleet works on one: run `git init` there, "
             "or run `fleet-tui init` in your checkout (or pass --repo PATH)")

    def ask(prompt: str, default: str, parse: Callable[[str], Any] = str, *, flag: str = "",
            choices: tuple[str, ...] = (), need: str = "") -> Any:
        try:
            if prompter is None:
                if default:
                    return parse(default)
                raise InitError(f"{prompt.lower()} is needed; pass {flag}")
            return prompter.ask(prompt, default, parse, flag=flag, choices=choices)
        except InitError:
            if need:
                raise InitError(need) from None
            raise

    forge = args.forge or ask("Forge", "local", flag="--forge", choices=("local", "github"))
    data: dict[str, Any] = {"forge": {"kind": forge}}
    if forge == "github":
        if args.github_repo:
            try:
                found = parse_github_repo(args.github_repo)
            except ValueError as exc:
                raise InitError(f"--github-repo {args.github_repo!r}: {exc}") from None
        else:
            origin = origin_repo(top)
            default = "" if origin is None else (origin.repo if origin.host == GITHUB_COM
                                                 else f"https://{origin.host}/{origin.repo}")
            found = ask("GitHub repository (owner/name or URL)", default, parse_github_repo,
                        flag="--github-repo OWNER/NAME", need="a GitHub forge needs --github-repo OWNER/NAME")
        data["forge"]["repo"] = found.repo
        api_url = args.api_url or found.api_url
        if api_url != DEFAULT_API_URL:
            data["forge"]["api_url"] = api_url
        approvers = args.approver or ask(
            "Approver logins (whose approval label counts), comma separated", "", parse_logins,
            flag="--approver LOGIN",
            need="a GitHub forge needs at least one approver: pass --approver LOGIN (repeatable), the logins "
                 "whose approval label counts")
        data["approvers"] = approvers
    elif args.approver:
        data["approvers"] = args.approver
    elif forge == "local" and top is not None and args.repo:
        data["forge"]["repo"] = str(top)
    runner = args.runner or ask("Runner", "docker", flag="--runner", choices=("docker", "local"))
    data["runner"] = {"kind": runner}
    if args.image:
        data["runner"]["image"] = args.image
    engine = args.engine or ask("Engine", "codex", flag="--engine", choices=("codex", "claude", "aider", "scripted"))
    data["roles"] = {role: {"engine": engine} for role in ("pm", "dev", "qa")}
    return data
