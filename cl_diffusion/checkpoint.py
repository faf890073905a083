"""Checkpoints that load without unpickling: safetensors for tensors, JSON for everything else.

A checkpoint is a pair ``ckpt/state-<seq>.safetensors`` + ``ckpt/state-<seq>.json``. Any nested
structure of dicts/lists/numbers/strings/tensors is split by :func:`split_state` into a flat
``{key: tensor}`` map and a JSON skeleton that refers to the tensors by key. The JSON records the
SHA-256 of the tensor file and is written last, so a checkpoint counts only once both files are
complete. Writing never removes the previous good checkpoint before the new one is complete.

:func:`rng_state` / :func:`restore_rng` capture and restore the random-number generators a resume
needs (a run's explicit generator, torch's global CPU and CUDA ones, NumPy's, Python's
``random``) as such a structure.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json

_TENSOR = "__tensor__"
KEEP = 2  # checkpoints kept on disk: the newest and the one before it


def split_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}`` and collect it."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "t"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), split_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [split_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    return k if isinstance(k, (str, int)) else str(k)


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if "__dict__" in skeleton:
            return {k: join_state(v, tensors) for k, v in skeleton["__dict__"]}
        return {k: join_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [join_state(v, tensors) for v in skeleton]
    return skeleton


def rng_state(generator: torch.Generator, device: torch.device | None = None) -> dict[str, Any]:
    """The states of the random-number generators a resume needs, for :func:`save_checkpoint`.

    Without ``device``: every generator of the process (a checkpoint's ``"rng"`` entry)::

        {"generator": uint8 [*] (``generator``'s state), "torch": uint8 [5056] (global CPU RNG),
         "cuda": [uint8 [*] per CUDA device] ([] without CUDA),
         "numpy": ["MT19937", int64 [624], pos, has_gauss, cached_gaussian],
         "python": [version, [625 ints], gauss_next]}

    With ``device``: only what differs between data-parallel ranks, all tensors, so that they can
    be gathered into one row per rank: ``"generator"``, ``"torch"`` and, when ``device`` is a CUDA
    device, ``"cuda"`` (that device's state).
    """
    if device is not None:
        out = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            out["cuda"] = torch.cuda.get_rng_state(device)
        return out
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    name, keys, *rest = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(), "cuda": list(cuda),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), *rest],
            "python": [version, list(internal), gauss]}


def restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device | None = None) -> None:
    """Set the generators to ``state``, from :func:`rng_state` with the same ``device`` argument.

    Without ``device``: all of them; the CUDA states only where CUDA is available. With ``device``
    (one rank's row): ``generator``, the global CPU RNG and, if both the state has one and
    ``device`` is a CUDA device, that device's RNG. Other keys of ``state`` are ignored.
    """
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device is not None:
        if "cuda" in state and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], device)
        return
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated or corrupted."""


def _seq_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """JSON files of complete-looking checkpoints, newest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(ckpt_dir.glob("state-*.json"), key=_seq_of, reverse=True)


def save_checkpoint(ckpt_dir: Path, state: Any) -> Path:
    """Write ``state`` as a new checkpoint; prune all but the newest :data:`KEEP`."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    existing = list_checkpoints(ckpt_dir)
    seq = _seq_of(existing[0]) + 1 if existing else 0
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_state(state, tensors)
    blob = st_save(tensors)
    tensor_path = ckpt_dir / f"state-{seq:06d}.safetensors"
    atomic_write_bytes(tensor_path, blob)
    meta = {"format": "cl_diffusion-checkpoint-1", "tensor_file": tensor_path.name,
            "sha256": hashlib.sha256(blob).hexdigest(), "state": skeleton}
    json_path = ckpt_dir / f"state-{seq:06d}.json"
    atomic_write_json(json_path, meta)
    for old in list_checkpoints(ckpt_dir)[KEEP:]:
        for p in (old, old.with_suffix(".safetensors")):
            if p.exists():
                os.unlink(p)
    return json_path


def load_checkpoint(json_path: Path) -> Any:
    """Load one checkpoint, verifying its hash. Raises :class:`CheckpointError` naming the file."""
    try:
        meta = json.loads(json_path.read_text())
        tensor_path = json_path.parent / meta["tensor_file"]
        blob = tensor_path.read_bytes()
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {json_path} is unreadable or truncated ({err})") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {tensor_path} is corrupted (SHA-256 mismatch)")
    try:
        tensors = st_load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {tensor_path} cannot be decoded ({err})") from None
    return join_state(meta["state"], tensors)


def load_latest(ckpt_dir: Path, warn=print) -> tuple[Any, Path]:
    """The newest checkpoint that loads; corrupted newer ones are reported and skipped (kept on disk)."""
    errors = []
    for path in list_checkpoints(ckpt_dir):
        try:
            return load_checkpoint(path), path
        except CheckpointError as err:
            errors.append(str(err))
            warn(f"warning: {err}; trying the previous checkpoint")
    if errors:
        raise CheckpointError(f"no loadable checkpoint in {ckpt_dir}: {errors[-1]}")
    raise CheckpointError(f"no checkpoint in {ckpt_dir}")


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Weights alone (a model's state dict, or a strategy's ``generator_tensors``), as safetensors."""
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(sd, metadata=metadata))
