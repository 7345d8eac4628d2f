"""Workspaces that travel: the archive a run's files go in as, and the scratch dir that comes back."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from fleet_tui.runners.transport import TransportError, pack_run, unpack_scratch


def chunks(data: bytes, size: int = 7000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def archive(*members: tuple[str, bytes | str | None]) -> bytes:
    """A tar of (name, content): bytes is a file, a str is a symlink's target, None a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_a_run_goes_in_as_one_archive_owned_by_the_agent(tmp_path: Path) -> None:
    workspace, scratch = tmp_path / "repo", tmp_path / "scratch"
    (workspace / ".git").mkdir(parents=True)
    (workspace / "app.py").write_text("print('hi')\n")
    (workspace / "link").symlink_to("app.py")
    os.mkfifo(workspace / "pipe")
    scratch.mkdir()
    (scratch / "prompt.md").write_text("do it")
    with pack_run(workspace, scratch, owner=(1000, 1000)) as packed, tarfile.open(fileobj=packed) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {"workspace", "workspace/app.py", "workspace/.git", "workspace/link", "fleet", "fleet/prompt.md"} == set(members)
    assert members["workspace/link"].issym() and members["workspace/link"].linkname == "app.py"
    assert all((m.uid, m.gid) == (1000, 1000) for m in members.values())  # the fifo stayed behind


def test_the_scratch_dir_comes_back_whole_and_replaces_the_hosts_copy(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "prompt.md").write_text("old")
    data = archive(("fleet", None), ("fleet/prompt.md", b"new"), ("fleet/out/last.txt", b"done"),
                   ("fleet/result.bundle", b"# v2 git bundle\n"))
    unpack_scratch(chunks(data), scratch)
    assert (scratch / "prompt.md").read_text() == "new"
    assert (scratch / "out" / "last.txt").read_text() == "done"
    assert (scratch / "result.bundle").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]  # no staging left behind


@pytest.mark.parametrize("members, why", [
    ((("fleet/../../evil", b"x"),), "outside"),
    ((("/etc/evil", b"x"),), "outside"),
    ((("workspace/evil", b"x"),), "outside"),
    ((("fleet/a", b"1"), ("fleet/a", b"2")), "twice"),
])
def test_a_hostile_archive_is_refused_and_the_hosts_scratch_is_untouched(tmp_path: Path, members, why) -> None:  # type: ignore[no-untyped-def]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "prompt.md").write_text("mine")
    with pytest.raises(TransportError, match=why):
        unpack_scratch(chunks(archive(*members)), scratch)
    assert [p.name for p in scratch.iterdir()] == ["prompt.md"]
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]


def test_links_and_specials_never_come_back(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    unpack_scratch(chunks(archive(("fleet/result.head", "/etc/passwd"), ("fleet/ok.txt", b"fine"))), scratch)
    assert [p.name for p in scratch.iterdir()] == ["ok.txt"]


def test_an_oversized_or_endless_scratch_dir_is_cut_off(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    with pytest.raises(TransportError, match="larger than"):
        unpack_scratch(chunks(archive(("fleet/big", b"x" * 50_000))), scratch, limit_bytes=10_000)

    def endless():  # type: ignore[no-untyped-def]
        info = tarfile.TarInfo("fleet/huge")
        info.size = 10**12  # a header that promises a terabyte, then data that never ends
        yield info.tobuf()
        while True:
            yield b"x" * 65536

    with pytest.raises(TransportError):
        unpack_scratch(endless(), scratch, limit_bytes=10_000)
    assert not scratch.exists()


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="not a tar archive"):
        unpack_scratch([b"this is not a tar archive at all" * 40], tmp_path / "scratch")
