"""`fleet-tui check`: a checklist with a fix per failure; non-zero exit while something required fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCAL_SCRIPTED = """\
[runner]
kind = "local"
[roles.pm]
engine = "scripted"
[roles.dev]
engine = "scripted"
[roles.qa]
engine = "scripted"
"""


def check(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet_tui", "check", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120)


def _repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("x\n")
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "init"], check=True)
    return path


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(LOCAL_SCRIPTED)
    result = check(tmp_path)
    assert result.returncode == 1
    assert "is not a git repository" in result.stdout
    assert "run `git init`" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_labels_then_fix(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(LOCAL_SCRIPTED)
    first = check(repo)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "missing: proposed, approved, fleet:in-progress, fleet:needs-human" in first.stdout
    assert "fleet-tui check --fix" in first.stdout
    fixed = check(repo, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "created proposed, approved, fleet:in-progress, fleet:needs-human" in fixed.stdout
    again = check(repo)
    assert again.returncode == 0 and "all required checks passed" in again.stdout


def test_missing_engine_cli_has_a_fix(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(LOCAL_SCRIPTED.replace('[roles.dev]\nengine = "scripted"',
                                                            '[roles.dev]\nengine = "codex"'))
    result = check(repo, "--fix", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "codex is not on PATH" in result.stdout and "npm install -g @openai/codex" in result.stdout
    assert "OPENAI_API_KEY" in result.stdout  # a warning, with what to export


def test_github_without_token(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('approvers = ["octo"]\n[forge]\nkind = "github"\nrepo = "octo/demo"\nuse_gh_cli = false\n'
                                         + LOCAL_SCRIPTED)
    result = check(tmp_path)
    assert result.returncode == 1
    assert "no token in GITHUB_TOKEN or GH_TOKEN" in result.stdout
    assert "export GITHUB_TOKEN" in result.stdout


def test_github_token_report_and_labels(tmp_path: Path) -> None:
    """Against the fake GitHub over loopback: who the token is, an excess scope warned about, labels created."""
    from tests.fake_github import REPO, FakeGitHub

    with FakeGitHub(tmp_path / "fake", git=False) as server:
        server.add_user("wide-bot", "wide-token-0123456789", scopes="repo, workflow, delete_repo")
        server.permissions["wide-bot"] = "write"
        (tmp_path / "fleet.toml").write_text(
            f'approvers = ["octo"]\n[forge]\nkind = "github"\nrepo = "{REPO}"\napi_url = "{server.url}"\nuse_gh_cli = false\n'
            + LOCAL_SCRIPTED)
        env = {"GITHUB_TOKEN": "wide-token-0123456789"}
        first = check(tmp_path, env=env)
        assert "wide-bot" in first.stdout
        assert "scope 'workflow' is more than the fleet needs" in first.stdout
        assert "scope 'delete_repo' is more than the fleet needs" in first.stdout
        assert "missing: proposed, approved" in first.stdout and first.returncode == 1
        fixed = check(tmp_path, "--fix", env=env)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert {"proposed", "approved", "fleet:in-progress", "fleet:needs-human"} <= set(server.labels)
        assert "wide-token-0123456789" not in fixed.stdout + fixed.stderr


def test_github_bad_token(tmp_path: Path) -> None:
    from tests.fake_github import REPO, FakeGitHub

    with FakeGitHub(tmp_path / "fake", git=False) as server:
        (tmp_path / "fleet.toml").write_text(
            f'approvers = ["octo"]\n[forge]\nkind = "github"\nrepo = "{REPO}"\napi_url = "{server.url}"\nuse_gh_cli = false\n'
            + LOCAL_SCRIPTED)
        result = check(tmp_path, env={"GITHUB_TOKEN": "not-a-valid-token-42"})
        assert result.returncode == 1
        assert "forge reachable" in result.stdout and "Traceback" not in result.stdout + result.stderr
        assert "not-a-valid-token-42" not in result.stdout + result.stderr


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


DOCKER_RUNNER = """\
[runner]
kind = "docker"
image = "{image}"
[roles.pm]
engine = "scripted"
[roles.dev]
engine = "{dev}"
[roles.qa]
engine = "scripted"
"""


@pytest.mark.docker
def test_docker_image_and_engine_binaries(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(DOCKER_RUNNER.format(image="fleet-test:latest", dev="codex"))
    result = check(repo, "--fix")
    assert "Docker engine" in result.stdout and "agent image" in result.stdout
    assert "python3" in result.stdout  # the scripted engine's binary, found inside the image
    assert "codex is not in fleet-test:latest" in result.stdout
    assert "rebuild the image with codex installed" in result.stdout
    assert result.returncode == 1
    (repo / "fleet.toml").write_text(DOCKER_RUNNER.format(image="no-such-image:1", dev="scripted"))
    missing = check(repo, "--fix")
    assert missing.returncode == 1
    assert "no-such-image:1 is not on the engine" in missing.stdout
    assert "docker build -t no-such-image:1 docker/" in missing.stdout


def test_docker_unreachable_has_a_fix(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(DOCKER_RUNNER.format(image="fleet-test:latest", dev="scripted"))
    result = check(repo, "--fix", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 1
    assert "cannot reach the Docker engine at tcp://127.0.0.1:9" in result.stdout
    assert 'runner.kind = "local"' in result.stdout
