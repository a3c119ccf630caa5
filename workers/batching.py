"""Dynamic batching inside one worker process: many Celery tasks, one model.

Each task thread decodes its own image and hands it to the `Batcher`, then waits on its
`Ticket`. The *accelerator* thread takes whatever is waiting, up to `max_batch` images,
waiting at most `max_wait_ms` after the first, and runs the chain's accelerator half
(classify, detect) on them together. It passes the batch to the *CPU* thread (crop, OCR)
and is at once free for the next batch, so the GPU does not wait for Tesseract.

With `overlap` off (`SNAPREAD_BATCH_OVERLAP=0`), one thread runs both halves of each
batch in turn. On a CPU-only host the two modes measured within noise of each other
(bench.raw on 2 cores); the overlap is what pays with a GPU.

Stage names travel back through each ticket: the task thread, not these two threads,
records them in the database, so a slow write never holds up a batch. A batch that raises
is run again one image at a time, so one bad image fails only its own job.

The chain is anything with `detect(images, on_stage)` and `finish(detected, on_stage)`
(workers.pipeline.Pipeline), or only `run(images, on_stage)`, which then runs whole on
the CPU thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

_DONE = object()


class Ticket:
    """One image's place in the batcher: its stages and, at the end, its result."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.future: Future[Any] = Future()
        self.batch_size = 0
        self.prepare_ms = 0.0  # time the chain's `prepare` took on the caller's thread
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._abandoned = threading.Event()

    def wait(self, on_stage: Callable[[str], None], timeout: float) -> Any:
        """Relay stage names to `on_stage` until the result is in; TimeoutError after
        `timeout` seconds. Whatever `on_stage` raises abandons the ticket and propagates."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no result within {timeout:.0f} s")
                try:
                    event = self._events.get(timeout=remaining)
                except queue.Empty:
                    continue
                if event is _DONE:
                    return self.future.result()
                on_stage(str(event))
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """The task gave up (canceled, lost, timed out): skip this image if not started."""
        self._abandoned.set()

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()

    def _stage(self, stage: str) -> None:
        self._events.put(stage)

    def _resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        self._events.put(_DONE)


class Batcher:
    def __init__(
        self,
        chain: Any,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
        overlap: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.chain = chain
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.batch_sizes: Counter[int] = Counter()
        self.on_batch = on_batch  # told each batch's size (metrics)
        self.overlap = overlap
        self._split = hasattr(chain, "detect") and hasattr(chain, "finish")
        self._prepare = getattr(chain, "prepare", None) if self._split else None
        self._inbox: queue.SimpleQueue[Ticket] = queue.SimpleQueue()
        # At most one detected batch waits for the CPU half: when OCR falls behind, the
        # accelerator waits too instead of piling up batches in memory.
        self._handoff: queue.Queue[tuple[list[Ticket], Any]] = queue.Queue(maxsize=1)
        self._started = False
        self._last_batch = self.max_batch
        self._lock = threading.Lock()

    def submit(self, image: Any) -> Ticket:
        """Queue one image; the chain's `prepare` (if it has one) runs here, on the
        caller's thread, off the accelerator's."""
        self._start()
        prepare_ms = 0.0
        if self._prepare is not None:
            t0 = time.perf_counter()
            image = self._prepare(image)
            prepare_ms = (time.perf_counter() - t0) * 1000
        ticket = Ticket(image)
        ticket.prepare_ms = prepare_ms
        self._inbox.put(ticket)
        return ticket

    def read(self, images: list[Any], timeout: float = 600.0) -> list[Any]:
        """Submit several images and wait for all (for warm-up and benchmarks)."""
        tickets = [self.submit(image) for image in images]
        return [ticket.wait(lambda stage: None, timeout) for ticket in tickets]

    # -- the two threads ---------------------------------------------------------------

    def _start(self) -> None:
        # Threads start on first use, never at import: a prefork child must start its own.
        with self._lock:
            if self._started:
                return
            threading.Thread(target=self._accelerator_loop, name="batch-accel", daemon=True).start()
            if self.overlap:
                threading.Thread(target=self._cpu_loop, name="batch-cpu", daemon=True).start()
            self._started = True

    def _collect(self) -> list[Ticket]:
        batch = [self._inbox.get()]
        # A lone image after a lone image: nobody else is coming, so do not make it wait
        # for company. Once two arrive together, batches wait up to the window again.
        wait = self.max_wait_s if self._last_batch > 1 or not self._inbox.empty() else 0.0
        deadline = time.monotonic() + wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._inbox.get(timeout=remaining)
                    if remaining > 0
                    else self._inbox.get_nowait()
                )
            except queue.Empty:
                break
        self._last_batch = len(batch)
        return [t for t in batch if not t.abandoned]

    def _accelerator_loop(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                continue
            self.batch_sizes[len(batch)] += 1
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for ticket in batch:
                ticket.batch_size = len(batch)
            groups = self._detect(batch) if self._split else [(batch, None)]
            for group, detected in groups:
                if self.overlap:
                    self._handoff.put((group, detected))
                else:
                    self._finish(group, detected)

    def _detect(self, batch: list[Ticket]) -> list[tuple[list[Ticket], Any]]:
        try:
            return [(batch, self.chain.detect([t.image for t in batch], _broadcast(batch)))]
        except Exception as exc:
            if len(batch) == 1:
                batch[0]._resolve(error=exc)
                return []
            log.warning("a batch of %d failed to detect (%s); retrying one by one", len(batch), exc)
            groups = []
            for ticket in batch:
                groups.extend(self._detect([ticket]))
            return groups

    def _cpu_loop(self) -> None:
        while True:
            self._finish(*self._handoff.get())

    def _finish(self, group: list[Ticket], detected: Any) -> None:
        try:
            if self._split:
                results = self.chain.finish(detected, _broadcast(group))
            else:
                results = self.chain.run([t.image for t in group], _broadcast(group))
            answers = list(zip(group, results, strict=True))
        except Exception as exc:
            if len(group) == 1:
                group[0]._resolve(error=exc)
                return
            log.warning("a batch of %d failed (%s); reading one by one", len(group), exc)
            for ticket in group:
                self._run_alone(ticket)
            return
        for ticket, result in answers:
            ticket._resolve(result)

    def _run_alone(self, ticket: Ticket) -> None:
        try:
            [result] = self.chain.run([ticket.image], ticket._stage)
        except Exception as exc:
            ticket._resolve(error=exc)
        else:
            ticket._resolve(result)


def _broadcast(group: list[Ticket]) -> Callable[[str], None]:
    def notify(stage: str) -> None:
        for ticket in group:
            ticket._stage(stage)

    return notify
