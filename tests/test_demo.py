"""The demo's housekeeping: directories left by old demos are removed, open or recent ones are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fleet_tui.demo import DEMO_KEEP_S, remove_old_demos


def _age(path: Path, seconds: float) -> None:
    moment = time.time() - seconds
    for item in [path, *path.rglob("*")]:
        os.utime(item, (moment, moment))


def test_only_demo_directories_untouched_for_a_day_are_removed(tmp_path: Path) -> None:
    old = tmp_path / "fleet-demo-old"
    (old / "repo").mkdir(parents=True)
    (old / "repo" / "README.md").write_text("x")
    _age(old, DEMO_KEEP_S + 60)
    open_one = tmp_path / "fleet-demo-open"
    (open_one / "state").mkdir(parents=True)
    (open_one / "state" / "journal.db").write_text("x")
    _age(open_one, DEMO_KEEP_S + 60)
    (open_one / "state" / "journal.db").write_text("still written")  # a demo still running keeps writing
    other = tmp_path / "not-a-demo"
    other.mkdir()
    _age(other, DEMO_KEEP_S + 60)

    assert remove_old_demos(tmp_path) == [old]
    assert not old.exists() and open_one.exists() and other.exists()
