"""The one thread that runs the speech models, with answers under way served first.

The speech models are used from one thread (one device queue, no contention between batches). Answers being
generated then wait behind whatever is queued: a chunk due for a stream that is playing, or the duration feed of
its new units, would sit behind a long offline vocoder batch or a large tokenizer batch, and the listener hears a
gap (or the first audio comes late). So the worker takes work from two lanes, `urgent` (duration feeds and stream
chunks of answers under way) before `normal` (tokenizing new requests, vocoding whole answers), each in arrival
order. A job already running is never interrupted. `concurrent.futures` has no priority executor and no
maintained library adds one, hence this small one; each lane is an `Executor`, so
`loop.run_in_executor(worker.urgent, ...)` works as with a thread pool. On a GPU the jobs run on a CUDA stream of
the worker's own (`transfers.speech_stream`), and a job waits only for that stream when it copies its result out.
"""

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import torch

from spiritserve.transfers import speech_stream

URGENT, NORMAL = 0, 1
_STOP = (2, 0, None, None)  # after everything queued


class _Lane(Executor):
    def __init__(self, worker: "SpeechWorker", priority: int) -> None:
        self._worker, self._priority = worker, priority

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._worker.submit(self._priority, fn, *args, **kwargs)


class SpeechWorker:
    def __init__(self, name: str = "speech-worker", device: torch.device | None = None) -> None:
        """`device`: the speech models' (a CUDA device gets the worker's own stream)."""
        self._queue: queue.PriorityQueue[tuple[int, int, Future[Any] | None, Callable[[], Any] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._closed = False
        self._device = device
        self.urgent: Executor = _Lane(self, URGENT)
        self.normal: Executor = _Lane(self, NORMAL)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the speech worker is shut down")
        future: Future[Any] = Future()
        self._queue.put((priority, next(self._order), future, lambda: fn(*args, **kwargs)))
        return future

    def _serve(self) -> None:
        with speech_stream(self._device):
            while True:
                _, _, future, job = self._queue.get()
                if future is None or job is None:
                    return
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = job()
                except BaseException as exc:  # delivered to the caller, like a thread pool does
                    future.set_exception(exc)
                else:
                    future.set_result(result)

    def shutdown(self) -> None:
        """Cancel what has not started, let the running job finish, stop the thread."""
        self._closed = True
        while True:
            try:
                _, _, future, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            if future is not None:
                future.cancel()
        self._queue.put(_STOP)
        self._thread.join()
