"""The command line: --version, init, logging with secrets redacted, clear errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from fleet_tui import __version__
from fleet_tui.config import load_config


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet_tui", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=120)


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"fleet-tui {__version__}"


def test_init_from_flags_writes_loadable_private_file(tmp_path: Path) -> None:
    result = run("init", "--forge", "github", "--github-repo", "octo/demo", "--approver", "alice",
                 "--approver", "bob", "--runner", "docker", "--engine", "codex", "--image", "agents:1",
                 cwd=tmp_path, env={"GITHUB_TOKEN": "ghp_" + "s3cr3t" * 6})
    assert result.returncode == 0, result.stderr
    path = tmp_path / "fleet.toml"
    assert path.stat().st_mode & 0o077 == 0
    text = path.read_text()
    assert "ghp_" not in text and "s3cr3t" not in text
    data = tomllib.loads(text)
    assert data["forge"] == {"kind": "github", "repo": "octo/demo"}
    assert data["approvers"] == ["alice", "bob"]
    config = load_config(path)
    assert config.runner.image == "agents:1" and config.roles.dev.engine == "codex"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text("# mine\n")
    result = run("init", "--yes", cwd=tmp_path)
    assert result.returncode == 1
    assert "exists already; pass --force" in result.stderr
    assert (tmp_path / "fleet.toml").read_text() == "# mine\n"


def test_init_prompts_answered_on_stdin(tmp_path: Path) -> None:
    # Not a terminal: prompts are skipped, defaults taken, and the file still loads.
    result = run("init", cwd=tmp_path, stdin="")
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "fleet.toml").forge.kind == "local"


def test_init_github_without_repo_is_a_clear_error(tmp_path: Path) -> None:
    result = run("init", "--forge", "github", "--yes", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "fleet-tui: a GitHub forge needs --github-repo OWNER/NAME"


def test_once_needs_headless(tmp_path: Path) -> None:
    result = run("--once", cwd=tmp_path)
    assert result.returncode == 2 and "--once goes with --headless" in result.stderr


def test_log_redacts_tokens(tmp_path: Path) -> None:
    from fleet_tui.logs import register_secret, setup_logging

    path = setup_logging("debug", tmp_path)
    register_secret("plain-secret-value-123")
    token = "github_pat_" + "A1" * 20
    logging.getLogger("fleet_tui.test").info("pushing with %s and plain-secret-value-123", token)
    logging.getLogger("fleet_tui.test").info("header Authorization: Bearer abc.def.ghi")
    try:
        raise RuntimeError(f"failed with sk-ant-{'k' * 30}")
    except RuntimeError:
        logging.getLogger("fleet_tui.test").exception("boom")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text()
    assert "[REDACTED]" in text
    for secret in (token, "plain-secret-value-123", "abc.def.ghi", "k" * 30):
        assert secret not in text
    assert path.stat().st_mode & 0o077 == 0


def test_headless_with_docker_unreachable_says_what_to_do(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (("init", "-q", "-b", "main"), ("commit", "-q", "--allow-empty", "-m", "start")):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    (repo / "fleet.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n[runner]\nkind = "docker"\n')
    result = run("--headless", "--once", cwd=repo, env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.startswith("fleet-tui: cannot reach the Docker engine at tcp://127.0.0.1:9")
    assert 'set runner.kind = "local"' in result.stderr
    assert "Traceback" not in result.stderr and "TaskGroup" not in result.stderr


def test_init_refuses_a_github_config_without_an_approver(tmp_path: Path) -> None:
    result = run("init", "--forge", "github", "--github-repo", "octo/demo", "--yes", cwd=tmp_path)
    assert result.returncode == 1
    assert "needs at least one approver: pass --approver LOGIN" in result.stderr
    assert not (tmp_path / "fleet.toml").exists()
