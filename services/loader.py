"""The stage (or pipeline) objects of a server: built in the background, lent to one call at a time, each
running its calls on its own thread (:class:`StageLoader`); the deadline check every call makes before
heavy work (:func:`check_deadline`), and the check that stops a call's work once the call has ended
(:func:`check_call`)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

log = logging.getLogger("facerecon.services")
T = TypeVar("T")


class StageLoader:
    """Builds ``copies`` stage objects in a background thread and lends them to calls.

    Stage objects are not thread-safe (see Pipeline); each call borrows one for its duration.
    """

    def __init__(self, build: Callable[[], Any], copies: int = 1, warm: Callable[[Any], None] | None = None) -> None:
        self._build = build
        self._warm = warm
        self._copies = copies
        self._pool: queue.Queue[Any] = queue.Queue()
        self.objects: list[Any] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.borrowed = 0
        """Stage objects lent to calls now (abandoned calls' included, until their work stops)."""
        self.abandoned = 0
        """Calls that ended (cancelled, past their deadline) before their work did."""
        self.stopped = 0
        """Works stopped early by :func:`check_call` because their call had ended."""
        self._threads: dict[int, futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._load, name="facerecon-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        try:
            for _ in range(self._copies):
                obj = self._build()
                self._threads[id(obj)] = futures.ThreadPoolExecutor(1, thread_name_prefix="facerecon-model")
                if self._warm is not None:
                    self._threads[id(obj)].submit(self._warm, obj).result()
                self.objects.append(obj)
                self._pool.put(obj)
            self.ready.set()
        except BaseException as exc:  # reported by the server, which then stops
            self.error = exc
            log.error("the model failed to load: %s: %s", type(exc).__name__, exc)
        finally:
            self.done.set()

    def check_ready(self, context: grpc.ServicerContext) -> None:
        """Abort the call with UNAVAILABLE (which clients retry on another replica) while the model loads."""
        if not self.ready.is_set():
            reason = "failed to load" if self.error is not None else "is still loading"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the model {reason}; retry later")

    def _acquire(self, context: grpc.ServicerContext) -> Any:
        """A free stage object, waiting at most until the call's deadline (the call is aborted otherwise)."""
        self.check_ready(context)
        remaining = context.time_remaining()
        try:
            obj = self._pool.get(timeout=None if remaining is None else max(remaining, 0.0))
        except queue.Empty:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a free model")
        with self._lock:
            self.borrowed += 1
        return obj

    def _release(self, obj: Any) -> None:
        with self._lock:
            self.borrowed -= 1
            closing = self._closing
        if closing:  # the server stopped while this call ran past its grace: close what it held
            _close(obj)
        else:
            self._pool.put(obj)

    def run(self, context: grpc.ServicerContext, work: Callable[[Any], T]) -> T:
        """``work(stage)`` with a borrowed stage object, on that object's own thread. All heavy work (decoding,
        the model, writing outputs) thus happens on ``copies`` threads, not on the RPC threads: freed memory
        is reused by the next call instead of piling up in one malloc arena per RPC thread.

        A call that ends before its work does (the client cancelled, or its deadline passed) returns at once;
        its work is abandoned: it stops at its next :func:`check_call` (the pipeline checks between stages)
        or runs to the end of the stage it is in, and its stage object goes back to the pool only then
        (:attr:`abandoned` counts these calls, :attr:`borrowed` still holds the object). Work not yet started
        when the call ended never starts."""
        obj = self._acquire(context)
        try:
            check_call(context)
        except BaseException:
            self._release(obj)
            raise
        ended = threading.Event()

        def job() -> T:
            check_call(context)  # the call may have ended while the job waited for the thread
            return work(obj)

        def done(finished: futures.Future[T]) -> None:
            if isinstance(finished.exception(), CallEnded):
                with self._lock:
                    self.stopped += 1
            self._release(obj)
            ended.set()

        future = self._threads[id(obj)].submit(job)
        future.add_done_callback(done)
        if not context.add_callback(ended.set):  # the RPC already terminated
            ended.set()
        ended.wait()
        if future.done():
            try:
                return future.result()
            except CallEnded:
                pass
        else:
            with self._lock:
                self.abandoned += 1
            log.info("a call ended (cancelled or past its deadline) before its work did; the work is abandoned")
        code = grpc.StatusCode.DEADLINE_EXCEEDED if _past_deadline(context) else grpc.StatusCode.CANCELLED
        context.abort(code, "the call ended before its work did; the server stopped the work")
        raise AssertionError("unreachable")  # context.abort raises

    def close(self) -> None:
        """Close the models no call holds now; those still lent (a call abandoned after the grace period)
        close when their call returns them, never under it."""
        with self._lock:
            self._closing = True
        while True:
            try:
                obj = self._pool.get_nowait()
            except queue.Empty:
                break
            _close(obj)
        for thread in self._threads.values():
            thread.shutdown(wait=False)


def _close(stage: Any) -> None:
    close = getattr(stage, "close", None)
    if callable(close):
        close()


def check_deadline(context: grpc.ServicerContext) -> None:
    """Abort with DEADLINE_EXCEEDED when the caller's deadline has passed (checked before heavy work)."""
    if _past_deadline(context):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work could start")


class CallEnded(Exception):
    """The call was cancelled or passed its deadline: its work stops here (see :meth:`StageLoader.run`)."""


def check_call(context: grpc.ServicerContext) -> None:
    """Raise :class:`CallEnded` when the call is over (cancelled by the client, or past its deadline): work
    run for it is abandoned at this point. Safe on any thread, unlike ``context.abort``."""
    if _past_deadline(context) or not context.is_active():
        raise CallEnded("the call was cancelled or passed its deadline")


def _past_deadline(context: grpc.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0
