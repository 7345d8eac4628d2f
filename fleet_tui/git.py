"""Running git: one async helper everyone uses, with an environment that never prompts or reads the
operator's global config for credentials."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio


# Variables that would point git at another repository than the one asked for.
_LOCATION_VARS = frozenset({"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                            "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE"})


class GitError(Exception):
    """A git command failed; the message holds the command and what git said."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        self.args_ = args
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {self.stderr[-500:]}")


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARS}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        GCM_INTERACTIVE="never",
        LC_ALL="C",
    )
    if extra:
        env.update(extra)
    return env


async def git(*args: str, cwd: Path | str, env: dict[str, str] | None = None, check: bool = True,
              input: bytes | None = None) -> str:
    """Run `git args...` in `cwd`; returns stdout (stripped of the trailing newline)."""
    result = await anyio.run_process(
        ["git", *args], cwd=str(cwd), env=git_env(env), check=False, input=input,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    if check and result.returncode != 0:
        raise GitError(args, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace").rstrip("\n")


def git_sync(*args: str, cwd: Path | str, env: dict[str, str] | None = None, check: bool = True) -> str:
    """The blocking twin of `git()`, for CLI paths that run before any event loop."""
    result = subprocess.run(["git", *args], cwd=str(cwd), env=git_env(env), capture_output=True, check=False)
    if check and result.returncode != 0:
        raise GitError(args, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace").rstrip("\n")
