"""Host <-> device copies and the speech stream: pinned and non-blocking on CUDA, no-ops on CPU."""

import pytest
import torch

from spiritserve.speech_worker import SpeechWorker
from spiritserve.transfers import host_zeros, speech_stream, to_device, to_host

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_on_cpu_the_copies_are_the_tensors_themselves_and_nothing_is_pinned():
    host = host_zeros((2, 3), CPU)
    assert not host.is_pinned() and host.dtype == torch.float32 and not host.any()
    assert to_device(host, CPU) is host and to_host(host) is host
    with speech_stream(CPU), speech_stream(None):
        assert to_host(to_device(torch.arange(5), CPU)).tolist() == [0, 1, 2, 3, 4]


def test_the_speech_worker_runs_its_jobs_on_cpu_as_before():
    worker = SpeechWorker(device=CPU)
    try:
        assert worker.normal.submit(lambda: to_host(torch.ones(3) * 2).tolist()).result(timeout=10) == [2.0] * 3
    finally:
        worker.shutdown()


@needs_cuda
def test_cuda_copies_round_trip_through_pinned_memory():
    device = torch.device("cuda")
    host = host_zeros((4, 1000), device)
    host.copy_(torch.randn(4, 1000))
    assert host.is_pinned()
    on_device = to_device(host, device)
    back = to_host(on_device * 1)
    assert back.is_pinned() and torch.equal(back, host)


@needs_cuda
def test_the_speech_worker_runs_on_a_stream_of_its_own():
    device = torch.device("cuda")
    worker = SpeechWorker(device=device)
    try:
        stream = worker.normal.submit(lambda: torch.cuda.current_stream(device)).result(timeout=30)
    finally:
        worker.shutdown()
    assert stream != torch.cuda.default_stream(device)
