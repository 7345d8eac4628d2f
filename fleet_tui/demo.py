"""`fleet-tui --demo`: a small sample project in a temporary git repository, run by scripted agents on the
embedded local forge with the local runner. Needs nothing but the package."""

from __future__ import annotations

import getpass
import tempfile
from pathlib import Path

from fleet_tui.config import EngineConfig, FleetConfig, ForgeConfig, PolicyConfig, RoleConfig, RolesConfig, RunnerConfig
from fleet_tui.git import git_sync

SAMPLE_FILES: dict[str, str] = {
    "README.md": """\
# tasklist

A tiny command-line to-do list, used to show fleet-tui at work.

    python3 -m tasklist add "water the plants"
    python3 -m tasklist list

Tests: `python3 -m unittest -q`
""",
    "ROADMAP.md": """\
# Roadmap

- [x] add and list tasks
- [ ] mark a task as done
- [ ] remove a task
- [ ] show the number of open tasks
""",
    "tasklist/__init__.py": '"""A tiny to-do list."""\n',
    "tasklist/__main__.py": """\
import sys

from tasklist.core import main

sys.exit(main(sys.argv[1:]))
""",
    "tasklist/core.py": '''\
"""Tasks kept in a JSON file beside the current directory."""

import json
from pathlib import Path

STORE = Path("tasks.json")


def load() -> list[dict]:
    # TODO: report a clear error when tasks.json is not valid JSON
    return json.loads(STORE.read_text()) if STORE.exists() else []


def save(tasks: list[dict]) -> None:
    STORE.write_text(json.dumps(tasks, indent=2))


def add(title: str) -> dict:
    tasks = load()
    task = {"id": len(tasks) + 1, "title": title, "done": False}
    tasks.append(task)
    save(tasks)
    return task


def main(argv: list[str]) -> int:
    if argv[:1] == ["add"] and len(argv) == 2:
        print(add(argv[1])["id"])
        return 0
    if argv[:1] == ["list"]:
        for task in load():
            print(f"{task['id']:>3} [{'x' if task['done'] else ' '}] {task['title']}")
        return 0
    print("usage: tasklist add TITLE | list")
    return 2
''',
    "tests/__init__.py": "",
    "tests/test_core.py": '''\
import os
import tempfile
import unittest

from tasklist import core


class AddTest(unittest.TestCase):
    def setUp(self):
        self.old = os.getcwd()
        self.dir = tempfile.TemporaryDirectory()
        os.chdir(self.dir.name)

    def tearDown(self):
        os.chdir(self.old)
        self.dir.cleanup()

    def test_add_then_list(self):
        core.add("one")
        self.assertEqual([t["title"] for t in core.load()], ["one"])
''',
    ".gitignore": "tasks.json\n__pycache__/\n",
}


def create_sample_repo(path: Path) -> Path:
    """A git repository at `path` holding the sample project on branch main, one commit."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in SAMPLE_FILES.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    identity = {"GIT_AUTHOR_NAME": _user(), "GIT_AUTHOR_EMAIL": f"{_user()}@localhost",
                "GIT_COMMITTER_NAME": _user(), "GIT_COMMITTER_EMAIL": f"{_user()}@localhost"}
    git_sync("init", "-q", "-b", "main", cwd=path)
    git_sync("config", "user.name", _user(), cwd=path)
    git_sync("config", "user.email", f"{_user()}@localhost", cwd=path)
    git_sync("add", "-A", cwd=path)
    git_sync("commit", "-q", "-m", "tasklist: add and list tasks", cwd=path, env=identity)
    return path


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "operator"


def demo_config(repo: Path, state_dir: Path) -> FleetConfig:
    """Local forge on `repo`, local runner, scripted agents for every role, a short poll."""
    scripted = RoleConfig(engine="demo", timeout_s=120)
    return FleetConfig(
        forge=ForgeConfig(kind="local", repo=str(repo)),
        roles=RolesConfig(pm=scripted, dev=scripted.model_copy(update={"max_concurrent": 2}), qa=scripted),
        engines={"demo": EngineConfig(kind="scripted")},
        runner=RunnerConfig(kind="local"),
        policy=PolicyConfig(test_command="python3 -m unittest -q", max_open_proposals=3),
        poll_interval_s=2.0,
        state_dir=str(state_dir),
    )


DEMO_PREFIX = "fleet-demo-"
DEMO_KEEP_S = 24 * 3600  # a demo directory untouched for this long is removed by the next `--demo`


def demo_workdir() -> Path:
    """A fresh directory for this demo, after removing this user's demo directories left for over a day."""
    remove_old_demos(Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=DEMO_PREFIX))


def remove_old_demos(root: Path, *, now: float | None = None) -> list[Path]:
    """Remove `root`'s demo directories of this user where nothing changed for `DEMO_KEEP_S` (a demo that is
    still open keeps writing its journal, so it is never old). Returns what was removed."""
    import os
    import shutil
    import time

    now = time.time() if now is None else now
    removed = []
    for path in root.glob(DEMO_PREFIX + "*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            newest = max((p.stat().st_mtime for p in path.rglob("*") if not p.is_symlink()),
                         default=path.stat().st_mtime)
        except OSError:
            continue
        if now - max(newest, path.stat().st_mtime) > DEMO_KEEP_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
