"""Checkpoint import without unpickling arbitrary objects.

Accepted layouts: a plain state_dict; ``{'state_dict': ...}`` (DFDC, with
DataParallel ``module.`` prefixes and timm's unused ``encoder.classifier.*``);
``{'model_state_dict': ...}`` (seed 003); ``.safetensors`` files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from deepfake_serving.core.errors import CheckpointError

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# DFDC checkpoints store ``bce_best`` as a numpy scalar. These rebuild a numpy
# scalar from its dtype and raw bytes; they run no code from the file.
NUMPY_SCALAR_GLOBALS = [
    np.core.multiarray.scalar,  # type: ignore[attr-defined]  # numpy 1.26 has it; its stubs do not say so
    np.dtype,
    *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)},
]
LISTED_KEYS = 12  # how many key names an error message shows


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a checkpoint file as a flat state_dict (prefixes not yet stripped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text advises loading it unsafely: not repeated here
        raise CheckpointError(f"{path.name} is refused: it holds Python objects besides tensors, and a weights-only "
                              "checkpoint is read without unpickling anything else") from exc
    except Exception as exc:  # RuntimeError, EOFError...: its first line, so the command's error stays one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot read {path.name} as a weights-only checkpoint: {first}") from exc
    return extract_state_dict(obj, path.name)


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds no state_dict (expected a dict of tensors or one under {STATE_DICT_KEYS})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source} holds no tensors; top-level keys: {sorted(obj)[:LISTED_KEYS]}")
    return tensors


def normalise_keys(state_dict: dict[str, torch.Tensor], ignored_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Strip DataParallel's ``module.`` prefix and drop keys the variant knows to be unused."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if not key.startswith(ignored_prefixes):
            out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return f"{shown} (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else shown


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every key or raise a CheckpointError that names the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches: {_listing(mis_shaped)}")
    if problems:
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint_into(model: nn.Module, path: str | Path, ignored_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read, normalise (dropping keys under ``ignored_prefixes``, the variant's unused ones) and load a
    checkpoint; return the normalised state_dict."""
    state_dict = normalise_keys(read_checkpoint(path), ignored_prefixes)
    load_state_dict_strict(model, state_dict, f"checkpoint {Path(path).name}")
    return state_dict
