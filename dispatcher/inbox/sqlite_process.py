"""The SQLite inbox's writer process: every write of one store, group-committed.

Why a process. Running the statements on the event loop cost about a third of a
queued request's time on the loop (measured under load), and on a thread they waited
for the GIL after every statement. In a process of its own they run beside the
receiver on another core, and the receiver only encodes each write (``marshal``) and
reads the answers back.

What it does. It reads frames of operations from stdin (each frame: the operations a
receiver queued during one turn of its event loop, at most ``sqlite_writer.FRAME_OPS``),
takes every frame that has arrived, up to ``batch_size`` operations, and runs them as
one transaction: one ``COMMIT``, one fsync of the WAL. Then it writes one answer frame:
for each frame it took, the results of its operations in their order. It reads stdin
itself, between batches, not on a thread of its own: a thread waiting on the pipe had
to be woken for every frame, and the wake-up was most of what a frame cost the
receiver. Frames that come while a batch runs wait in the pipe, and the receiver's
side never blocks on a full one (``sqlite_writer._Outlet``).
An operation is answered only after the transaction holding it committed, so
acknowledged means durable. If one operation fails, the batch runs again with each
operation in a savepoint of its own, so only that one fails.

Its life. It ignores SIGINT and SIGTERM (a terminal's Ctrl-C or a supervisor's TERM
reach the whole process group, and the receiver must still be able to write during its
graceful shutdown), and exits when stdin closes: when the store closes, or when the
receiver died, whatever killed it. A transaction it was in then still commits or rolls
back as a whole.

Frames are a 4-byte little-endian length and a ``marshal`` payload, both ways: the
receiver sends (frame id, [Op, ...]) and gets back (commits so far, [(frame id,
[Result, ...]), ...]); on starting, the process sends one Result, ready or not.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import sqlite3
import struct
import sys
import types
from itertools import chain
from pathlib import Path
from typing import Any

LENGTH = struct.Struct("<I")
#: How much of a pipe one read takes: every frame there, as a rule.
READ_SIZE = 1 << 18

#: (op name, grouped?, argument)
Op = tuple[str, bool, Any]
#: (ok?, the op's result, or (error kind, error arguments))
Result = tuple[bool, Any]
#: (frame id, its ops)
Frame = tuple[int, list[Op]]


def encode_frame(value: Any) -> bytes:
    data = marshal.dumps(value)
    return LENGTH.pack(len(data)) + data


def write_frame(fd: int, value: Any) -> None:
    """Write a frame to a blocking ``fd``."""
    view = memoryview(encode_frame(value))
    while view:
        view = view[os.write(fd, view) :]


def read_available(fd: int, buffer: bytearray) -> tuple[bool, bool]:
    """Append what the non-blocking ``fd`` holds to ``buffer``, without waiting: whether
    anything came, and whether the other side closed the pipe."""
    got = False
    while True:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return got, False
        except OSError:  # as good as closed
            return got, True
        if not chunk:
            return got, True
        buffer += chunk
        if len(chunk) < READ_SIZE:  # all there was: no second call to find that out
            return True, False
        got = True


def next_frame(buffer: bytearray, start: int) -> tuple[Any, int] | None:
    """The value of the frame at ``start`` in ``buffer`` and where the next one starts,
    or None while that frame has not all arrived."""
    if len(buffer) - start < LENGTH.size:
        return None
    (length,) = LENGTH.unpack_from(buffer, start)
    end = start + LENGTH.size + length
    if len(buffer) < end:
        return None
    return marshal.loads(buffer[start + LENGTH.size : end]), end


def read_frame(fd: int) -> Any:
    """The next frame's value, or EOFError when the other side closed the pipe."""
    (length,) = LENGTH.unpack(_read_exactly(fd, LENGTH.size))
    return marshal.loads(_read_exactly(fd, length))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def encode_error(error: BaseException) -> tuple[str, tuple[Any, ...]]:
    """What the receiver needs to raise the same error again (``decode_error``)."""
    kind = type(error).__name__
    if isinstance(error, sqlite3.Error):
        return kind, (str(error),)
    if kind == "ValidationError":
        return kind, (error.field, error.message)  # type: ignore[attr-defined]
    if kind == "NotFoundError":
        return kind, (error.kind, error.tag)  # type: ignore[attr-defined]
    return "RuntimeError", (f"{kind}: {error}",)


# -- the process ---------------------------------------------------------------------------


def main(path: str, synchronous: str, busy_ms: int, batch_size: int) -> None:
    from dispatcher.inbox import sqlite_ops

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answers go to a private copy of stdout; anything printed by accident goes to stderr
    # instead of into the answer frames.
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    adapt_at_once()
    try:
        conn = connect(path, synchronous, busy_ms, sqlite_ops.STATEMENT_CACHE)
    except Exception as error:
        write_frame(out, (False, encode_error(error)))
        return
    write_frame(out, (True, "ready"))
    stdin = Frames(sys.stdin.fileno())
    commits = 0
    level = synchronous = synchronous.upper()  # what connect() set
    while frames := stdin.take(batch_size):
        ops = list(chain.from_iterable([frame[1] for frame in frames]))
        wanted = sqlite_ops.sync_level(ops, synchronous)  # FULL only where it is needed
        if wanted != level:  # set outside a transaction, where it takes effect
            conn.execute(f"PRAGMA synchronous = {wanted}")
            level = wanted
        results, committed = run_batch(conn, ops, sqlite_ops.OPS, sqlite_ops.GROUPED)
        commits += committed
        write_frame(out, (commits, by_frame(frames, results)))
    conn.close()


def adapt_at_once() -> None:
    """Register identity adapters for the bound values sqlite3 adapts by default: None
    and bytes (it leaves only int, float, str and bytearray alone).

    Unregistered, each such value made sqlite3 look for ``__adapt__`` on its protocol
    type, which raises and formats an AttributeError before it is cleared: about 1.8k
    instructions, and a delivery binds ten such values (callgrind). A registered adapter
    is found first, in a dict. Only this process's sqlite3 module is changed: the
    receiver's, which its application may use too, is left as it is.
    """
    sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself
    sqlite3.register_adapter(type(None), _null)


def _null(value: None) -> None:
    return None


def connect(path: str, synchronous: str, busy_ms: int, cache: int) -> sqlite3.Connection:
    from dispatcher.errors import ValidationError

    conn = sqlite3.connect(path, isolation_level=None, cached_statements=cache)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise ValidationError("inbox", f"{path}: cannot use WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # A multi-row insert inside the batch's transaction keeps a statement journal (its
    # undo, should it fail halfway); past 64 KiB SQLite spilled that to a temp file:
    # a fifth of the bytes the writer wrote under load (strace). Statements here are
    # bounded (MAX_ROWS rows, purges in chunks), so memory holds it.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def by_frame(frames: list[Frame], results: list[Result]) -> list[tuple[int, list[Result]]]:
    """``results``, one per op of ``frames`` in order, cut into each frame's own."""
    answers, start = [], 0
    for frame_id, ops in frames:
        end = start + len(ops)
        answers.append((frame_id, results[start:end]))
        start = end
    return answers


class Frames:
    """The frames of operations that come in on a pipe, read in bulk."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.ended = False  # the other side closed the pipe
        self._buffer = bytearray()

    def take(self, limit: int) -> list[Frame]:
        """The frames that have arrived, until they hold ``limit`` operations or more;
        waits for the first frame. Empty once the pipe is closed and every frame was
        taken."""
        frames: list[Frame] = []
        count = 0
        while True:
            count = self._split(frames, count, limit)
            if count >= limit or self.ended:
                return frames
            if not self._read(wait=not frames) and frames:  # nothing more has come: go
                return frames

    def _read(self, wait: bool) -> bool:
        """Read what has arrived, first waiting for something if ``wait``; False if
        nothing had."""
        if wait:
            select.select([self.fd], [], [])
        got, ended = read_available(self.fd, self._buffer)
        if ended:
            self.ended = True
        return got

    def _split(self, frames: list[Frame], count: int, limit: int) -> int:
        """Move the buffer's complete frames into ``frames`` while they hold fewer than
        ``limit`` operations (``count`` so far); how many they hold then."""
        buffer, start = self._buffer, 0
        while count < limit and (got := next_frame(buffer, start)) is not None:
            frame, start = got
            frames.append(frame)
            count += len(frame[1])
        del buffer[:start]
        return count


def run_batch(
    conn: sqlite3.Connection, ops: list[Op], plain: dict[str, Any], grouped: dict[str, Any]
) -> tuple[list[Result], int]:
    """Run ``ops`` in one transaction: a result per op, in order, and 1 if it committed."""
    try:
        conn.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for other writers
        try:
            results = _run_groups(conn, ops, plain, grouped)
        except Exception:
            # Optimistic: nothing usually fails, so no savepoints. If something did, start
            # over with each op in a savepoint of its own, so only that one fails.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results = [_run_alone(conn, op, plain, grouped) for op in ops]
        conn.execute("COMMIT")
    except Exception as error:  # nothing of the batch is durable: every op hears of it
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        return [(False, encode_error(error))] * len(ops), 0
    return results, 1


def _run_groups(
    conn: sqlite3.Connection, ops: list[Op], plain: dict[str, Any], grouped: dict[str, Any]
) -> list[Result]:
    # The positions of each group's ops, the groups in the order of their first op.
    groups: dict[Any, list[int]] = {}
    for i, (name, is_grouped, _) in enumerate(ops):
        groups.setdefault(name if is_grouped else object(), []).append(i)
    results: list[Result] = [(False, None)] * len(ops)
    for positions in groups.values():
        name, is_grouped, arg = ops[positions[0]]
        if is_grouped:
            values = grouped[name](conn, [ops[i][2] for i in positions])
            for i, value in zip(positions, values, strict=True):
                results[i] = (True, value)
        else:
            results[positions[0]] = (True, plain[name](conn, arg))
    return results


def _run_alone(
    conn: sqlite3.Connection, op: Op, plain: dict[str, Any], grouped: dict[str, Any]
) -> Result:
    name, is_grouped, arg = op
    conn.execute("SAVEPOINT op")
    try:
        value = grouped[name](conn, [arg])[0] if is_grouped else plain[name](conn, arg)
    except Exception as error:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return (False, encode_error(error))
    conn.execute("RELEASE op")
    return (True, value)


def _load_package_without_init() -> None:
    """Make ``dispatcher.inbox.*`` importable without running the packages' __init__
    modules, which import the web stack: startup stays a few tens of milliseconds."""
    package = Path(__file__).resolve().parent.parent
    for name, folder in (("dispatcher", package), ("dispatcher.inbox", package / "inbox")):
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module


if __name__ == "__main__":
    _load_package_without_init()
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
