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

    with FakeGitHub(tmp_path / "fake", git=True) as server:
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
    assert "rebuild the image with codex installed: `fleet-tui image build`" in result.stdout
    assert result.returncode == 1
    (repo / "fleet.toml").write_text(DOCKER_RUNNER.format(image="no-such-image:1", dev="scripted"))
    missing = check(repo, "--fix")
    assert missing.returncode == 1
    assert "no-such-image:1 is not on the engine" in missing.stdout
    assert "run `fleet-tui image build`" in missing.stdout


def test_docker_unreachable_has_a_fix(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(DOCKER_RUNNER.format(image="fleet-test:latest", dev="scripted"))
    result = check(repo, "--fix", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 1
    assert "cannot reach the Docker engine at tcp://127.0.0.1:9" in result.stdout
    assert 'runner.kind = "local"' in result.stdout


# --- what check tells the truth about ----------------------------------------------------------


def test_repo_and_config_go_before_or_after_the_command(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    config = tmp_path / "elsewhere.toml"
    config.write_text(LOCAL_SCRIPTED)
    env = {"COLUMNS": "200"}
    for args in (["check", "--repo", str(repo), "--config", str(config)],
                 ["--repo", str(repo), "--config", str(config), "check"]):
        result = subprocess.run([sys.executable, "-m", "fleet_tui", *args], cwd=tmp_path, capture_output=True,
                                text=True, env={**os.environ, **env}, timeout=120)
        assert f"{repo} (local forge)" in result.stdout, result.stdout + result.stderr
        assert str(config) in result.stdout


def test_not_a_repository_hint_names_the_flag(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(LOCAL_SCRIPTED)
    result = check(tmp_path)
    assert "`fleet-tui check --repo PATH`" in result.stdout


def test_forge_token_variable_in_an_engine_env_fails(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text(
        LOCAL_SCRIPTED + '[engines.leaky]\nkind = "command"\ncommand = "true"\nenv = ["OPENAI_API_KEY", "GH_TOKEN"]\n')
    result = check(repo, "--fix")
    assert result.returncode == 1
    assert "engines.leaky.env lists GH_TOKEN: the agents would receive the forge token" in result.stdout
    assert "remove GH_TOKEN from engines.leaky.env" in result.stdout


def test_group_writable_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(LOCAL_SCRIPTED)
    path.chmod(0o664)
    result = check(tmp_path)
    assert result.returncode == 2
    assert "writable by group/others" in result.stderr and f"chmod go-w {path}" in result.stderr


def _ui_problems(text: str) -> list[str]:
    from fleet_tui.config import parse_config
    from fleet_tui.doctor import ui_problems

    return ui_problems(parse_config(text), theme_dir=None)


def test_ui_keys_and_theme_checked_against_the_console() -> None:
    assert _ui_problems('[ui]\ntheme = "fleet-light"\n[ui.keys]\napprove = "A"\nstop = "ctrl+s"\n') == []
    assert _ui_problems('[ui]\ntheme = "nord"\n') == []  # a Textual theme
    unknown = _ui_problems('[ui.keys]\napprov = "A"\n')
    assert len(unknown) == 1 and "unknown binding id(s) 'approv'" in unknown[0] and "approve" in unknown[0]
    clash = _ui_problems('[ui.keys]\napprove = "s"\n')
    assert clash == ["ui.keys: 's' would be bound to approve and stop; give each its own key"]
    each_other = _ui_problems('[ui.keys]\napprove = "z"\nreject = "z"\n')
    assert each_other == ["ui.keys: 'z' would be bound to approve and reject; give each its own key"]
    swapped = _ui_problems('[ui.keys]\napprove = "x"\nreject = "a"\n')
    assert swapped == []  # a swap collides with nothing
    quit_taken = _ui_problems('[ui.keys]\nretry = "q"\n')
    assert quit_taken == ["ui.keys.retry = 'q' takes over q (quit); pick another key"]
    theme = _ui_problems('[ui]\ntheme = "fleet-purple"\n')
    assert len(theme) == 1 and theme[0].startswith("ui.theme 'fleet-purple' is not a known theme")
    assert "fleet-dark" in theme[0]


def test_ui_problems_fail_check(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    (repo / "fleet.toml").write_text('[ui]\ntheme = "nope"\n' + LOCAL_SCRIPTED)
    result = check(repo, "--fix")
    assert result.returncode == 1 and "ui.theme 'nope' is not a known theme" in result.stdout


class FakeForge:
    def __init__(self, *, default: str = "main", branches: tuple[str, ...] = ("main",), push_error: str = ""):
        self.default, self.branches, self.push_error = default, branches, push_error

    async def default_branch(self) -> str:
        return self.default

    async def branch_exists(self, name: str) -> bool:
        return name in self.branches

    async def check_push_access(self) -> None:
        from fleet_tui.forge.base import ForgeError

        if self.push_error:
            raise ForgeError(self.push_error)


def _forge_access(tmp_path: Path, forge: object, base: str = "") -> list[tuple[str, str, str, str]]:
    import anyio

    from fleet_tui.config import FleetConfig, ForgeConfig
    from fleet_tui.doctor import Doctor

    config = FleetConfig(forge=ForgeConfig(kind="github", repo="octo/demo", base_branch=base),
                         approvers=["octo"])
    doctor = Doctor(config, None, tmp_path, tmp_path)
    doctor.results = []
    anyio.run(doctor.forge_access, forge)
    return [(c.name, c.status, c.detail, c.fix) for c in doctor.results]


def test_base_branch_and_push_access(tmp_path: Path) -> None:
    ok = _forge_access(tmp_path, FakeForge(default="trunk", branches=("trunk",)))
    assert ok[0][:2] == ("base branch", "ok") and ok[0][2].startswith("trunk (the repository's default branch")
    assert ok[1][:2] == ("push access", "ok")
    missing = _forge_access(tmp_path, FakeForge(), base="develop")
    assert missing[0][:3] == ("base branch", "fail", "develop does not exist on octo/demo")
    assert "set forge.base_branch to an existing branch" in missing[0][3]
    denied = _forge_access(tmp_path, FakeForge(push_error="the token cannot push to octo/demo"), base="main")
    assert denied[0][:2] == ("base branch", "ok")
    assert denied[1][:3] == ("push access", "fail", "the token cannot push to octo/demo")
    assert "Contents: read and write" in denied[1][3]


def test_a_forge_without_the_checks_is_skipped_not_passed(tmp_path: Path) -> None:
    rows = _forge_access(tmp_path, object())
    assert [(name, status) for name, status, *_ in rows] == [("base branch", "skip"), ("push access", "skip")]


def test_local_runner_without_bubblewrap_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    from fleet_tui import doctor as doctor_module
    from fleet_tui.config import parse_config

    repo = _repo(tmp_path / "repo")
    config = parse_config(LOCAL_SCRIPTED)
    for available, status in ((False, "warn"), (True, "ok")):
        monkeypatch.setattr(doctor_module, "_local_sandbox_available", lambda a=available: a)
        doctor = doctor_module.Doctor(config, None, repo, tmp_path / "state", fix=True)
        rows = {c.name: c for c in anyio.run(doctor.run)}
        assert rows["local sandbox"].status == status
    doctor = doctor_module.Doctor(config, None, repo, tmp_path / "state", fix=True)
    monkeypatch.setattr(doctor_module, "_local_sandbox_available", lambda: False)
    sandbox = {c.name: c for c in anyio.run(doctor.run)}["local sandbox"]
    assert "local runs are unsandboxed" in sandbox.detail and "bubblewrap" in sandbox.fix


@pytest.mark.docker
def test_missing_role_network_has_a_fix(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    repo = _repo(tmp_path / "repo")
    text = DOCKER_RUNNER.format(image="fleet-test:latest", dev="scripted")
    (repo / "fleet.toml").write_text(text.replace('[roles.qa]', 'network = "fleet-no-such-net"\n[roles.qa]'))
    result = check(repo, "--fix")
    assert result.returncode == 1
    assert "Docker network 'fleet-no-such-net' (dev runs) does not exist" in result.stdout
    assert "docker network create fleet-no-such-net" in result.stdout
    assert "roles.dev.network" in result.stdout


def test_usd_budget_with_an_unpriced_model_warns(tmp_path: Path) -> None:
    import anyio

    from fleet_tui.config import parse_config
    from fleet_tui.doctor import Doctor

    repo = _repo(tmp_path / "repo")
    text = ('[policy]\nbudget_day_usd = 20.0\n[runner]\nkind = "local"\n[roles.pm]\nengine = "builtin"\n'
            '[roles.dev]\nengine = "mine"\n[roles.qa]\nengine = "codex"\n'
            '[engines.mine]\nkind = "codex"\nmodel = "house-model-7"\n')
    rows = {c.name: c for c in anyio.run(Doctor(parse_config(text), None, repo, tmp_path / "s", fix=True).run)}
    warning = rows["engine mine prices"]
    assert warning.status == "warn" and "no price for model house-model-7" in warning.detail
    assert "price_input_per_mtok" in warning.fix
    assert "engine codex prices" not in rows  # the CLI default is priced by the table


# --- the model API, probed from a container on the runs' network ---------------------------------

def _api_check_rows(tmp_path: Path, network: str, port: int) -> dict[str, object]:
    import anyio

    from fleet_tui.config import parse_config
    from fleet_tui.doctor import Doctor

    repo = _repo(tmp_path / "repo")
    text = (DOCKER_RUNNER.format(image="fleet-test:latest", dev="house")
            + f'[engines.house]\nkind = "command"\ncommand = "true"\nbase_url = "http://127.0.0.1:{port}/v1"\n')
    text = text.replace('kind = "docker"\n', f'kind = "docker"\nnetwork = "{network}"\n')
    return {c.name: c for c in anyio.run(Doctor(parse_config(text), None, repo, tmp_path / "s", fix=True).run)}


def _probe_containers() -> list[object]:
    import docker
    from fleet_tui.doctor import CHECK_LABEL

    return docker.from_env(timeout=10).containers.list(all=True, filters={"label": CHECK_LABEL})


@pytest.mark.docker
def test_a_model_server_on_this_host_is_reached_on_the_host_network(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:  # listening is enough: the kernel accepts
        port = server.getsockname()[1]
        rows = _api_check_rows(tmp_path, "host", port)
    probe = rows[f"model API 127.0.0.1:{port}"]
    assert probe.status == "ok", probe  # type: ignore[attr-defined]
    assert "dev runs reach" in probe.detail and "'host'" in probe.detail  # type: ignore[attr-defined]
    assert not any(name.startswith("model API") for name in rows if name != f"model API 127.0.0.1:{port}"), \
        "scripted roles need no network and get no probe"
    assert _probe_containers() == []


@pytest.mark.docker
def test_no_network_cannot_reach_the_model_server_and_the_fix_says_what_to_set(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        rows = _api_check_rows(tmp_path, "none", port)
    probe = rows[f"model API 127.0.0.1:{port}"]
    assert probe.status == "fail" and probe.required  # type: ignore[attr-defined]
    assert f"the agents cannot reach 127.0.0.1:{port} on network 'none'" in probe.detail  # type: ignore[attr-defined]
    assert 'runner.network = "host"' in probe.fix  # type: ignore[attr-defined]
    assert _probe_containers() == []


def test_the_api_address_comes_from_base_url_else_the_vendor() -> None:
    from fleet_tui.config import EngineConfig
    from fleet_tui.doctor import api_address

    assert api_address(EngineConfig(kind="codex")) == ("api.openai.com", 443)
    assert api_address(EngineConfig(kind="aider")) == ("api.openai.com", 443)
    assert api_address(EngineConfig(kind="claude")) == ("api.anthropic.com", 443)
    assert api_address(EngineConfig(kind="codex", base_url="http://127.0.0.1:8000/v1")) == ("127.0.0.1", 8000)
    assert api_address(EngineConfig(kind="claude", base_url="https://llm.internal.example")) == \
        ("llm.internal.example", 443)
    assert api_address(EngineConfig(kind="command")) is None
    assert api_address(EngineConfig(kind="codex", base_url="http://host:notaport/v1")) is None


@pytest.mark.docker
def test_a_missing_image_skips_the_api_probe(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    import anyio

    from fleet_tui.config import parse_config
    from fleet_tui.doctor import Doctor

    repo = _repo(tmp_path / "repo")
    text = DOCKER_RUNNER.format(image="no-such-image:1", dev="codex")
    rows = {c.name: c for c in anyio.run(Doctor(parse_config(text), None, repo, tmp_path / "s", fix=True).run)}
    assert rows["model API"].status == "skip" and "image no-such-image:1 is missing" in rows["model API"].detail


@pytest.mark.docker
def test_nothing_listening_on_this_host_says_to_start_the_model_server(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed again before the probe: nothing listens there
    rows = _api_check_rows(tmp_path, "host", port)
    probe = rows[f"model API 127.0.0.1:{port}"]
    assert probe.status == "fail"  # type: ignore[attr-defined]
    assert "start the model server, or fix engines.house.base_url" in probe.fix  # type: ignore[attr-defined]


@pytest.mark.docker
def test_a_missing_network_is_reported_once_and_not_probed(tmp_path: Path) -> None:
    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    rows = _api_check_rows(tmp_path, "fleet-no-such-net", 9)
    assert rows["network fleet-no-such-net"].status == "fail"  # type: ignore[attr-defined]
    probe = rows["model API 127.0.0.1:9"]
    assert probe.status == "skip" and "does not exist (see above)" in probe.detail  # type: ignore[attr-defined]
