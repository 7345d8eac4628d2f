"""How long `fleet-tui --headless` takes to exit on SIGTERM while agents run, and whether they keep running.

A real `fleet-tui --headless` process on a local forge with one approved issue whose Dev run (the scripted
engine) sleeps for a minute, in the Docker runner (the test image `fleet-test:latest`, see
tests/docker/build-test-image.sh) and in the local runner. Once the run is live the process gets SIGTERM; the
figure is the time from the signal to the process's exit, and the run is checked to be still alive after it.
The next `--headless --once` re-attaches to it (not timed here). Containers are found by this benchmark's own
fleet instance and removed at the end.

Run: `python benchmarks/bench_quit.py [rounds]` (default 3; about a minute).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_tui.forge.local import LocalForge
from fleet_tui.git import git_sync
from fleet_tui.runners.base import fleet_instance_id
from fleet_tui.store import journal_dir

SCRIPT = {"dev": [{"print": "working"}, {"sleep": 60}, {"final": "done"}],
          "qa": {"default": [{"final": "VERDICT: pass"}]}, "pm": [{"final": "none"}]}


def project(root: Path, runner: str) -> tuple[Path, Path, Path]:
    repo = root / "project"
    repo.mkdir()
    git_sync("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# Project\n")
    git_sync("add", "-A", cwd=repo)
    git_sync("commit", "-q", "-m", "start", cwd=repo)
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPT))
    state = root / "state"
    config = root / "fleet.toml"
    command = "python3" if runner == "docker" else sys.executable
    config.write_text(
        f'state_dir = "{state}"\npoll_interval_s = 2\n[forge]\nkind = "local"\n'
        f'[engines.scripted]\nkind = "scripted"\ncommand = "{command}"\nscript = "{script}"\n'
        f'[runner]\nkind = "{runner}"\nimage = "fleet-test:latest"\nnetwork = "none"\nmemory = "256m"\n'
        '[roles.pm]\nengine = "scripted"\n[roles.dev]\nengine = "scripted"\n[roles.qa]\nengine = "scripted"\n')
    config.chmod(0o600)

    async def seed() -> None:
        async with LocalForge(repo) as forge:
            issue = await forge.create_issue("Slow work", "Take a minute.", ["proposed"])
            await forge.add_labels(issue.number, ["approved"], as_operator=True)

    anyio.run(seed)
    return repo, config, state


def one_round(runner: str) -> tuple[float, bool]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-quit-") as tmp:
        repo, config, state = project(Path(tmp), runner)
        instance = fleet_instance_id(str(repo.resolve()), journal_dir(state, str(repo.resolve())))
        proc = subprocess.Popen([sys.executable, "-m", "fleet_tui", "--config", str(config), "--repo", str(repo),
                                 "--headless"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 120
            for line in proc.stdout:
                record = json.loads(line)
                if record.get("event") == "RunLogLines" and "working" in " ".join(record.get("lines", [])):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the run never started")
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            took = time.perf_counter() - start
            alive = still_running(runner, instance, Path(tmp))
        finally:
            if proc.poll() is None:
                proc.kill()
            cleanup(runner, instance, Path(tmp))
        return took, alive


def still_running(runner: str, instance: str, root: Path) -> bool:
    if runner == "docker":
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=fleet.instance={instance}"],
                             capture_output=True, text=True, check=False).stdout
        return bool(out.strip())
    out = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def cleanup(runner: str, instance: str, root: Path) -> None:
    if runner == "docker":
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=fleet.instance={instance}"],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    else:
        subprocess.run(["pkill", "-KILL", "-f", str(root)], capture_output=True, check=False)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"SIGTERM to `fleet-tui --headless` with one live Dev run, {rounds} rounds per runner\n")
    print(f"{'runner':<8} {'exit after SIGTERM: median':>27} {'max':>8}  run still alive after")
    for runner in ("docker", "local"):
        results = [one_round(runner) for _ in range(rounds)]
        times = [t for t, _ in results]
        alive = sum(1 for _, a in results if a)
        print(f"{runner:<8} {statistics.median(times):>25.2f} s {max(times):>6.2f} s  {alive}/{rounds}")


if __name__ == "__main__":
    main()
