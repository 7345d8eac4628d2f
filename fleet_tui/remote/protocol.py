"""The wire protocol between a served fleet and its attached consoles: frames, the hello, and the generic
codec that carries the model's events, intents' answers and reads.

Transport: a Unix stream socket (`fleet.sock` in the repository's journal directory), owned by the user,
mode 0600. Everything on it is a **frame**: a 4-byte big-endian length, then that many bytes of UTF-8 JSON
holding one object with a `"t"` (type) key. A frame longer than `MAX_FRAME` (1 MiB), or one that is not a
JSON object of a known type, ends that connection only; the fleet goes on serving everyone else.

Conversation (client = console, server = fleet):

1. client -> `{"t": "hello", "protocol": "fleet-tui", "version": 1, "console": "<id>", "user": "<login>"}`
2. server -> `{"t": "hello", "protocol": "fleet-tui", "version": 1, "repo": ..., "forge_kind": ...,
   "pid": ..., "package": "<fleet-tui version>"}`, or `{"t": "refused", "reason": "..."}` and it closes.
   A client of another version is refused with a message that names both versions; the client checks the
   server's version too, so either side upgraded first gives the same clear message.
3. client -> `{"t": "subscribe"}`: from then on the server sends `{"t": "event", "event": <value>}`
   for every fleet event (the latest snapshot first), and `{"t": "dropped", "lines": N}` whenever log lines
   were dropped for this connection (N counts since the connection opened).
4. client -> `{"t": "call", "id": 7, "method": "approve", "args": {"issue": 12}}`; the server answers
   `{"t": "result", "id": 7, "value": <value>}` or `{"t": "error", "id": 7, "message": "..."}`.
   Methods: the `FleetControl` intents and reads (see `METHODS`), plus `log_tail(run_id, lines)`.

A **value** is JSON with tagged objects: `{"$": "datetime", "v": iso}`, `{"$": "enum", "type": name,
"v": value}`, `{"$": "map", "v": [[key, value], ...]}`, and a dataclass as `{"$": "<ClassName>", <field>:
<value>, ...}`. Arrays decode as tuples. The dataclasses and enums allowed are those of `fleet_tui.model`,
`fleet_tui.control.Detail` and `fleet_tui.stats`, encoded by their fields, so a field added to a model type
travels without a protocol change. Decoding is strict: an unknown type, enum value or field refuses the
frame.

Each connection has a bounded outgoing queue (`EventQueue`): a console that stops reading never slows the
fleet. Unsent log lines of a run are merged into one batch that keeps the run's newest lines (older ones are
dropped and counted), so whatever follows a log flood waits behind at most one batch per run; a newer
snapshot replaces an unread older one. The protocol version changes whenever a frame or method changes meaning.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fleet_tui.model import RunChanged, RunLogLines, SnapshotPublished

PROTOCOL = "fleet-tui"
VERSION = 1
MAX_FRAME = 1 << 20  # bytes of JSON in one frame to the fleet
MAX_FRAME_FROM_FLEET = 32 << 20  # from the fleet: a snapshot of a large repository can pass 1 MiB
HEADER = struct.Struct(">I")
SOCKET_NAME = "fleet.sock"

# what a console may call, with the type of each argument (checked before the fleet sees them)
METHODS: dict[str, dict[str, tuple[type, ...]]] = {
    "approve": {"issue": (int,)},
    "reject": {"issue": (int,)},
    "stop_run": {"run_id": (str,)},
    "retry": {"issue": (int,)},
    "run_pm": {},
    "set_paused": {"paused": (bool,)},
    "merge": {"pr": (int,)},
    "detail": {"issue": (int, type(None)), "pr": (int, type(None))},
    "stats": {},
    "log_tail": {"run_id": (str,), "lines": (int,)},
}
INTENTS = frozenset({"approve", "reject", "stop_run", "retry", "run_pm", "set_paused", "merge"})


class ProtocolError(Exception):
    """A frame that breaks the protocol: the connection that sent it is closed."""


class Refused(Exception):
    """The other side refused this connection; `str()` is the message for the user."""


# --- frames ------------------------------------------------------------------------------------------


def pack(message: dict[str, Any], limit: int = MAX_FRAME) -> bytes:
    """One frame: the length, then the JSON. A message over `limit` bytes is a `ProtocolError`."""
    try:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"a message cannot be written: {exc}") from None
    if len(body) > limit:
        raise ProtocolError(f"a frame of {len(body)} bytes is over the limit of {limit}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """The length a frame's header announces; over `limit` is a `ProtocolError` (nothing more is read)."""
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise ProtocolError(f"a frame of {length} bytes is over the limit of {limit}")
    return int(length)


def unpack(body: bytes) -> dict[str, Any]:
    """The message of one frame's body: a JSON object with a string `t`."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"a frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError("a frame is not an object with a type")
    return message


def hello(**extra: Any) -> dict[str, Any]:
    return {"t": "hello", "protocol": PROTOCOL, "version": VERSION, **extra}


def version_problem(message: dict[str, Any], *, where: str, we: str) -> str:
    """Why a hello cannot be accepted (empty when it can). `where` names the fleet for the message."""
    if message.get("t") != "hello" or message.get("protocol") != PROTOCOL:
        return f"{where} does not speak the fleet-tui protocol"
    theirs = message.get("version")
    if theirs == VERSION:
        return ""
    fleet, console = (VERSION, theirs) if we == "fleet" else (theirs, VERSION)
    return (f"fleet at {where} speaks protocol {fleet!s}, this console {console!s}: upgrade fleet-tui so the "
            "fleet and the console run the same version")


# --- values ------------------------------------------------------------------------------------------


def _registry() -> tuple[dict[str, type], dict[str, type[enum.Enum]]]:
    from fleet_tui import control, model, stats

    classes: dict[str, type] = {}
    enums: dict[str, type[enum.Enum]] = {}
    for module in (model, control, stats):
        for name, obj in vars(module).items():
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            if dataclasses.is_dataclass(obj):
                classes[name] = obj
            elif issubclass(obj, enum.Enum):
                enums[name] = obj
    return classes, enums


_CLASSES: dict[str, type] = {}
_ENUMS: dict[str, type[enum.Enum]] = {}
_FIELDS: dict[type, frozenset[str]] = {}
_RESERVED = frozenset({"datetime", "enum", "map"})


def _types() -> tuple[dict[str, type], dict[str, type[enum.Enum]]]:
    if not _CLASSES:
        classes, enums = _registry()
        _ENUMS.update(enums)
        _CLASSES.update(classes)
    return _CLASSES, _ENUMS


def encode(value: Any) -> Any:
    """`value` as JSON-ready data (see the module docstring); anything else is a `ProtocolError`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):  # StrEnum is a str: keep its type
            return {"$": "enum", "type": type(value).__name__, "v": value.value}
        return value
    if isinstance(value, datetime):
        return {"$": "datetime", "v": value.isoformat()}
    if isinstance(value, enum.Enum):
        return {"$": "enum", "type": type(value).__name__, "v": value.value}
    if isinstance(value, (tuple, list)):
        if all(type(item) is str for item in value):  # log lines: the bulk of the traffic
            return list(value)
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {"$": "map", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        classes, _ = _types()
        name = type(value).__name__
        if classes.get(name) is not type(value):
            raise ProtocolError(f"{name} is not a type the protocol carries")
        out: dict[str, Any] = {"$": name}
        for item in dataclasses.fields(value):
            out[item.name] = encode(getattr(value, item.name))
        return out
    raise ProtocolError(f"{type(value).__name__} is not a type the protocol carries")


def decode(data: Any, depth: int = 0) -> Any:
    """The value `encode` made; strict: an unknown tag, type, enum value or field is a `ProtocolError`."""
    if depth > 64:
        raise ProtocolError("a value is nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        if all(type(item) is str for item in data):  # log lines: the bulk of the traffic
            return tuple(data)
        return tuple(decode(item, depth + 1) for item in data)
    if not isinstance(data, dict):
        raise ProtocolError(f"unexpected {type(data).__name__} in a value")
    tag = data.get("$")
    if not isinstance(tag, str):
        raise ProtocolError("an object in a value has no type tag")
    if tag == "datetime":
        try:
            return datetime.fromisoformat(data["v"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("a bad datetime in a value") from None
    classes, enums = _types()
    if tag == "enum":
        kind = enums.get(data.get("type"))  # type: ignore[arg-type]
        if kind is None:
            raise ProtocolError(f"unknown enum type {data.get('type')!r}")
        try:
            return kind(data.get("v"))
        except ValueError:
            raise ProtocolError(f"{data.get('v')!r} is not a {kind.__name__}") from None
    if tag == "map":
        pairs = data.get("v")
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ProtocolError("a bad map in a value")
        try:
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
        except TypeError:  # a key that cannot be hashed
            raise ProtocolError("a bad map key in a value") from None
    cls = classes.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown type {tag!r} in a value")
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = set(data) - names - {"$"}
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(sorted(unknown))} of {tag}")
    try:
        return cls(**{key: decode(value, depth + 1) for key, value in data.items() if key != "$"})
    except TypeError as exc:
        raise ProtocolError(f"a bad {tag}: {exc}") from None


def check_args(method: str, args: Any) -> dict[str, Any]:
    """The arguments of a call, checked against `METHODS`; a `ProtocolError` says what is wrong."""
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        raise ProtocolError(f"unknown method {method!r}")
    if not isinstance(args, dict) or set(args) - set(spec):
        raise ProtocolError(f"bad arguments for {method}")
    for name, allowed in spec.items():
        value = args.get(name)
        if name not in args and type(None) not in allowed:
            raise ProtocolError(f"{method} needs {name}")
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ProtocolError(f"{method}: {name} must be {' or '.join(t.__name__ for t in allowed)}")
    return dict(args)


# --- the bounded outgoing queue ------------------------------------------------------------------------


class _PendingLines:
    """The unsent log lines of one run: later batches join it, so a busy run is one item, not hundreds."""

    __slots__ = ("at", "lines", "run_id")

    def __init__(self, event: RunLogLines, max_lines: int) -> None:
        self.at = event.at
        self.run_id = event.run_id
        self.lines: deque[str] = deque(event.lines, maxlen=max_lines)


class EventQueue:
    """Events waiting for one reader, bounded so a slow reader costs the fleet nothing:

    - log lines of a run join that run's unsent batch, which keeps its newest `max_lines` lines (the older ones
      are dropped and counted in `dropped_lines`): however fast agents write, the queue holds one item per run,
      and what follows a log flood (a notice, an answer) waits behind at most one batch per run;
    - a new snapshot replaces an unread older one, so the latest snapshot always arrives;
    - past `limit` items, log batches go first, then run changes (the next snapshot carries them again);
      answers and notices are kept.
    """

    def __init__(self, limit: int = 1000, *, max_lines: int = 2000) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.max_lines = max_lines
        self.dropped_lines = 0
        self.dropped_events = 0
        self._pending: dict[str, _PendingLines] = {}

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: Any) -> None:
        if isinstance(item, RunLogLines):
            pending = self._pending.get(item.run_id)
            if pending is not None:
                overflow = len(pending.lines) + len(item.lines) - self.max_lines
                if overflow > 0:
                    self.dropped_lines += overflow
                pending.lines.extend(item.lines)
                return
            if len(item.lines) > self.max_lines:
                self.dropped_lines += len(item.lines) - self.max_lines
            item = self._pending[item.run_id] = _PendingLines(item, self.max_lines)
        elif isinstance(item, SnapshotPublished) and any(isinstance(e, SnapshotPublished) for e in self.items):
            self.items = deque(e for e in self.items if not isinstance(e, SnapshotPublished))
        self.items.append(item)
        if len(self.items) > self.limit:
            self._shed()

    def _shed(self) -> None:
        # down to three quarters of the bound at once, so a reader that stays stuck costs one pass per
        # quarter of the bound, not one per event
        target = self.limit * 3 // 4
        for kind in (_PendingLines, RunChanged):
            if len(self.items) <= target:
                return
            kept: deque[Any] = deque()
            excess = len(self.items) - target
            for item in self.items:
                if excess and isinstance(item, kind):
                    excess -= 1
                    if isinstance(item, _PendingLines):
                        self.dropped_lines += len(item.lines)
                        del self._pending[item.run_id]
                    else:
                        self.dropped_events += 1
                    continue
                kept.append(item)
            self.items = kept

    def take(self) -> Any:
        item = self.items.popleft()
        if isinstance(item, _PendingLines):
            del self._pending[item.run_id]
            return RunLogLines(at=item.at, run_id=item.run_id, lines=tuple(item.lines))
        return item

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.put(item)


__all__ = ["INTENTS", "MAX_FRAME", "MAX_FRAME_FROM_FLEET", "METHODS", "PROTOCOL", "SOCKET_NAME", "VERSION",
           "EventQueue", "ProtocolError", "Refused", "check_args", "decode", "encode", "frame_length", "hello", "pack", "unpack",
           "version_problem"]
