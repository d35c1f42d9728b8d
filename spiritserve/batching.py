"""Dynamic micro-batching for the GPU stages: concurrent requests share one forward pass.

Each stage (speech tokenizer, vocoder) gets one `MicroBatcher`. A request `submit`s one item and awaits its
result; a collector task takes the first waiting item, then keeps collecting until the batch is full or
`max_wait_s` has passed since that first item, and runs the stage's batch function once on the speech
worker thread. The batch functions pad and mask so that a batched result equals the result of the same
item alone (tested per stage), so batching changes throughput, never output.

If a batch fails, its items are retried one by one, so one bad input fails only its own request. Running out of
GPU memory is a failure like that: the batch's memory is released first (the exception's frames hold the failed
forward's tensors, so it is dropped before the cache is emptied), the items go one by one, and an item that does
not fit even alone is refused with OutOfAcceleratorMemoryError (503 + Retry-After), not a crash.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from spiritserve.errors import OutOfAcceleratorMemoryError, OverloadedError

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchStats:
    """What one batch looked like, for metrics: its size, how long its oldest item waited to start, and how
    long the stage's batch function ran (the stage's share of the worker's time; 0 if it failed)."""

    stage: str
    size: int
    queue_wait_s: float
    run_s: float = 0.0


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        stage: str,
        process: Callable[[list[Item]], list[Result]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_queue: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
        self.stage = stage
        self._process = process
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self.max_queue = max_queue
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future, float]] = asyncio.Queue()
        self._collector: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: Item) -> Result:
        """Queue one item and wait for its result (raises what processing it alone raised); a full
        queue refuses the item at once (OverloadedError) rather than letting waits grow without bound."""
        if self.max_queue is not None and self._queue.qsize() >= self.max_queue:
            raise OverloadedError(f"the {self.stage} stage has {self.max_queue} items waiting")
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect(), name=f"{self.stage}-batcher")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future, time.perf_counter()))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                if not self._queue.empty():  # already waiting: always joins, even past the deadline
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(item, future, queued) for item, future, queued in batch if not future.cancelled()]
            if live:
                await self._run(live)

    async def _run(self, batch: list[tuple[Item, asyncio.Future, float]]) -> None:
        loop = asyncio.get_running_loop()
        queue_wait_s = time.perf_counter() - min(q for _, _, q in batch)
        items = [item for item, _, _ in batch]
        try:
            results, run_s = await loop.run_in_executor(self._executor, self._timed_process, items)
        except Exception as exc:
            self._report(BatchStats(self.stage, len(batch), queue_wait_s))
            if len(batch) == 1:
                _settle(batch[0][1], exception=exc)
                return
            logger.warning("%s batch of %d failed (%s); retrying its items one by one", self.stage, len(batch), exc)
            for single in batch:
                await self._run([single])
            return
        self._report(BatchStats(self.stage, len(batch), queue_wait_s, run_s))
        for (_, future, _), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    def _timed_process(self, items: list[Item]) -> tuple[list[Result], float]:
        """The batch function, timed on the worker thread itself (not counting a wait for the worker)."""
        started = time.perf_counter()
        out_of_memory = False
        try:
            results = self._process(items)
        except torch.OutOfMemoryError:
            out_of_memory = True  # raised below, outside this block: here the exception still holds its frames
        if out_of_memory:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfAcceleratorMemoryError(f"the {self.stage} stage ran out of GPU memory on {len(items)} item(s)")
        return results, time.perf_counter() - started

    def _report(self, stats: BatchStats) -> None:
        if self._on_batch is not None:
            self._on_batch(stats)

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            _settle(future, exception=RuntimeError(f"the {self.stage} stage is shutting down"))


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    """Resolve a future unless its request already gave up (cancelled on client disconnect)."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
