"""Workspaces that travel: a run's files go into its sandbox as one tar archive and its scratch dir comes back
as another, so no runner needs a view of the orchestrator's disk (a remote Docker host, a Kubernetes pod, the
local engine alike).

In: `pack_run()` makes a tar of the run's clone as `workspace/` and its scratch dir as `fleet/`, owned by the
agent's uid:gid, to extract at `/` (the Engine API's archive upload, or `tar xf - -C /` through an exec).
Out: `unpack_scratch()` takes the tar of `/fleet` as the sandbox has it (the Engine API's archive download, or
`tar cf - -C / fleet`) and writes it into the host's scratch dir. The run's commits are in it as a git bundle
(`result.bundle`, made inside the sandbox by the commit wrapper) that the workspace manager fetches into its
trusted mirror: the host never runs git in a directory the agent had.

What comes back is untrusted: only regular files and directories are written, every name must stay inside the
scratch dir, and the whole is capped, so a hostile archive cannot write elsewhere, plant a link or fill the disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

WORKSPACE_DIR = "workspace"  # the clone, extracted at /workspace
SCRATCH_DIR = "fleet"  # the scratch dir, extracted at /fleet
RESULT_BUNDLE = "result.bundle"  # the run's branch as a git bundle, in the scratch dir
RESULT_HEAD = "result.head"  # the run's branch head sha (when the bundle would be empty: nothing new)
DEFAULT_LIMIT_BYTES = 2 * 1024**3  # the most a run's scratch dir may bring back
_SPOOL_BYTES = 16 * 1024**2  # archives up to this size stay in memory


class TransportError(Exception):
    """A run's archive could not be made, or what came back was refused."""


@contextlib.contextmanager
def pack_run(workspace: Path, scratch: Path, *, owner: tuple[int, int] | None) -> Iterator[IO[bytes]]:
    """A tar of `workspace` as `workspace/` and `scratch` as `fleet/`, every member owned by `owner`
    (uid, gid; None keeps the host's owners), rewound and ready to upload. Symbolic links inside the clone
    travel as links (a repository may hold them); nothing outside the two directories is read."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
        try:
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for source, name in ((Path(workspace), WORKSPACE_DIR), (Path(scratch), SCRATCH_DIR)):
                    if not source.is_dir():
                        raise TransportError(f"{source} is not a directory")
                    tar.add(source, arcname=name, recursive=True,
                            filter=lambda info: _owned(info, owner))
        except OSError as exc:
            raise TransportError(f"cannot pack the run's files: {exc}") from None
        spool.seek(0)
        yield spool  # type: ignore[misc]


def _owned(info: tarfile.TarInfo, owner: tuple[int, int] | None) -> tarfile.TarInfo | None:
    if not (info.isfile() or info.isdir() or info.issym()):
        return None  # sockets, fifos and devices have no place in a workspace
    if owner is not None:
        info.uid, info.gid = owner
        info.uname = info.gname = ""
    return info


def unpack_scratch(chunks: Iterable[bytes], scratch: Path, *, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
    """Write the tar stream `chunks` (members under `fleet/`) into `scratch`, replacing what is there with the
    sandbox's copy. Only regular files and directories are written; a member named outside `fleet/`, a link,
    a device or more than `limit_bytes` in all is refused (TransportError) and nothing is left half-written:
    the archive is unpacked beside `scratch` first and swapped in whole."""
    scratch = Path(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=scratch.parent))
    try:
        _extract(_ChunkReader(chunks, limit_bytes), staging, limit_bytes)
        received = staging / SCRATCH_DIR
        received.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(received, 0o755)
        old = scratch.with_name(scratch.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if scratch.exists():
            scratch.rename(old)
        received.rename(scratch)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(stream: IO[bytes], into: Path, limit_bytes: int) -> None:
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != SCRATCH_DIR:
                    raise TransportError(f"the run's archive holds {member.name!r}, outside {SCRATCH_DIR}/")
                target = into.joinpath(*path.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    continue  # links and specials are dropped: the scratch dir needs none
                total += member.size
                if total > limit_bytes:
                    raise TransportError(f"the run's scratch dir is larger than {limit_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with open(target, "xb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(target, 0o644 | (stat.S_IXUSR if member.mode & stat.S_IXUSR else 0))
    except tarfile.TarError as exc:
        raise TransportError(f"the run's archive is not a tar archive: {exc}") from None
    except FileExistsError as exc:
        raise TransportError(f"the run's archive holds {exc.filename!r} twice") from None


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterable of byte chunks (the engine's archive stream), capped at a limit
    (with room for tar headers) so an endless stream is cut off."""

    def __init__(self, chunks: Iterable[bytes], limit_bytes: int) -> None:
        self._chunks = iter(chunks)
        self._pending = b""
        self._read = 0
        self._cap = limit_bytes + limit_bytes // 8 + 1024 * 1024

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self._read += size
        if self._read > self._cap:
            raise TransportError("the run's archive is larger than the limit")
        return size

    def read(self, size: int = -1) -> bytes:  # tarfile's stream mode reads with sizes
        if size is None or size < 0:
            return self.readall()
        buffer = bytearray(size)
        got = self.readinto(buffer)
        return bytes(buffer[:got])
