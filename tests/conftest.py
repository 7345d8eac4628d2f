"""Shared fixtures: every test runs with its own HOME and XDG dirs and no fleet/forge environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_KEEP_OUT = ("FLEET_CONFIG", "GITHUB_TOKEN", "GH_TOKEN", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DOCKER_CONFIG")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit (a README) on `main`."""
    import subprocess

    path = tmp_path / "project"
    path.mkdir()
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "start"]):
        if args[0] == "add":
            (path / "README.md").write_text("# Project\n")
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_STATE_HOME", ".local/state"),
                      ("XDG_DATA_HOME", ".local/share"), ("XDG_CACHE_HOME", ".cache")):
        monkeypatch.setenv(name, str(home / sub))
    for name in _KEEP_OUT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Operator")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "operator@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Operator")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "operator@example.invalid")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (home / ".gitconfig").write_text("[user]\n\tname = Test Operator\n\temail = operator@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    return home


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def installed_cli(name: str, prefix_env: str, label: str) -> str:
    """The path of a real engine CLI installed by `tests/tools/install-NAME.sh` (under `$PREFIX_ENV/bin`, default
    /opt/fleet-tools/NAME) or on PATH; skips without it, and fails under CI=true, where it is required."""
    import shutil

    candidate = Path(os.environ.get(prefix_env, f"/opt/fleet-tools/{name}")) / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        message = f"{label} not installed (run tests/tools/install-{name}.sh)"
        if in_ci():
            pytest.fail(message + "; it is required under CI=true")
        pytest.skip(message)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI=true a test that needs Docker or the Codex CLI must run: its skip becomes a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and (item.get_closest_marker("docker") or item.get_closest_marker("codex")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where it must run: {reason}"
