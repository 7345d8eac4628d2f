"""The command line: --version, init, logging with secrets redacted, clear errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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
    assert result.stderr.strip().splitlines()[-1] == "fleet-tui: a GitHub forge needs --github-repo OWNER/NAME"


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


# --- init that cannot strand you -----------------------------------------------------------------


def _git_repo(path: Path, origin: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    if origin:
        subprocess.run(["git", "-C", str(path), "remote", "add", "origin", origin], check=True)
    return path


@pytest.mark.parametrize(("given", "repo", "api_url"), [
    ("octo/demo", "octo/demo", "https://api.github.com"),
    ("https://github.com/octo/demo", "octo/demo", "https://api.github.com"),
    ("https://github.com/octo/demo.git", "octo/demo", "https://api.github.com"),
    ("https://github.com/octo/demo/", "octo/demo", "https://api.github.com"),
    ("git@github.com:octo/demo.git", "octo/demo", "https://api.github.com"),
    ("ssh://git@github.com/octo/my.repo.git", "octo/my.repo", "https://api.github.com"),
    ("https://ghe.example.com/team/tool.git", "team/tool", "https://ghe.example.com/api/v3/"),
    ("git@ghe.example.com:team/tool.git", "team/tool", "https://ghe.example.com/api/v3/"),
])
def test_github_repository_forms(given: str, repo: str, api_url: str) -> None:
    from fleet_tui.init_config import parse_github_repo

    parsed = parse_github_repo(given)
    assert (parsed.repo, parsed.api_url) == (repo, api_url)


@pytest.mark.parametrize("given", ["octo", "https://github.com/octo", "octo/demo/extra", "not a repo", "/demo"])
def test_github_repository_refused(given: str) -> None:
    from fleet_tui.init_config import parse_github_repo

    with pytest.raises(ValueError, match="expected owner/name or a repository URL"):
        parse_github_repo(given)


def test_init_prompts_reask_until_answers_are_right(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    answers = "\n".join([
        "gitlab",                                   # not a choice: asked again
        "github",
        "",                                         # no default: asked again
        "octo",                                     # not a repository: asked again
        "https://ghe.example.com/team/tool.git",    # owner/name and the Enterprise API URL from the URL
        "",                                         # approvers have no default: asked again
        "not a login!",
        "alice, @bob",
        "",                                         # runner: the default shown (docker)
        "claude",
    ]) + "\n"
    result = run("init", cwd=repo, stdin=answers)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "please answer one of: local, github" in out
    assert "an answer is needed" in out and "expected owner/name or a repository URL" in out
    assert "not a GitHub login: login!" in out
    config = load_config(repo / "fleet.toml")
    assert config.forge.kind == "github" and config.forge.repo == "team/tool"
    assert config.forge.api_url == "https://ghe.example.com/api/v3/"
    assert config.approvers == ["alice", "bob"]
    assert config.runner.kind == "docker" and config.roles.dev.engine == "claude"
    assert "not inside a git repository" not in result.stderr


def test_init_takes_the_repository_from_origin(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo", origin="git@github.com:octo/demo.git")
    result = run("init", cwd=repo, stdin="github\n\nalice\n\n\n")
    assert result.returncode == 0, result.stderr
    assert "GitHub repository (owner/name or URL) (octo/demo):" in result.stdout
    config = load_config(repo / "fleet.toml")
    assert config.forge.repo == "octo/demo" and config.approvers == ["alice"]


def test_init_url_flag_and_end_of_input_without_an_approver(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    result = run("init", "--forge", "github", "--github-repo", "https://github.com/octo/demo.git", cwd=repo,
                 stdin="")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("a GitHub forge needs at least one approver: pass --approver LOGIN "
                                          "(repeatable), the logins whose approval label counts")
    ok = run("init", "--forge", "github", "--github-repo", "https://github.com/octo/demo.git", "--approver",
             "alice", "--yes", cwd=repo)
    assert ok.returncode == 0, ok.stderr
    assert load_config(repo / "fleet.toml").forge.repo == "octo/demo"


@pytest.mark.parametrize("extra", [[], ["--yes"]])
def test_init_outside_a_git_repository_says_so(tmp_path: Path, extra: list[str]) -> None:
    result = run("init", *extra, cwd=tmp_path, stdin="")
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path} is not inside a git repository" in result.stderr
    assert "run `git init` there" in result.stderr


def test_init_repo_and_config_after_the_command(tmp_path: Path) -> None:
    repo = _git_repo(tmp_path / "repo")
    result = run("init", "--repo", str(repo), "--yes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (repo / "fleet.toml").is_file() and "not inside a git repository" not in result.stderr
    elsewhere = tmp_path / "conf" / "fleet.toml"
    result = run("--config", str(elsewhere), "init", "--yes", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert elsewhere.is_file()
