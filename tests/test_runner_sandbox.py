"""The local runner's bubblewrap sandbox: what an agent run locally can no longer see or reach.

Each test that shows something is hidden also shows it is visible without the sandbox, so none can pass by
accident. Skipped where bwrap cannot run; under CI=true that is a failure instead.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import anyio
import pytest
from conftest import in_ci

from fleet_tui.engines.base import Invocation
from fleet_tui.model import Role
from fleet_tui.runners.base import RunSpec
from fleet_tui.runners.local import LocalRunner, RunnerError, local_sandbox_available

FORGE_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # token-shaped, not a real one


@pytest.fixture(scope="module")
def sandbox_ready() -> None:
    if not local_sandbox_available():
        reason = "bubblewrap (bwrap) is not installed or cannot create namespaces here"
        if in_ci():
            pytest.fail(f"sandbox tests must run under CI=true: {reason}")
        pytest.skip(reason)


def spec_for(tmp_path: Path, script: str, *, network: str = "none", env: dict[str, str] | None = None,
             run_id: str = "sandboxed") -> RunSpec:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    workspace.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    return RunSpec(run_id=run_id, role=Role.DEV, issue=1, invocation=Invocation(("sh", "-c", script), env=env or {}),
                   workspace=workspace, scratch=scratch, timeout_s=30, network=network)


async def run(runner: LocalRunner, spec: RunSpec) -> tuple[list[str], int]:
    handle = await runner.start(spec)
    code = await handle.wait()
    lines = [line async for line in handle.lines()]
    await runner.cleanup(spec.run_id)
    return lines, code


pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("sandbox_ready")]


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
async def test_the_orchestrators_environ_its_processes_and_the_operators_config_are_out_of_reach(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: str) -> None:
    config = Path(os.environ["HOME"]) / ".config" / "gh"
    config.mkdir(parents=True)
    (config / "hosts.yml").write_text(f"oauth_token: {FORGE_TOKEN}\n")
    monkeypatch.setenv("GH_TOKEN", FORGE_TOKEN)
    script = (f"cat /proc/{os.getpid()}/environ >/dev/null 2>&1 && echo environ-read || echo environ-denied; "
              f"cat {config}/hosts.yml 2>/dev/null || echo config-denied; "
              "env; echo \"pid1: $(tr '\\0' ' ' < /proc/1/cmdline)\"")
    lines, code = await run(LocalRunner(sandbox=sandbox), spec_for(tmp_path, script))  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert code == 0
    if sandbox == "bwrap":
        assert "environ-denied" in lines and "config-denied" in lines
        assert FORGE_TOKEN not in text
        assert re.match(r"pid1: \S*bwrap ", lines[-1])  # no view of the host's processes: pid 1 is the sandbox's
    else:  # the same probes do see the host: the checks above can fail
        assert "environ-read" in lines and f"oauth_token: {FORGE_TOKEN}" in lines
        assert not re.match(r"pid1: \S*bwrap ", lines[-1])
    assert "GH_TOKEN" not in text  # the environment is scrubbed with or without the sandbox


async def test_only_the_workspace_and_scratch_are_writable_and_no_host_socket_is_reachable(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    script = (f"touch {outside}/x 2>/dev/null && echo outside-written; touch /usr/x 2>/dev/null && echo usr-written; "
              "touch in-workspace && echo workspace-written; touch \"$HOME/in-scratch\" && echo scratch-written; "
              "test -S /var/run/docker.sock && echo docker-socket; test -S /run/docker.sock && echo docker-socket; "
              "echo done")
    lines, code = await run(LocalRunner(sandbox="bwrap"), spec_for(tmp_path, script))
    assert lines == ["workspace-written", "scratch-written", "done"] and code == 0
    assert (tmp_path / "ws" / "in-workspace").exists() and (tmp_path / "scratch" / "in-scratch").exists()
    assert not (outside / "x").exists()


async def test_a_run_without_network_has_only_loopback(tmp_path: Path) -> None:
    script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"
    lines, _ = await run(LocalRunner(sandbox="bwrap"), spec_for(tmp_path, script))
    assert lines == ["lo"]
    shared, _ = await run(LocalRunner(sandbox="bwrap"), spec_for(tmp_path, script, network="bridge", run_id="net"))
    assert len(shared) >= 1  # the host's interfaces: whatever they are, the same set as outside
    host = Path("/proc/net/dev").read_text().splitlines()[2:]
    assert sorted(shared) == sorted(line.split(":")[0].strip() for line in host)


async def test_the_sandbox_works_for_a_normal_user(tmp_path: Path) -> None:
    """The fleet may run as root (as here) or as a normal user: the same sandbox command works for both."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("runs the sandbox as another user, which needs root and setpriv")
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-sandbox-{os.getpid()}"
    try:
        for sub in ("ws", "scratch"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        for sub in ("ws", "scratch"):
            (base / sub).chmod(0o777)
        spec = RunSpec(run_id="as-user", role=Role.DEV, issue=1, workspace=base / "ws", scratch=base / "scratch",
                       invocation=Invocation(("sh", "-c", "id -u; touch ok; ls /proc | grep -c '^[0-9]'")),
                       timeout_s=30)
        argv = LocalRunner(sandbox="bwrap")._argv(spec)
        while "--ro-bind-try" in argv:  # root's own Python, shown to root's runs, is no concern of this user
            at = argv.index("--ro-bind-try")
            del argv[at:at + 3]
        done = await anyio.run_process(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                                       cwd=base / "ws", check=False)
        out = done.stdout.decode().split()
        assert done.returncode == 0, done.stderr.decode()
        assert out[0] == "65534" and (base / "ws" / "ok").exists()
        assert int(out[1]) <= 5  # only the sandbox's own: its init, sh, ls, grep
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_bwrap_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RunnerError, match="runner sandbox is bwrap, but bubblewrap is not installed"):
        LocalRunner(sandbox="bwrap")
    assert LocalRunner(sandbox="auto").sandboxed is False  # auto falls back to no sandbox
    with pytest.raises(ValueError, match="sandbox must be"):
        LocalRunner(sandbox="chroot")  # type: ignore[arg-type]


async def test_a_tool_tree_in_the_home_is_shown_read_only_and_a_loose_program_there_is_a_clear_error(
        tmp_path: Path) -> None:
    home = Path(os.environ["HOME"])
    tool = home / ".tools" / "versions" / "1.0" / "bin" / "agent"
    loose = home / "bin" / "agent"
    for program in (tool, loose):
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\necho agent ran; touch \"$0.written\" 2>/dev/null || echo read-only\n")
        program.chmod(0o755)
    spec = spec_for(tmp_path, "")
    runner = LocalRunner(sandbox="bwrap")
    tool_spec = RunSpec(**{**{f: getattr(spec, f) for f in spec.__slots__},  # type: ignore[attr-defined]
                           "invocation": Invocation((str(tool),))})
    lines, code = await run(runner, tool_spec)
    assert (lines, code) == (["agent ran", "read-only"], 0)
    loose_spec = RunSpec(**{**{f: getattr(spec, f) for f in spec.__slots__},  # type: ignore[attr-defined]
                            "invocation": Invocation((str(loose),))})
    with pytest.raises(RunnerError, match="which the local sandbox hides"):
        await runner.start(loose_spec)
    lines, _ = await run(LocalRunner(sandbox="bwrap", ro_paths=[loose.parent]), loose_spec)
    assert lines == ["agent ran", "read-only"]
