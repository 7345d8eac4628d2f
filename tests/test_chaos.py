"""Chaos: the orchestrator as a real `fleet-tui --headless` process, killed with SIGKILL at 30 random (seeded)
moments while it works on 10 approved issues, restarted each time, then run with `--once` to the end.

Afterwards every issue has exactly one PR that passed QA, no comment or review was posted twice (every
marker is unique), every run in the journal has ended (none live), and no process of any run is left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from fleet_tui.forge.local import LocalForge
from fleet_tui.git import git_sync
from fleet_tui.model import RunState
from fleet_tui.store import Journal, journal_dir

SEED = 20261125
KILLS = 30
ISSUES = 10
FINISH_LIMIT_S = 150
SCRIPT = {
    "dev": [
        {"print": "working on {issue} round {round}"},
        {"sleep": 0.6},
        {"write": "notes/{issue}.md", "content": "# {title}\nround {round}\n"},
        {"commit": "#{issue}: {title} (round {round})"},
        {"usage": {"input_tokens": 10, "output_tokens": 1, "cost_usd": 0.001}},
        {"final": "done"},
    ],
    "qa": {
        "1": [{"sleep": 0.3}, {"final": "Not yet.\n\nVERDICT: changes\n\n- say how it was tested\n"}],
        "default": [{"sleep": 0.3}, {"final": "Good.\n\nVERDICT: pass\n"}],
    },
}
_MARKER_RE = re.compile(r"<!-- fleet:[^>]*-->")


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(repository, fleet.toml, state dir) with ten issues approved by the operator."""
    repo = tmp_path / "project"
    repo.mkdir()
    git_sync("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# Project\n")
    git_sync("add", "-A", cwd=repo)
    git_sync("commit", "-q", "-m", "start", cwd=repo)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    state = tmp_path / "state"
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'state_dir = "{state}"\npoll_interval_s = 2\n'
        '[forge]\nkind = "local"\n'
        f'[engines.scripted]\nkind = "scripted"\ncommand = "{sys.executable}"\nscript = "{script}"\n'
        '[runner]\nkind = "local"\n[roles.pm]\nengine = "scripted"\n'
        '[roles.dev]\nengine = "scripted"\nmax_concurrent = 4\n[roles.qa]\nengine = "scripted"\nmax_concurrent = 2\n'
        '[policy]\nmax_live_runs = 6\ntest_command = "sleep 0.2 && test -d notes"\n'
    )

    async def seed() -> None:
        async with LocalForge(repo) as forge:
            for n in range(ISSUES):
                created = await forge.create_issue(f"Chaos task {n}", f"Do task {n}.", ["proposed"])
                await forge.add_labels(created.number, ["approved"], as_operator=True)

    anyio.run(seed)
    return repo, config, state


def start(repo: Path, config: Path, log: Path, *, once: bool = False) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "fleet_tui", "--config", str(config), "--repo", str(repo), "--headless"]
    with log.open("ab") as out:
        return subprocess.Popen([*argv, *(["--once"] if once else [])], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def leftovers(root: Path) -> list[str]:
    """Processes (other than this one) whose command line, working dir or HOME lies under `root`."""
    found = []
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if needle in cmdline or needle in cwd or any(
                item.startswith(b"HOME=") and needle in item for item in environ.split(b"\0")):
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{entry.name}: {shown}")
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover processes")
def test_sigkill_at_thirty_random_moments_loses_and_repeats_nothing(tmp_path: Path,
                                                                    project: tuple[Path, Path, Path]) -> None:
    repo, config, state = project
    rng = random.Random(SEED)
    log = tmp_path / "headless.log"
    for _ in range(KILLS):
        running = log.read_bytes().count(b'"LoopState", "state": "running"') if log.exists() else 0
        proc = start(repo, config, log)
        # the moment of the kill counts from the loop running (start-up time varies with the machine's load),
        # bounded, never a wait for work
        deadline = time.monotonic() + 20
        while (proc.poll() is None and time.monotonic() < deadline
               and log.read_bytes().count(b'"LoopState", "state": "running"') <= running):
            time.sleep(0.02)
        try:
            proc.wait(timeout=rng.uniform(0.3, 2.8))
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    final = start(repo, config, log, once=True)
    try:
        final.wait(timeout=FINISH_LIMIT_S)
    except subprocess.TimeoutExpired:
        final.kill()
        final.wait()
        pytest.fail("the final --once run did not finish: " + log.read_text(errors="replace")[-3000:])
    assert final.returncode == 0, log.read_text(errors="replace")[-3000:]

    async def read_forge() -> tuple[list, list, list]:
        async with LocalForge(repo) as forge:
            issues = [await forge.get_issue(i.number) for i in await forge.list_issues(state="all")]
            pulls = [await forge.get_pull(p.number) for p in await forge.list_pulls()]
            closed = await forge._db(lambda conn: conn.execute(
                "SELECT number FROM items WHERE is_pull = 1 AND state != 'open'").fetchall(), write=False)
            return issues, pulls, closed

    journal = Journal.open(journal_dir(state, str(repo.resolve())), lock=False)
    try:
        runs = journal.runs()
    finally:
        journal.close()
    # why runs ended other than succeeded: what a failure below needs to be understood
    why = [(r.run_id, r.state.value, r.reason) for r in runs if r.state != RunState.SUCCEEDED]

    issues, pulls, closed_pulls = anyio.run(read_forge)
    assert len(issues) == ISSUES and closed_pulls == []
    by_issue: dict[int, list] = {}
    for pull in pulls:
        match = re.search(r"<!-- fleet:issue=(\d+) -->", pull.body)
        assert match, pull.body
        by_issue.setdefault(int(match.group(1)), []).append(pull)
    missing = {i.number: (i.labels, [c.body[-160:] for c in i.comments][-2:]) for i in issues if i.number not in by_issue}
    assert not missing, (missing, why)
    assert all(len(found) == 1 for found in by_issue.values()), {n: [p.number for p in v] for n, v in by_issue.items()}
    for issue in issues:
        assert "fleet:needs-human" not in issue.labels, ([c.body for c in issue.comments][-1:], why)
        [pull] = by_issue[issue.number]
        last = pull.reviews[-1]
        assert "<!-- fleet:verdict=pass" in last.body and last.commit_id == pull.head_sha

    bodies = [c.body for i in issues for c in i.comments] + [r.body for p in pulls for r in p.reviews]
    markers = [" ".join(_MARKER_RE.findall(body)) for body in bodies]
    assert all(markers), "every comment and review the fleet wrote carries a marker"
    assert len(markers) == len(set(markers)), [m for m in markers if markers.count(m) > 1]
    assert sum("fleet:claim=" in m for m in markers) == ISSUES

    assert runs and not [r.run_id for r in runs if r.state.live]
    odd = [(r.run_id, r.state, r.reason) for r in runs if r.state not in (RunState.SUCCEEDED, RunState.LOST)]
    assert not odd, odd
    lost = [r for r in runs if r.state == RunState.LOST]
    assert lost, "no kill landed while a run was live: the test proves nothing"
    assert all("orchestrator started" in r.reason for r in lost), [(r.run_id, r.reason) for r in lost]

    deadline = time.monotonic() + 10
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)  # a git child of the last process may still be closing
    assert leftovers(tmp_path) == []
