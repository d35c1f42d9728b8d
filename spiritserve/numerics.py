"""Precision of the speech stages: exact fp32, TF32, or bf16/fp16 autocast, chosen per stage.

"fp32" on CUDA is not exact by default: cuDNN convolutions use TF32 unless told not to (matmuls do not). So each
stage's forwards run inside `precision_scope`, which sets both TF32 switches for the call and autocast for bf16 /
fp16. The switches are process-wide; the speech worker is the only thread of the gateway that runs CUDA, so
switching them per call is safe (vLLM's engine runs in its own process). On CPU there is no TF32: "tf32" computes
what "float32" does there.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

Precision = Literal["float32", "tf32", "bfloat16", "float16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@contextmanager
def precision_scope(precision: Precision, device_type: str) -> Iterator[None]:
    """Run the block at `precision` on `device_type` ("cpu" or "cuda"); the TF32 switches are restored after."""
    import torch  # here: settings and the tools' command line read this module's names without loading torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    try:
        with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
