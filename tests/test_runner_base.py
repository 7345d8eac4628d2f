"""The fleet instance id: what every run carries so a fleet touches only its own runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_tui.runners.base import check_instance, fleet_instance_id


def test_the_instance_id_is_stable_short_and_tells_fleets_apart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    one = fleet_instance_id("octo/fleet", state)
    assert one == fleet_instance_id("octo/fleet", tmp_path / "state" / ".." / "state")  # same place, same id
    assert check_instance(one) == one and len(one) <= 16
    assert one != fleet_instance_id("octo/other", state)  # another repository
    assert one != fleet_instance_id("octo/fleet", tmp_path / "elsewhere")  # a second fleet of the same repo


@pytest.mark.parametrize("bad", ["", "a b", "x" * 64, "-leading", "a=b", "tab\t"])
def test_an_instance_id_that_cannot_be_a_label_or_file_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="fleet instance id"):
        check_instance(bad)
