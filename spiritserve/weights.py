"""Safe, strict weight loading shared by every model family.

Official files are read with ``torch.load(weights_only=True)`` and loaded with strict key *and* shape
checks, so a wrong checkpoint fails with the file and the offending keys named instead of running with
silently random weights (the reference loads HuBERT with ``strict=False``).
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from torch import nn
from torch.nn.utils import parametrize

from spiritserve.errors import CheckpointError

logger = logging.getLogger(__name__)


def read_checkpoint(path: Path) -> Any:
    """Read a ``torch.save`` file without executing pickled code."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def read_sentencepiece(path: Path) -> sentencepiece.SentencePieceProcessor:
    """Load a SentencePiece ``tokenizer.model``; shared by the checkpoint checks and the LM's tokenizer."""
    if not path.is_file():
        raise CheckpointError(f"tokenizer model not found: {path}")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read SentencePiece model {path}: {exc}") from exc
    return processor


def require_keys(mapping: Any, keys: list[str], source: Path) -> None:
    """Fail clearly when a checkpoint dict lacks top-level entries the official format has."""
    if not isinstance(mapping, dict):
        raise CheckpointError(f"{source}: expected a dict, found {type(mapping).__name__}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise CheckpointError(f"{source}: missing top-level keys {missing}; found {sorted(mapping)}")


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``state_dict`` into ``module``; any missing, unexpected or mis-shaped key is an error."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key} (file {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)})"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarise(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shapes: {_summarise(mis_shaped)}")
    if problems:
        raise CheckpointError(f"{source}: state dict does not match {type(module).__name__}; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


_strict_config: ContextVar[bool] = ContextVar("strict_config", default=False)
_reported_unknown_keys: set[tuple[str, str, tuple[str, ...]]] = set()


@contextmanager
def config_key_policy(strict: bool) -> Iterator[None]:
    """Within this block (and threads started from it), unknown config keys are errors when ``strict``."""
    token = _strict_config.set(strict)
    try:
        yield
    finally:
        _strict_config.reset(token)


def check_unknown_keys(config: dict[str, Any], known: set[str], source: Path, section: str = "") -> None:
    """Warn once about config keys we do not read; refuse them only under ``SPIRITSERVE_STRICT_CONFIG``.

    Why not refuse by default: the released configs were written by training code of several versions, and
    one harmless extra key would stop the server on the very files users bring. The architecture is guarded
    anyway: a key that changed it shows up as missing, unexpected or mis-shaped weights in the strict load.
    Keys that select a path we do not implement are known keys, refused by the parsers that read them.
    """
    unknown = tuple(sorted(set(config) - known))
    if not unknown:
        return
    where = f"{source}" + (f" ({section})" if section else "")
    if _strict_config.get():
        raise CheckpointError(f"{where}: unknown config keys {list(unknown)} (SPIRITSERVE_STRICT_CONFIG is on)")
    report = (str(source), section, unknown)
    if report not in _reported_unknown_keys:
        _reported_unknown_keys.add(report)
        logger.warning("%s: ignoring unknown config keys %s", where, list(unknown))


def legacy_weight_norm(module: nn.Module, dim: int = 0) -> nn.Module:
    """Weight norm under torch's legacy API, whose state-dict names are the ``weight_g``/``weight_v`` pair that
    fairseq, HiFi-GAN and torchfcpe checkpoints store (the parametrization API names them differently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(module, dim=dim)


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Replace every weight-norm pair (legacy hook or parametrization) by the plain weight it stands for; call
    after loading. Otherwise the norm is recomputed on every forward, a quarter of a short utterance's HuBERT
    encode on CPU (docs/measurements.md)."""
    for module in model.modules():
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            nn.utils.remove_weight_norm(module)
        elif parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
