"""The stage (or pipeline) objects of a server: built in the background, lent to one call at a time, each
running its calls on its own thread (:class:`StageLoader`); and the deadline check every call makes before
heavy work (:func:`check_deadline`)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
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
        """Stage objects lent to calls now."""
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

    @contextlib.contextmanager
    def borrow(self, context: grpc.ServicerContext) -> Iterator[Any]:
        if not self.ready.is_set():
            reason = "failed to load" if self.error is not None else "is still loading"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the model {reason}; retry later")
        remaining = context.time_remaining()
        try:
            obj = self._pool.get(timeout=None if remaining is None else max(remaining, 0.0))
        except queue.Empty:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a free model")
        with self._lock:
            self.borrowed += 1
        try:
            check_deadline(context)
            yield obj
        finally:
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
        is reused by the next call instead of piling up in one malloc arena per RPC thread."""
        with self.borrow(context) as obj:
            return self._threads[id(obj)].submit(work, obj).result()

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
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work could start")
