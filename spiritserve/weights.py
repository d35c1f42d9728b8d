"""Safe, strict weight loading shared by every model family.

Official files are read with ``torch.load(weights_only=True)`` and loaded with strict key *and* shape
checks, so a wrong checkpoint fails with the file and the offending keys named instead of running with
silently random weights (the reference loads HuBERT with ``strict=False``).
"""

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spiritserve.errors import CheckpointError


def read_checkpoint(path: Path) -> Any:
    """Read a ``torch.save`` file without executing pickled code."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


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


def reject_unknown_keys(config: dict[str, Any], known: set[str], source: Path) -> None:
    """Architecture configs are closed: an unknown key means a format we have not read."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown config keys {unknown}")
