"""Dynamic batching: requests that arrive together are scored in one forward.

Each request waits in one queue with the version it started on. The batcher takes the first
waiting request, then gathers more until the batch holds ``max_batch`` rows or ``max_delay_s``
has passed since it took the first one, and scores each version's requests in one forward on
its own thread (torch releases the GIL, so the event loop keeps reading requests meanwhile).
While a forward runs, new requests queue, so under load batches fill without waiting.
``max_batch=1`` with no delay is the naive one-request-one-forward server.
"""

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from lepton_core.serving.model import Scored, ServedModel


class Overloaded(Exception):
    """More rows wait than the queue holds: the client should retry later."""


@dataclass
class Waiting:
    model: ServedModel
    rows: pl.DataFrame
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    version: str
    rows: int
    queue_s: list[float]
    compute_s: float


class Batcher:
    def __init__(
        self,
        max_batch: int,
        max_delay_s: float,
        max_queue_rows: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue_rows = max_queue_rows
        self.on_batch = on_batch
        self.queue: asyncio.Queue[Waiting] = asyncio.Queue()
        self.queued_rows = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._held: Waiting | None = None  # did not fit the last batch: first of the next
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.pool.shutdown(wait=True)

    async def score(self, model: ServedModel, rows: pl.DataFrame) -> Scored:
        """``rows`` (a request's text frame) scored by ``model``; raises ``RowsRefused`` when
        a row breaks a rule, ``Overloaded`` when the queue is full."""
        if self.queued_rows + rows.height > self.max_queue_rows:
            raise Overloaded(f"{self.queued_rows} rows already wait (limit {self.max_queue_rows})")
        future = asyncio.get_running_loop().create_future()
        self.queued_rows += rows.height
        self.queue.put_nowait(Waiting(model, rows, future))
        return await future

    async def _first(self) -> Waiting:
        held, self._held = self._held, None
        return held if held is not None else await self.queue.get()

    async def _gather(self) -> list[Waiting]:
        batch = [await self._first()]
        rows = batch[0].rows.height
        deadline = time.perf_counter() + self.max_delay_s
        while rows < self.max_batch:
            if self.queue.empty():
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if rows + item.rows.height > self.max_batch:
                self._held = item
                break
            batch.append(item)
            rows += item.rows.height
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self.queued_rows -= sum(w.rows.height for w in batch)
            live = [w for w in batch if not w.future.done()]  # a timed-out request is dropped
            for model in {id(w.model): w.model for w in live}.values():
                group = [w for w in live if w.model is model]
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(
                        self.pool, model.score, [w.rows for w in group]
                    )
                except Exception as exc:  # the batch's requests get the error, the loop goes on
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                done = time.perf_counter()
                for w, result in zip(group, results, strict=True):
                    if w.future.done():
                        continue
                    if isinstance(result, Exception):
                        w.future.set_exception(result)
                    else:
                        w.future.set_result(result)
                if self.on_batch:
                    queue_s = [started - w.arrived for w in group]
                    rows = sum(w.rows.height for w in group)
                    self.on_batch(BatchStats(model.version, rows, queue_s, done - started))
