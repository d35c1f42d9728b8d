"""The speech worker: one thread, answers under way before queued batches."""

import asyncio
import threading
import time

import pytest

from spiritserve.speech_worker import SpeechWorker


def test_urgent_work_runs_before_queued_normal_work_and_each_lane_keeps_its_order():
    worker = SpeechWorker()
    ran: list[str] = []
    release = threading.Event()
    try:
        busy = worker.normal.submit(release.wait, 10)  # a long batch already running
        queued = [worker.normal.submit(ran.append, f"batch {index}") for index in range(3)]
        urgent = [worker.urgent.submit(ran.append, f"chunk {index}") for index in range(2)]
        release.set()
        for future in [busy, *queued, *urgent]:
            future.result(timeout=10)
    finally:
        worker.shutdown()
    assert ran == ["chunk 0", "chunk 1", "batch 0", "batch 1", "batch 2"]


def test_errors_reach_the_caller_and_the_worker_lives_on():
    worker = SpeechWorker()
    try:
        with pytest.raises(ZeroDivisionError):
            worker.normal.submit(lambda: 1 / 0).result(timeout=10)
        assert worker.urgent.submit(sum, [1, 2]).result(timeout=10) == 3
    finally:
        worker.shutdown()


def test_lanes_serve_run_in_executor_on_one_thread_and_shutdown_cancels_what_has_not_started():
    worker = SpeechWorker()

    async def scenario() -> set[str]:
        loop = asyncio.get_running_loop()
        names = await asyncio.gather(
            loop.run_in_executor(worker.urgent, lambda: threading.current_thread().name),
            loop.run_in_executor(worker.normal, lambda: threading.current_thread().name),
        )
        return set(names)

    assert asyncio.run(scenario()) == {"speech-worker"}
    started = threading.Event()
    running = worker.normal.submit(lambda: (started.set(), time.sleep(0.2)))
    started.wait(10)
    waiting = worker.normal.submit(lambda: "never")
    worker.shutdown()
    assert running.done() and not running.cancelled() and waiting.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        worker.urgent.submit(print)
