"""Host <-> device copies for the speech stages, and their own CUDA stream; all of it a no-op off CUDA.

A copy from pageable host memory to the GPU makes the host wait for the whole device queue, and a plain `.cpu()`
waits for every stream of the device. So inputs go through pinned memory with one `non_blocking` copy queued
behind the stage's work, and outputs come back the same way, waiting for the current stream only: within a batch
or a streaming feed the host then never waits for the GPU until the one copy out. The speech worker runs all of
it on `speech_stream`, so the speech stages' kernels do not queue behind (or in front of) other GPU work of the
process on the default stream.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def host_zeros(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A host buffer to fill and send to `device` with `to_device`: pinned when that is a CUDA device."""
    return torch.zeros(shape, dtype=dtype, pin_memory=device.type == "cuda")


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`: through pinned memory (a copy unless `host` is pinned already) with a non-blocking
    copy on CUDA, the caching host allocator keeping the pinned block until the copy is done; `host` itself on CPU."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor on the CPU: one non-blocking copy into pinned memory, then a wait for the current stream
    only (the work that produced it); a CPU tensor as it is."""
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host


@contextmanager
def speech_stream(device: torch.device | None) -> Iterator[None]:
    """Make a new stream of `device` the current one for the block (a CUDA device; nothing otherwise). Enter it on
    the thread that runs the stages: the current stream is per thread."""
    cuda = device is not None and device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]  # torch leaves it untyped
    with torch.cuda.stream(stream):  # None: no-op
        yield
