"""Spirit LM's learned "linear quantizer": an MLP from HuBERT layer-11 features to 500 units plus a CTC blank.

The official ``L11_quantizer_500.pt`` stores an ``nn.Sequential`` state dict (keys ``0.*``, ``2.*``, ``4.*``);
this class is that Sequential, so it loads with no mapping.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spiritserve.errors import CheckpointError
from spiritserve.weights import check_unknown_keys

MAX_BLANK_FILL_ITERATIONS = 10_000  # the reference's safety cap


@dataclass(frozen=True)
class QuantizerConfig:
    vocab_size: int  # units, not counting the blank (500)
    dim: int  # input feature width (768 for mHuBERT base)
    upstream_dim: int  # only sizes the hidden layers

    @classmethod
    def from_model_cfg(cls, model_cfg: Any, source: Path) -> "QuantizerConfig":
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"{source}: model_cfg must be a dict, found {type(model_cfg).__name__}")
        check_unknown_keys(model_cfg, {"vocab_size", "dim", "upstream_dim"}, source, "model_cfg")
        for key in ("vocab_size", "dim", "upstream_dim"):
            if type(model_cfg.get(key)) is not int or model_cfg[key] < 1:
                raise CheckpointError(f"{source}: model_cfg {key} must be a positive int, found {model_cfg.get(key)!r}")
        config = cls(model_cfg["vocab_size"], model_cfg["dim"], model_cfg["upstream_dim"])
        if min(config.layer_sizes) < 1:
            raise CheckpointError(
                f"{source}: model_cfg {model_cfg} gives non-positive layer sizes {config.layer_sizes}"
            )
        return config

    @property
    def layer_sizes(self) -> tuple[int, int, int, int]:
        """dim -> dim - mid//4 -> dim - mid//2 -> vocab_size + 1, mid = upstream_dim - (vocab_size + 1);
        Python floor division, as the reference (768 -> 702 -> 635 -> 501 for the official sizes)."""
        out_dim = self.vocab_size + 1
        mid = self.upstream_dim - out_dim
        return self.dim, self.dim - mid // 4, self.dim - mid // 2, out_dim


class LinearQuantizer(nn.Sequential):
    """Features (frames, dim) -> logits (frames, vocab_size + 1); the last class is the blank."""

    def __init__(self, config: QuantizerConfig):
        dim, hidden1, hidden2, out_dim = config.layer_sizes
        super().__init__(
            nn.Linear(dim, hidden1), nn.LeakyReLU(), nn.Linear(hidden1, hidden2), nn.LeakyReLU(),
            nn.Linear(hidden2, out_dim),
        )  # fmt: skip
        self.config = config

    def unit_argmax(self, features: Tensor) -> Tensor:
        """Features (..., dim) -> each frame's most likely class (...), the blank (``vocab_size``) included: the part
        with fixed shapes (captured in a CUDA graph with HuBERT); ``fill_blanks`` then makes units of it."""
        return self(features).log_softmax(dim=-1).argmax(dim=-1)


def fill_blanks(units: Tensor, blank: int) -> Tensor:
    """Argmax classes (frames,) -> units (frames,): each blank takes the previous frame's unit.

    The fill repeats a shift-by-one, like the reference: its ``torch.roll`` has no dim, so frame 0 takes
    the *last* frame's unit (wraparound), kept for bit-exact units. An all-blank input stays blank. A loop that
    depends on the data: run it on the host, after the one copy out of the argmax.
    """
    for _ in range(MAX_BLANK_FILL_ITERATIONS):
        is_blank = units == blank
        if not is_blank.any() or is_blank.all():  # done, or nothing to copy from (further shifts change nothing)
            break
        units = torch.where(is_blank, torch.roll(units, 1), units)
    return units
