"""Group commit for SQLite: the store's side of its writer process (sqlite_process.py).

An fsync per write would cap throughput at a few thousand per second, so every write
goes to one writer process, which commits whatever arrived meanwhile as one
transaction and answers each caller only after the transaction holding its
operation committed.

Here, ``submit`` queues an operation (a name from sqlite_ops.py and plain arguments)
and returns a future. The operations queued during one turn of a caller's event loop
go to the process as one frame (``_Frame``), sent at the end of the turn or as soon as
it holds ``FRAME_OPS`` operations, and never block the caller: the process reads its
stdin between batches, and what a full pipe cannot take waits on a thread (``_Outlet``).
The process answers a frame as a whole, its results in the order of its operations, so
an operation needs no id and no entry of its own in a table of callers: the frame
holds their futures.
The answers are read on the event loop that writes (``_Answers``): a reader thread
cost a GIL hand-over and a cross-thread wake-up per answer frame, about a sixth of a
queued request's time on the loop. A store may still be used from several event loops:
when one loop stops, the next one to write reads the answers; while several run at
once in different threads, a thread reads beside the loop, and each future is resolved
on its own loop.

If the process dies, the operations it had not answered fail (they may or may not
have committed), and the next operation starts a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from dispatcher.errors import NotFoundError, ValidationError
from dispatcher.inbox.base import still_awaited
from dispatcher.inbox.sqlite_process import (
    Op,
    Result,
    encode_frame,
    next_frame,
    read_available,
    read_frame,
)

_PROCESS = str(Path(__file__).with_name("sqlite_process.py"))

#: Operations that go to the process as soon as this many are queued, without waiting
#: for the end of the loop turn. Keep-alive clients answered together send their next
#: requests together, and one loop turn starts them all: sent only at the turn's end,
#: the process idled while the receiver parsed the whole wave, then the receiver idled
#: while the process committed it (traced: the process idle 40% of the time). A frame
#: of 16 lets the process commit one part while the receiver parses the next.
FRAME_OPS = 16

#: The pipe to the process holds this much (Linux; else the system's default), so that
#: frames sent while it waits for another process's lock rarely need _Outlet's thread.
PIPE_SIZE = 1 << 20


class _Frame:
    """The operations one event loop queued during one turn, and their callers' futures,
    in the same order: sent to the process together and answered together."""

    __slots__ = ("futures", "generation", "id", "loop", "ops")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ops: list[Op] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.id = 0  # given when it is sent
        self.generation = 0  # which process got it


class Writer:
    """The writer process of one SQLite file, and the futures of its callers."""

    def __init__(self, path: Path, *, synchronous: str, busy_timeout: float, batch_size: int):
        self.commits = 0
        self._args = [str(path), synchronous, str(int(busy_timeout * 1000)), str(batch_size)]
        self._lock = threading.Lock()  # guards everything below
        self._process: subprocess.Popen[bytes] | None = None
        self._answers: _Answers | None = None  # the reader of that process's answers
        self._outlet: _Outlet | None = None  # the writer of its frames
        # Each loop's frame being filled (its flush is queued for the end of the loop turn),
        # and the frames sent and not yet answered, by id.
        self._open: dict[asyncio.AbstractEventLoop, _Frame] = {}
        self._sent: dict[int, _Frame] = {}
        self._ids = 0
        self._generation = 0  # how many processes were started
        self._closed = False
        self._home: tuple[int, asyncio.AbstractEventLoop] | None = None  # see _running_loop

    async def start(self) -> None:
        """Start the process (on a thread: starting one takes a few milliseconds)."""
        await asyncio.to_thread(self._ensure_process)

    async def close(self, timeout: float = 30.0) -> None:
        """Let every queued operation be answered (for up to ``timeout`` s), then end the
        process; what is still unanswered then fails."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._closed = True
            frame = self._open.get(loop)
        if frame is not None:
            self._flush(frame)  # what this loop turn queued goes now
        with self._lock:
            if self._answers is not None:  # the loop that read them may have stopped
                self._answers.listen(loop)
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with self._lock:
                # A frame still open on a loop that stopped will never be sent: not waited for.
                sending = any(frame.loop.is_running() for frame in self._open.values())
                if not (self._sent or sending) or self._process is None:
                    break
            await asyncio.sleep(0.001)
        with self._lock:
            process, self._process = self._process, None
            answers, self._answers = self._answers, None
            if self._outlet is not None:
                self._outlet.close()
                self._outlet = None
        if process is not None:
            await asyncio.to_thread(_end, process)
        if answers is not None:
            answers.stop()
        with self._lock:
            frames = [*self._sent.values(), *self._open.values()]
            self._sent.clear()
            self._open.clear()
        _fail_all(frames, "the inbox store closed before this write was answered")

    # -- the caller's side -----------------------------------------------------------------

    def submit(self, name: str, arg: Any, grouped: bool = False) -> asyncio.Future[Any]:
        """Queue the operation ``name`` of sqlite_ops.OPS, or with ``grouped`` the item
        ``arg`` for sqlite_ops.GROUPED[name], which writes it with the rest of its group
        in one call; the future resolves after the transaction holding it committed."""
        loop = self._running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:  # no operation may slip in behind close() and hang
            if self._closed:
                raise RuntimeError("the inbox store is closed")
            frame = self._open.get(loop)
            if frame is None:
                frame = self._open[loop] = _Frame(loop)
                # Soon, not now: what else this loop turn submits joins the frame.
                loop.call_soon(self._flush, frame)
            ops = frame.ops
            ops.append((name, grouped, arg))
            frame.futures.append(future)
        if len(ops) >= FRAME_OPS:  # now: the process commits these while the turn goes on
            self._flush(frame)
        return future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """``asyncio.get_running_loop()``, which makes a getpid() system call on every call
        (before Python 3.12); the last caller's loop, when it is running on this thread,
        is the running loop (one thread runs one loop at a time), and costs no call."""
        home = self._home
        if home is not None and home[0] == threading.get_ident() and home[1].is_running():
            return home[1]
        loop = asyncio.get_running_loop()
        self._home = (threading.get_ident(), loop)
        return loop

    def _flush(self, frame: _Frame) -> None:
        """Send ``frame`` to the process: at the end of its loop's turn, or before it when
        it is full (then the end of the turn finds it gone, and has nothing to do)."""
        with self._lock:
            if self._open.get(frame.loop) is not frame:
                return
            del self._open[frame.loop]
            frame.ops, frame.futures = still_awaited(frame.ops, frame.futures)
            if not frame.ops:
                return
            dead = failed = None
            try:
                try:
                    self._send(frame)
                except BrokenPipeError:
                    # It died before its reader noticed (say, while no loop was running):
                    # none of this frame reached it, so a new process takes it.
                    dead = self._answers
                    self._forget_process()
                    self._send(frame)
            except Exception as error:
                if isinstance(error, OSError) and dead is None:  # the process is gone
                    dead = self._answers
                    self._forget_process()
                failed = _lost(error)
            else:
                assert self._answers is not None
                self._answers.listen(frame.loop)
        if failed is not None:
            _fail_all([frame], failed)
        if dead is not None:  # what else it had not answered fails too
            self._exited(dead)

    def _send(self, frame: _Frame) -> None:
        self._ensure_process()
        assert self._outlet is not None
        self._ids += 1
        frame.id, frame.generation = self._ids, self._generation
        self._outlet.write(encode_frame((frame.id, frame.ops)))
        self._sent[frame.id] = frame

    # -- the process -----------------------------------------------------------------------

    def _ensure_process(self) -> subprocess.Popen[bytes]:
        """The running process, started (again) if need be; the caller holds the lock or
        is alone (start). A process that died is forgotten by the reader of its answers,
        or by the write that found its pipe closed (no poll() here: this runs for every
        frame)."""
        process = self._process
        if process is not None:
            return process
        process = subprocess.Popen(
            [sys.executable, "-I", _PROCESS, *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert process.stdout is not None
        try:
            ok, value = read_frame(process.stdout.fileno())
        except EOFError:
            _end(process)
            raise RuntimeError("the inbox writer process exited as it started") from None
        if not ok:
            _end(process)
            raise decode_error(value)
        assert process.stdin is not None
        self._process = process
        self._generation += 1
        self._answers = _Answers(self, process, self._generation)
        self._outlet = _Outlet(process.stdin.fileno())
        return process

    def _forget_process(self) -> None:
        """The process died (the lock is held): stop reading it; the next write starts one."""
        if self._answers is not None:
            self._answers.stop()
        if self._outlet is not None:
            self._outlet.close()
        self._process = self._answers = self._outlet = None

    def _answered(self, commits: int, answers: list[tuple[int, list[Result]]]) -> None:
        """The process reported a batch committed, with the results of each of its frames
        (sqlite_process.by_frame): answer their callers."""
        with self._lock:
            self.commits = commits
            sent = self._sent
            # A frame is missing only if close() failed it before its answer came.
            frames = [
                (frame, results)
                for frame_id, results in answers
                if (frame := sent.pop(frame_id, None)) is not None
            ]
        _resolve_all(frames)

    def _exited(self, reader: _Answers) -> None:
        """The process behind ``reader`` is gone: what it had not answered may or may not
        have committed, and fails."""
        process, generation = reader.process, reader.generation
        with self._lock:
            if self._answers is reader:
                self._forget_process()
            mine = [frame for frame in self._sent.values() if frame.generation == generation]
            for frame in mine:
                del self._sent[frame.id]
        _fail_all(mine, "the inbox writer process exited before answering")
        if process.poll() is None:  # reap it without blocking a loop
            threading.Thread(target=_reap, args=(process,), daemon=True).start()


class _Outlet:
    """The process's stdin, written without ever blocking the caller.

    The process reads its stdin only between batches, so while one waits for another
    process's lock, frames pile up in the pipe. A frame that finds the pipe full leaves
    what did not fit in ``_backlog``, and a thread writes that out as the process reads;
    until it is empty, every later frame joins it, so the process gets them in order.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a hint
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[attr-defined]
        self._lock = threading.Lock()  # guards the writes and everything below
        self._backlog = bytearray()
        self._error: OSError | None = None  # what ended the thread's writes
        self._closed = False

    def write(self, frame: bytes) -> None:
        """Send ``frame`` now, or as soon as the process reads; OSError if the process is
        gone (BrokenPipeError: none of this frame reached it)."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._backlog:  # behind the frames still waiting
                self._backlog += frame
                return
            try:
                sent = os.write(self.fd, frame)
            except BlockingIOError:
                sent = 0
            if sent == len(frame):
                return
            self._backlog += memoryview(frame)[sent:]
        threading.Thread(target=self._drain, name="dispatcher-inbox-frames", daemon=True).start()

    def close(self) -> None:
        """Write nothing more, so the pipe can be closed (its fd may then be reused)."""
        with self._lock:
            self._closed = True
            self._backlog.clear()

    def _drain(self) -> None:
        """Write the backlog out as the process reads, then end."""
        while True:
            with contextlib.suppress(OSError, ValueError):  # closed: seen below
                select.select([], [self.fd], [], 0.1)
            with self._lock:
                if self._closed:
                    return
                try:
                    sent = os.write(self.fd, self._backlog)
                except BlockingIOError:
                    continue
                except OSError as error:  # the process is gone: its reader fails the rest
                    self._error = error
                    self._backlog.clear()
                    return
                del self._backlog[:sent]
                if not self._backlog:
                    return


class _Answers:
    """Reads one writer process's answer frames: on the event loop that writes, as a
    reader callback; and on a thread too while loops in other threads write as well.

    The pipe is non-blocking and read under ``_reading``, so the loop and the thread can
    both be woken for the same bytes: whoever takes the lock reads them.
    """

    def __init__(self, writer: Writer, process: subprocess.Popen[bytes], generation: int):
        assert process.stdout is not None
        self.writer = writer
        self.process = process
        self.generation = generation
        self.fd = process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.loop: asyncio.AbstractEventLoop | None = None  # whose reader callback reads
        self.thread: threading.Thread | None = None
        self.stopped = False
        self._buffer = bytearray()
        self._reading = threading.Lock()

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure someone reads the answers to what ``loop`` just wrote (on that loop's
        thread, with the writer's lock held)."""
        current = self.loop
        if current is loop or self.stopped:  # the common case: the one loop that writes
            return
        if current is None or current.is_closed() or not current.is_running():
            # The loop that read before is gone (asyncio.run returned): this one reads now.
            if current is not None:
                with contextlib.suppress(Exception):
                    current.remove_reader(self.fd)
            loop.add_reader(self.fd, self.read)
            self.loop = loop
        elif self.thread is None:
            # Another loop, still running in another thread, reads: it may stop while this
            # one waits for an answer, so a thread reads as well from now on.
            self.thread = threading.Thread(
                target=self._read_on_thread, name="dispatcher-inbox-answers", daemon=True
            )
            self.thread.start()

    def stop(self) -> None:
        """Stop reading (the process ended, or is being ended)."""
        self.stopped = True
        loop, self.loop = self.loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):  # a closed loop has no readers left
            if _current_loop() is loop or not loop.is_running():
                loop.remove_reader(self.fd)
            else:
                loop.call_soon_threadsafe(loop.remove_reader, self.fd)

    def read(self) -> None:
        """Read what arrived and answer every complete frame in it."""
        if not self._reading.acquire(blocking=False):
            return  # the other reader has it
        try:
            buffer = self._buffer
            _, ended = read_available(self.fd, buffer)
            start = 0
            while (frame := next_frame(buffer, start)) is not None:
                # Answered under the lock, so frames are answered in the order they came.
                (commits, answers), start = frame
                self.writer._answered(commits, answers)
            del buffer[:start]
        finally:
            self._reading.release()
        if ended:  # the process is gone; stop() again in case a loop began listening since
            first = not self.stopped
            self.stop()
            if first:
                self.writer._exited(self)

    def _read_on_thread(self) -> None:
        while not self.stopped:
            with contextlib.suppress(OSError, ValueError):
                readable, _, _ = select.select([self.fd], [], [], 0.1)
                if readable:
                    self.read()


def decode_error(value: tuple[str, tuple[Any, ...]]) -> Exception:
    """The exception the process reported (sqlite_process.encode_error)."""
    kind, args = value
    if kind == "ValidationError":
        return ValidationError(*args)
    if kind == "NotFoundError":
        return NotFoundError(*args)
    error_type = getattr(sqlite3, kind, None)
    if isinstance(error_type, type) and issubclass(error_type, sqlite3.Error):
        return error_type(*args)
    return RuntimeError(*args)


def _lost(error: Exception) -> str:
    return f"the inbox writer process could not be reached: {error}"


def _current_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _reap(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(Exception):
        process.wait(timeout=5)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Close the process's stdin (it finishes what it has and exits) and wait for it."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _resolve_all(frames: list[tuple[_Frame, list[Result]]]) -> None:
    """Answer each frame's callers on their own loop: now if that is this thread's loop
    (the answers' reader callback, the common case: a loop turn sooner, no callback),
    else by one callback on it."""
    current = _current_loop() if frames else None
    for frame, results in frames:
        if frame.loop is current:
            _resolve(frame.futures, results)
            continue
        # RuntimeError: that loop is closed, so nobody is left to answer there.
        with contextlib.suppress(RuntimeError):
            frame.loop.call_soon_threadsafe(_resolve, frame.futures, results)


def _fail_all(frames: list[_Frame], message: str) -> None:
    """Fail every operation of ``frames`` with a RuntimeError saying ``message``."""
    failed = (False, ("RuntimeError", (message,)))
    _resolve_all([(frame, [failed] * len(frame.futures)) for frame in frames])


def _resolve(futures: list[asyncio.Future[Any]], results: list[Result]) -> None:
    """Each future gets its result, (True, value) or (False, encoded error), in order."""
    for future, (ok, value) in zip(futures, results, strict=True):
        if future.done():  # the caller was cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(decode_error(value))
