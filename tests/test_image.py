"""`fleet-tui image build`: the packaged Dockerfile, the plan for the configured engines, the wheel that ships
both files, and an offline build on the real Docker engine."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from fleet_tui.config import parse_config
from fleet_tui.image import BuildPlan, ImageError, describe, engines_for, packaged_file, plan_for

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path, exe: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(exe or [sys.executable, "-m", "fleet_tui"]), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ}, timeout=600)


def test_engines_come_from_the_roles() -> None:
    config = parse_config('[roles.pm]\nengine = "builtin"\n[roles.dev]\nengine = "fast"\n[roles.qa]\n'
                          'engine = "claude"\n[engines.fast]\nkind = "codex"\nmodel = "gpt-5.5"\n')
    assert engines_for(config) == ("codex", "claude")
    assert engines_for(parse_config('[roles.pm]\nengine = "scripted"\n[roles.dev]\nengine = "scripted"\n'
                                    '[roles.qa]\nengine = "scripted"\n')) == ()
    plan = plan_for(config, versions={"codex": "0.169.0"})
    assert plan.tag == "fleet-agent:latest"
    assert plan.build_args() == {"ENGINES": "codex claude", "CODEX_VERSION": "0.169.0"}
    with pytest.raises(ImageError, match="cannot put gemini in the image"):
        plan_for(config, engines=["gemini"])


def test_dry_run_names_the_packaged_files(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('[runner]\nimage = "agents:7"\n[roles.qa]\nengine = "aider"\n')
    result = run("image", "build", "--dry-run", "--offline", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "image:      agents:7" in result.stdout and "engines:    codex, aider" in result.stdout
    assert str(packaged_file("Dockerfile")) in result.stdout
    assert "npm @openai/codex" in result.stdout and "PyPI aider-chat" in result.stdout
    text = describe(BuildPlan(tag="x", engines=("claude",)), offline=False)
    assert "ENGINES='claude'" in text


def test_the_dockerfile_installs_only_the_chosen_engines() -> None:
    text = packaged_file("Dockerfile").read_text()
    assert "ARG ENGINES=" in text and '*" codex "*' in text and '*" aider "*' in text


def test_offline_without_the_host_tools_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text("")
    env_path = tmp_path / "bin"
    env_path.mkdir()
    result = subprocess.run([sys.executable, "-m", "fleet_tui", "image", "build", "--offline"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PATH": str(env_path)}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("fleet-tui: --offline needs apt-get, apt-cache, dpkg-deb, npm on this machine")


@pytest.mark.slow
def test_the_wheel_ships_the_dockerfile_and_the_example(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("fleet_tui-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"fleet_tui/_data/Dockerfile", "fleet_tui/_data/fleet.toml.example"} <= set(names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    exe = [str(env_dir / "bin" / "fleet-tui")]
    dockerfile = run("image", "build", "--print-dockerfile", cwd=outside, exe=exe)
    assert dockerfile.returncode == 0, dockerfile.stderr
    assert dockerfile.stdout == (ROOT / "docker" / "Dockerfile").read_text()
    example = run("init", "--print-example", cwd=outside, exe=exe)
    assert example.returncode == 0, example.stderr
    assert example.stdout == (ROOT / "fleet.toml.example").read_text()


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.slow
@pytest.mark.docker
def test_offline_build_makes_an_image_that_runs_codex(tmp_path: Path) -> None:
    """Debian packages and the Codex CLI from npm, no image registry; about 75 s on a 2-core machine."""
    import shutil

    if not _docker_reachable():
        pytest.skip("no reachable Docker engine")
    if not all(shutil.which(tool) for tool in ("apt-get", "apt-cache", "dpkg-deb", "npm")):
        pytest.skip("the offline build needs apt and npm on the host")
    if not list(Path("/var/lib/apt/lists").glob("*Packages*")):
        pytest.skip("apt's package lists are empty (run apt-get update)")
    import docker

    tag = f"fleet-image-test-{os.getpid()}:offline"
    (tmp_path / "fleet.toml").write_text(f'[runner]\nimage = "{tag}"\n[roles.pm]\nengine = "builtin"\n')
    client = docker.from_env()
    try:
        result = run("image", "build", "--offline", "--codex-version", "0.169.0", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "downloading" in result.stderr and "npm install @openai/codex@0.169.0" in result.stderr
        assert "codex-cli 0.169.0" in result.stderr and f"built {tag}" in result.stdout
        out = client.containers.run(tag, ["sh", "-c", "id -u && git config --system safe.directory && "
                                          "test -s /etc/ssl/certs/ca-certificates.crt && echo certs"],
                                    remove=True, network_mode="none")
        assert out.decode().split() == ["1000", "*", "certs"]
    finally:
        try:
            client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def test_build_with_docker_unreachable_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text("")
    result = subprocess.run([sys.executable, "-m", "fleet_tui", "image", "build"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "DOCKER_HOST": "tcp://127.0.0.1:9"}, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("fleet-tui: cannot reach the Docker engine at tcp://127.0.0.1:9")
    assert "Traceback" not in result.stderr
