"""One fleet, many consoles: a served fleet and attached consoles (Pilot), the protocol's refusals (random,
oversized and malformed frames, another version), a slow reader that must not slow the fleet, and the socket's
ownership checks."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import start_blocking_portal
from fake_fleet import NOW, FakeFleet, sample_snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_tui.config import FleetConfig
from fleet_tui.control import Detail
from fleet_tui.model import AgentRun, Notice, Role, RunLogLines, RunState, SnapshotPublished, Usage
from fleet_tui.remote import UnsafeSocket, check_socket, lock_holder, socket_path
from fleet_tui.remote.client import RemoteFleet, open_connection
from fleet_tui.remote.daemon import running_fleet
from fleet_tui.remote.protocol import (
    MAX_FRAME,
    PROTOCOL,
    VERSION,
    EventQueue,
    ProtocolError,
    Refused,
    decode,
    encode,
    pack,
)
from fleet_tui.remote.server import FleetServer, serving
from fleet_tui.tui.app import FleetApp, make_app

SIZE = (120, 36)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    where = tmp_path / "journal"
    where.mkdir(mode=0o700)
    return where


async def until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    """Yield to the event loop until `condition()` holds (a bounded wait, not a sleep for a guessed time)."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


# --- blocking helpers for the fuzzing tests: the fleet serves in its own thread -------------------------


@contextmanager
def served_in_thread(control: Any, where: Path, **options: Any) -> Iterator[tuple[FleetServer, Any]]:
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
            serving(control, where, **options)) as server:
        yield server, portal


def raw_connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def read_frame(sock: socket.socket) -> dict[str, Any] | None:
    import json

    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    header = exactly(4)
    if header is None:
        return None
    body = exactly(struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body)


def say_hello(sock: socket.socket, version: int = VERSION) -> dict[str, Any] | None:
    sock.sendall(pack({"t": "hello", "protocol": PROTOCOL, "version": version, "console": "test"}))
    return read_frame(sock)


def still_serves(path: Path) -> None:
    """A well-behaved console is still answered, with the fleet's snapshot."""
    with raw_connect(path) as sock:
        assert say_hello(sock)["t"] == "hello"  # type: ignore[index]
        sock.sendall(pack({"t": "subscribe"}))
        event = read_frame(sock)
        assert event is not None and event["t"] == "event" and event["event"]["$"] == "SnapshotPublished"


def closed_by_fleet(sock: socket.socket) -> bool:
    """True when the fleet closed this connection (reads reach the end, or the connection was reset)."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# --- a real fleet: the demo's scripted agents on the local forge ------------------------------------------


@asynccontextmanager
async def headless_fleet(tmp_path: Path) -> AsyncIterator[Any]:
    """A fleet on the demo project, served on its socket, loop running, dispatch paused (the approve is what
    the test watches; no agent needs to run)."""
    from fleet_tui.demo import create_sample_repo, demo_config
    from fleet_tui.orchestrator import build_fleet

    repo = create_sample_repo(tmp_path / "tasklist")
    config = demo_config(repo, tmp_path / "state")
    async with build_fleet(config, repo_path=repo, state_dir=tmp_path / "state") as orchestrator:
        for title in ("Mark a task as done", "Remove a task"):
            await orchestrator.forge.create_issue(title, f"{title}: see ROADMAP.md", [config.labels.proposed])
        orchestrator.journal.set_kv("paused", True)
        async with serving(orchestrator, orchestrator.journal.dir), anyio.create_task_group() as tg:
            tg.start_soon(orchestrator.run)
            yield orchestrator
            await orchestrator.shutdown()


def console(path: Path, tmp_path: Path, name: str) -> tuple[FleetApp, RemoteFleet]:
    client = RemoteFleet(path, console=name)
    app = make_app(client, FleetConfig(), state_dir=tmp_path / name, theme_dir=tmp_path / name,
                   environ={"DISPLAY": ":0"}, platform="linux")
    return app, client


def proposal_numbers(app: FleetApp) -> set[int]:
    return set(app.proposals)


@pytest.mark.anyio
async def test_two_consoles_on_a_headless_fleet_see_one_approve_and_leave_it_running(tmp_path: Path) -> None:
    async with headless_fleet(tmp_path) as fleet:
        path = socket_path(fleet.journal.dir)
        first, first_client = console(path, tmp_path, "first")
        second, second_client = console(path, tmp_path, "second")
        async with first.run_test(size=SIZE) as one, second.run_test(size=SIZE) as two:
            await until(lambda: len(proposal_numbers(first)) == 2 and len(proposal_numbers(second)) == 2)
            assert first.header.extra.get("attached") == "attached"
            before = proposal_numbers(second)
            first.main.table("proposals").focus()
            await one.press("a")  # approve the selected row, in the first console
            await until(lambda: len(proposal_numbers(second)) == 1)  # ... seen in the second
            (target,) = before - proposal_numbers(second)
            assert target not in proposal_numbers(first)
            intents = [e.data for e in fleet.journal.recent_events(50, kind="operator_intent")]
            assert intents[-1]["action"] == "approve" and intents[-1]["issue"] == target
            assert intents[-1]["console"] == "first" and intents[-1]["user"]
            await one.press("q")
            await two.press("q")
            await until(lambda: first_client.state == second_client.state == "stopped")
        assert first_client.stopped_reason == "detached"
        # both consoles are gone; the fleet still runs and serves a third
        third = RemoteFleet(path, console="third")
        async with anyio.create_task_group() as tg:
            tg.start_soon(third.run)
            events = third.events()
            snapshot = await anext(events)
            assert isinstance(snapshot, SnapshotPublished)
            assert target not in {issue.number for issue in snapshot.proposals}
            detail = await third.detail(issue=target)
            assert detail.issue is not None and "approved" in detail.issue.labels
            await third.shutdown()
            await events.aclose()


# --- the protocol ---------------------------------------------------------------------------------------


def test_the_model_types_travel_by_their_fields() -> None:
    run = AgentRun(run_id="r1", role=Role.DEV, issue=3, state=RunState.RUNNING, usage=Usage(10, 5, 0, 0.25),
                   started_at=NOW)
    snapshot = replace(sample_snapshot(), runs=(run,))
    assert decode(encode(snapshot)) == snapshot
    detail = Detail(diffstat="1 file", diff="+x\n")
    assert decode(encode(detail)) == detail
    assert decode(encode({3: (1, 2), "k": None})) == {3: (1, 2), "k": None}


@pytest.mark.parametrize("value", [
    {"$": "Nope"},  # an unknown type
    {"$": "Notice", "level": "info", "at": {"$": "datetime", "v": "2026-01-01T00:00:00+00:00"}, "x": 1},  # field
    {"$": "enum", "type": "RunState", "v": "exploded"},  # an unknown enum value
    {"$": "enum", "type": "os", "v": "x"},
    {"plain": "object"},  # no tag
    {"$": "datetime", "v": "yesterday"},
    {"$": "map", "v": [[[1], 2]]},  # JSON arrays decode as tuples: hashable; a map of maps is not
    {"$": "map", "v": [[{"$": "map", "v": []}, 1]]},
])
def test_decoding_is_strict(value: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(value)
        decode({"$": "map", "v": [[value, 1]]})
        raise ProtocolError("only the first form was refused")


def test_a_console_of_another_version_is_refused_with_a_clear_message(state: Path) -> None:
    with served_in_thread(FakeFleet(), state) as (server, _portal):
        with raw_connect(server.path) as sock:
            answer = say_hello(sock, version=VERSION + 1)
            assert answer is not None and answer["t"] == "refused"
            assert answer["reason"] == (f"fleet at {server.path} speaks protocol {VERSION}, this console "
                                        f"{VERSION + 1}: upgrade fleet-tui so the fleet and the console run the "
                                        "same version")
            assert closed_by_fleet(sock)
        still_serves(server.path)


@pytest.mark.anyio
async def test_the_console_refuses_a_fleet_of_another_version(state: Path) -> None:
    """A newer fleet that does not refuse old consoles itself: the console sees the versions differ."""
    path = socket_path(state)
    listener = await anyio.create_unix_listener(path, mode=0o600)

    async def newer_fleet() -> None:
        async with await listener.accept() as stream:
            await stream.receive()
            await stream.send(pack({"t": "hello", "protocol": PROTOCOL, "version": VERSION + 1}))

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(newer_fleet)
        with pytest.raises(Refused) as refused:
            await open_connection(path, console="old", user="me")
    assert str(refused.value) == (f"fleet at {path} speaks protocol {VERSION + 1}, this console {VERSION}: "
                                  "upgrade fleet-tui so the fleet and the console run the same version")


def test_an_oversized_frame_closes_that_connection_only(state: Path) -> None:
    with served_in_thread(FakeFleet(), state) as (server, _portal), raw_connect(server.path) as sock:
        assert say_hello(sock)["t"] == "hello"  # type: ignore[index]
        sock.sendall(struct.pack(">I", MAX_FRAME + 1))  # announced only: the fleet must not wait for it
        assert closed_by_fleet(sock)
        still_serves(server.path)
        assert server.refused >= 1


@pytest.mark.parametrize("frame", [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"t": "call", "id": 1, "method": "os.system", "args": {}}',
    b'{"t": "call", "id": 1, "method": "approve", "args": {"issue": "12; rm -rf /"}}',
    b'{"t": "call", "id": 1, "method": "approve", "args": {"issue": true}}',
    b'{"t": "call", "method": "approve", "args": {"issue": 1}}',
    b'{"t": "launch"}',
    b"{" * 100_000,
])
def test_a_malformed_frame_closes_that_connection_and_the_fleet_serves_on(state: Path, frame: bytes) -> None:
    fake = FakeFleet()
    with served_in_thread(fake, state) as (server, _portal), raw_connect(server.path) as sock:
        assert say_hello(sock)["t"] == "hello"  # type: ignore[index]
        sock.sendall(struct.pack(">I", len(frame)) + frame)
        assert closed_by_fleet(sock)
        still_serves(server.path)
    assert fake.calls == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), hello_first=st.booleans())
def test_random_bytes_never_harm_the_fleet(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                           hello_first: bool) -> None:
    where = tmp_path_factory.mktemp("fuzz")
    os.chmod(where, 0o700)
    fake = FakeFleet()
    with served_in_thread(fake, where) as (server, _portal):
        with raw_connect(server.path) as sock:
            if hello_first:
                assert say_hello(sock)["t"] == "hello"  # type: ignore[index]
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the fleet may already have closed it
            closed_by_fleet(sock)
        still_serves(server.path)
        assert fake.calls == [] or all(name in {"approve", "reject", "stop_run", "retry", "run_pm", "set_paused",
                                                "merge", "detail", "stats"} for name, _ in fake.calls)


# --- a console that stops reading ------------------------------------------------------------------------


class FloodFleet(FakeFleet):
    """A fake whose events come from `publish_now()`, never waiting for anyone (as the orchestrator's)."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: list[tuple[list[Any], anyio.Event]] = []
        self.published = 0

    async def events(self) -> AsyncIterator[Any]:
        items: list[Any] = [self.snapshot]
        entry = (items, anyio.Event())
        self.subscribers.append(entry)
        while True:
            while items:
                yield items.pop(0)
            ready = anyio.Event()
            self.subscribers[self.subscribers.index(entry)] = entry = (items, ready)
            await ready.wait()

    def publish_now(self, event: Any) -> None:
        self.published += 1
        for items, ready in self.subscribers:
            items.append(event)
            ready.set()

    def backlog(self) -> int:
        return sum(len(items) for items, _ in self.subscribers)


@pytest.mark.anyio
async def test_a_console_that_stops_reading_never_slows_the_fleet(state: Path) -> None:
    fleet = FloodFleet()
    async with serving(fleet, state, queue_limit=200) as server:
        path = server.path
        reader = await anyio.connect_unix(str(path))
        await reader.send(pack({"t": "hello", "protocol": PROTOCOL, "version": VERSION, "console": "stuck"}))
        await reader.send(pack({"t": "subscribe"}))
        await until(lambda: fleet.subscribers)
        line = "x" * 200
        started = time.monotonic()
        for batch in range(3000):  # ~120 MB of log lines if they were all kept
            fleet.publish_now(RunLogLines(at=NOW, run_id=f"run-{batch % 8}", lines=(line,) * 200))
            if batch % 50 == 0:
                await anyio.lowlevel.checkpoint()  # the fleet yields now and then, as the orchestrator does
        publishing = time.monotonic() - started
        await until(lambda: fleet.backlog() == 0)  # the connection took every event at the fleet's pace
        (connection,) = server.connections
        assert len(connection.queue) <= 200
        assert connection.queue.dropped_lines > 0
        assert publishing < 5.0
        fleet.publish_now(Notice(at=NOW, message="still here"))  # kept: only log lines and run changes drop
        # the console reads again: it hears how many lines it lost, and the notice
        buffered = anyio.streams.buffered.BufferedByteReceiveStream(reader)
        seen_notice = dropped = 0
        with anyio.fail_after(30):
            while not (seen_notice and dropped):
                header = await buffered.receive_exactly(4)
                message = __import__("json").loads(await buffered.receive_exactly(struct.unpack(">I", header)[0]))
                if message["t"] == "dropped":
                    dropped = message["lines"]
                elif message["t"] == "event" and message["event"]["$"] == "Notice":
                    seen_notice = 1
        assert dropped > 0
        await reader.aclose()


def test_the_event_queue_keeps_a_runs_newest_lines_and_the_latest_snapshot() -> None:
    queue = EventQueue(limit=10, max_lines=5)
    first, latest = sample_snapshot(), replace(sample_snapshot(), at=datetime(2030, 1, 1, tzinfo=UTC))
    queue.put(first)
    for n in range(20):  # one busy run: its batches join, the newest 5 lines stay
        queue.put(RunLogLines(at=NOW, run_id="busy", lines=(f"{n}a", f"{n}b")))
    queue.put(Notice(at=NOW, message="kept"))
    queue.put(latest)
    assert queue.dropped_lines == 40 - 5
    items = [queue.take() for _ in range(len(queue))]
    assert items[0] == RunLogLines(at=NOW, run_id="busy", lines=("17b", "18a", "18b", "19a", "19b"))
    assert [i for i in items if isinstance(i, SnapshotPublished)] == [latest]
    assert any(isinstance(i, Notice) for i in items)


def test_past_its_bound_the_event_queue_drops_log_batches_before_anything_else() -> None:
    queue = EventQueue(limit=10, max_lines=100)
    for n in range(30):
        queue.put(RunLogLines(at=NOW, run_id=f"run-{n}", lines=("x", "y")))
        if n < 5:
            queue.put(Notice(at=NOW, message=f"notice {n}"))
    assert len(queue) <= 10 and queue.dropped_lines >= 2 * 20
    kept = [queue.take() for _ in range(len(queue))]
    assert [i.message for i in kept if isinstance(i, Notice)] == [f"notice {n}" for n in range(5)]


@pytest.mark.anyio
async def test_an_attached_console_shows_how_many_log_lines_it_lost(state: Path) -> None:
    from fleet_tui.tui.attach import attached_notes

    async with serving(FakeFleet(), state) as server:
        client = RemoteFleet(server.path)
        assert attached_notes(client) == {"attached": "attached"}
        client._dispatch({"t": "dropped", "lines": 1234})
        assert attached_notes(client) == {"attached": "attached", "dropped": "1,234 log lines dropped"}
    assert attached_notes(FakeFleet()) == {}


# --- the socket's ownership ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_socket_is_private_and_removed_when_the_fleet_stops(state: Path) -> None:
    async with serving(FakeFleet(), state) as server:
        info = os.lstat(server.path)
        assert info.st_mode & 0o777 == 0o600 and info.st_uid == os.geteuid()
        check_socket(server.path)
    assert not server.path.exists()


@pytest.mark.anyio
async def test_a_planted_file_or_an_open_directory_is_refused(state: Path) -> None:
    planted = socket_path(state)
    planted.write_text("not a socket")
    with pytest.raises(UnsafeSocket, match="is not a socket"):
        async with serving(FakeFleet(), state):
            pass
    assert planted.read_text() == "not a socket"  # left alone, not removed
    planted.unlink()
    async with serving(FakeFleet(), state) as server:
        os.chmod(state, 0o777)
        try:
            with pytest.raises(UnsafeSocket, match="writable by other users"):
                await open_connection(server.path, console="c", user="me")
        finally:
            os.chmod(state, 0o700)


@pytest.mark.anyio
async def test_a_long_state_path_still_serves(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    async with serving(FakeFleet(), deep) as server:
        assert len(str(server.path)) > 108
        _stream, _reader, answer = await open_connection(server.path, console="c", user="me")
        await _stream.aclose()
        assert answer["repo"] == "acme/widgets"


def test_a_running_fleet_is_found_by_its_lock_and_its_socket(tmp_path: Path) -> None:
    from fleet_tui.store import Journal

    where = tmp_path / "journal"
    assert running_fleet(where) is None
    journal = Journal.open(where, lock=True)
    try:
        assert lock_holder(where) == os.getpid()
        with served_in_thread(FakeFleet(), where):
            hello = running_fleet(where)
            assert hello is not None and hello["repo"] == "acme/widgets" and hello["version"] == VERSION
    finally:
        journal.close()
    assert lock_holder(where) is None and running_fleet(where) is None


@pytest.mark.anyio
async def test_an_attached_console_reads_a_runs_history_through_the_fleet(state: Path) -> None:
    log = state / "run-1.log"
    log.write_text("".join(f"line {n}\n" for n in range(50)))
    fake = FakeFleet()
    fake.log_files["run-1"] = log
    async with serving(fake, state) as server:
        client = RemoteFleet(server.path)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            assert await client.log_tail("run-1", 3) == ["line 47", "line 48", "line 49"]
            assert await client.log_tail("nope", 3) == []
            await client.approve(7)
            with pytest.raises(Exception, match="the forge said no"):
                fake.fail["retry"] = RuntimeError("the forge said no")
                await client.retry(7)
            await client.shutdown()
    assert fake.called("approve") == [7] and fake.called("retry") == [7]


# --- the command line: --attach, --socket, --detach's background fleet --------------------------------------


LOCAL_CONFIG = '[forge]\nkind = "local"\n\n[runner]\nkind = "local"\n\n[roles.pm]\nengine = "scripted"\n\n' \
               '[roles.dev]\nengine = "scripted"\n\n[roles.qa]\nengine = "scripted"\n'


def test_attach_without_a_running_fleet_says_so_in_one_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_tui.cli import main

    config = repo.parent / "fleet.toml"
    config.write_text(LOCAL_CONFIG)
    assert main(["--attach", "--config", str(config), "--repo", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [(f"fleet-tui: no fleet runs for {repo.name}: start one with `fleet-tui "
                                 "--headless` (or `fleet-tui --detach`)")]
    assert main(["--socket", str(repo.parent / "nothing.sock"), "--config", str(config)]) == 1
    assert capsys.readouterr().err.startswith("fleet-tui: ")


def test_a_socket_in_a_directory_others_can_write_is_refused_by_the_console(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_tui.cli import main

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    planted.bind(str(shared / "fleet.sock"))
    planted.listen(1)
    try:
        assert main(["--socket", str(shared / "fleet.sock")]) == 1
        assert "writable by other users: refusing its socket" in capsys.readouterr().err
    finally:
        planted.close()


def test_a_background_fleet_outlives_its_consoles(repo: Path, tmp_path: Path) -> None:
    """`--detach`'s daemon: a real `fleet-tui --headless` process, attached to, detached from, still serving."""
    import signal

    from fleet_tui.config import load_config
    from fleet_tui.remote.daemon import journal_for, start_daemon

    config_path = tmp_path / "fleet.toml"
    # a short poll: a SIGTERM that lands during a tick is acted on only at the next poll
    config_path.write_text(f'state_dir = "{tmp_path / "state"}"\npoll_interval_s = 1\n\n' + LOCAL_CONFIG)
    config = load_config(config_path)
    where = journal_for(config, repo, tmp_path / "state")
    pid = start_daemon(["--config", str(config_path), "--repo", str(repo)], where, cwd=repo)
    try:
        assert lock_holder(where) == pid

        async def attach_and_leave(name: str) -> str:
            client = RemoteFleet(socket_path(where), console=name)
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.run)
                events = client.events()
                assert isinstance(await anext(events), SnapshotPublished)
                await client.set_paused(True)
                await client.shutdown()
                await events.aclose()
            return client.repo

        assert anyio.run(attach_and_leave, "one") == repo.name
        assert anyio.run(attach_and_leave, "two") == repo.name  # the first console's quit left it running
        hello = running_fleet(where)
        assert hello is not None and hello["pid"] == pid
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120  # generous: a loaded machine can make a tick slow to finish
        while lock_holder(where) is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for another process to exit: no event to wait on
        if lock_holder(where) is not None:
            os.kill(pid, signal.SIGKILL)  # never leave a fleet process behind a failed test
    errors = (where / "daemon.err").read_text(errors="replace")[-2000:]
    assert not socket_path(where).exists(), f"the fleet did not clean up its socket; its stderr: {errors}"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["$", "v", "type", "at", "run_id", "lines", "level", "x"]), inner,
                        max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value=JSON | st.fixed_dictionaries({"$": st.sampled_from(["RunLogLines", "Notice", "AgentRun", "enum",
                                                                  "map", "datetime", "Detail"])}, optional={
    "v": JSON, "type": st.sampled_from(["RunState", "Role", "x"]), "run_id": JSON, "lines": JSON, "at": JSON}))
def test_decoding_any_json_refuses_or_builds_a_model_value(value: Any) -> None:
    try:
        decode(value)
    except ProtocolError:
        pass


# --- the console's detach key: a hosting console hands its fleet to a background process --------------------


class AttachedFake(FakeFleet):
    attached = True
    dropped_lines = 0


@pytest.mark.anyio
async def test_the_detach_key_hands_the_fleet_over_and_stays_attached(tmp_path: Path) -> None:
    hosting, background = FakeFleet(), AttachedFake()
    started: list[str] = []

    def start() -> AttachedFake:
        started.append("daemon")
        return background

    app = make_app(hosting, FleetConfig(), state_dir=tmp_path, theme_dir=tmp_path, environ={"DISPLAY": ":0"},
                   platform="linux", hand_off=start)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and hosting.running)
        await pilot.press("D")
        await until(lambda: app.control is background and background.running)
        assert started == ["daemon"] and ("shutdown", None) in hosting.calls
        assert app.header.extra.get("attached") == "attached"
        await pilot.press("D")  # attached now: nothing more to hand over
        await pilot.press("a")
        await until(lambda: background.called("approve"))
        assert hosting.called("approve") == []
        await pilot.press("q")
    assert started == ["daemon"] and ("shutdown", None) in background.calls


@pytest.mark.anyio
async def test_a_failed_hand_over_keeps_hosting(tmp_path: Path) -> None:
    from fleet_tui.control import DeferredFleet

    class Rerunnable(FakeFleet):
        async def run(self) -> None:
            self._stop = asyncio.Event()
            await super().run()

    inner = Rerunnable()

    @asynccontextmanager
    async def factory() -> AsyncIterator[FakeFleet]:
        yield inner

    hosting = DeferredFleet(factory, repo="acme/widgets", forge_kind="github")

    def start() -> Any:
        raise RuntimeError("the background fleet exited with code 2 before serving")

    app = make_app(hosting, FleetConfig(), state_dir=tmp_path, theme_dir=tmp_path, environ={"DISPLAY": ":0"},
                   platform="linux", hand_off=start)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.snapshot is not None and hosting.state == "running")
        await pilot.press("D")
        await until(lambda: any("exited with code 2" in error for error in app.errors))
        await until(lambda: hosting.state == "running" and inner.running)  # hosting again
        assert app.control is hosting
