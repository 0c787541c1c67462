"""``--jobs N``: N worker processes (facerecon.batch.BatchWorker, models loaded once each) sharing a batch.

    with WorkerPool(config, write, jobs=2) as pool:          # starts the workers, loading models in parallel
        for outcome in pool.run(tasks):                      # tasks: (input, out_dir, video), outcomes as they finish
            ...

One thread per worker takes the next task from the shared (lazily read) tasks, so a slow photo holds up one
worker only, and a long list costs no memory here beyond the few inputs in flight.
A worker that dies on an input costs that input (its Outcome says how) and is restarted for the next one.
On Ctrl-C the caller calls :meth:`WorkerPool.interrupt`: inputs that finish within a short grace time are
still reported, the workers are then killed (their half-written folders are stale ``.partial`` ones).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from facerecon.batch import BatchWorker, Outcome, WriteOptions
from facerecon.kernel import PipelineConfig
from facerecon.kernel.contract.errors import ConfigError

Task = tuple[Path, Path, Any]
"""(input, its output folder, its VideoOptions or None for a photo)."""


class WorkerPool:
    """N :class:`BatchWorker` processes and one feeding thread each; see the module docstring."""

    def __init__(self, config: PipelineConfig, write: WriteOptions, *, jobs: int = 1) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {jobs}")
        # one warning for the run about a default refiner this installation cannot run: from the first worker
        self.workers = [BatchWorker(config, write, quiet_defaults=i > 0) for i in range(jobs)]
        self._stop = threading.Event()
        self._done: queue.Queue[int | None] = queue.Queue()  # an outcome's key; None: a feeding thread has ended
        # Every outcome from its arrival until the consumer asks for the next one: a Ctrl-C between the
        # hand-over and the consumer's record of it must not lose it (interrupt() gives these back).
        self._unacknowledged: dict[int, Outcome] = {}
        self._keys = itertools.count()
        self._source_error: Exception | None = None
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start every worker at once and wait until each has built its pipeline; the first failure (a bad
        config or model file) is raised after all have been tried, the started ones closed."""
        with ThreadPoolExecutor(len(self.workers)) as executor:
            futures = [executor.submit(worker.start) for worker in self.workers]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            self.close()
            raise errors[0]  # type: ignore[misc]

    def run(self, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Each task's Outcome, in the order they finish. ``tasks`` is read lazily: at most ``2 * jobs``
        inputs are taken and not yet given back as an Outcome, so a generator over a long list is never
        materialised here."""
        source = iter(tasks)
        taking = threading.Lock()  # one thread at a time advances the source
        window = threading.Semaphore(2 * len(self.workers))  # released as each Outcome is handed over
        self._threads = [
            threading.Thread(
                target=self._feed, args=(worker, source, taking, window), name=f"facerecon-feed-{i}", daemon=True
            )
            for i, worker in enumerate(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        running = len(self._threads)
        while running:
            key = self._done.get()
            if key is None:  # a feeding thread is done
                running -= 1
                continue
            yield self._unacknowledged[key]
            del self._unacknowledged[key]  # the consumer is back for the next: it has this one
            window.release()
        if self._source_error is not None:
            raise self._source_error

    def _feed(
        self, worker: BatchWorker, source: Iterator[Task], taking: threading.Lock, window: threading.Semaphore
    ) -> None:
        try:
            while not self._stop.is_set():
                if not window.acquire(timeout=0.1):
                    continue
                with taking:
                    try:
                        task = next(source, None)
                    except Exception as exc:  # listing the inputs failed: the batch stops, the error is raised
                        self._source_error, task = exc, None
                if task is None:
                    return
                path, out_dir, video = task
                try:
                    outcome = worker.run(path, out_dir, video)
                except Exception as exc:  # a worker that cannot be restarted after a crash
                    outcome = Outcome(str(path), None, 0, 0.0, f"{type(exc).__name__}: {exc}", crashed=True)
                if self._stop.is_set() and outcome.crashed:
                    return  # killed by interrupt(): not this input's fault, it is "not processed"
                key = next(self._keys)
                self._unacknowledged[key] = outcome
                self._done.put(key)
        finally:
            self._done.put(None)

    def interrupt(self, grace_s: float = 0.5) -> list[Outcome]:
        """Stop for Ctrl-C: the outcomes the consumer may not have recorded yet — those of inputs that finished
        within ``grace_s``, and the one handed over when the Ctrl-C came (a consumer skips the inputs it
        already has) — then kill the workers."""
        self._stop.set()
        for thread in self._threads:
            thread.join(grace_s / max(1, len(self._threads)))
        for worker in self.workers:  # its feeding thread sees the pipe close and reaps it
            pid = worker.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for thread in self._threads:
            thread.join(10.0)
        late = list(self._unacknowledged.values())  # in the order they finished
        self._unacknowledged.clear()
        return late

    def close(self) -> None:
        self._stop.set()
        for worker in self.workers:
            worker.close()
