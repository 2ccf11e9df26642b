"""Checkpoints that cannot execute code: safetensors tensors + JSON metadata, written atomically.

A checkpoint file holds
  model.<name>          every model parameter,
  optim.<i>.<key>       the optimiser state of parameter i (Adam: step, exp_avg, exp_avg_sq),
and in its safetensors metadata (string -> string) a JSON 'state': format version, the model's
architecture, the training config, epoch / step counters, optimiser param_groups and the metric
history.  Nothing is unpickled on load: a file that is not safetensors is refused.
The randomness of training is derived from (seed, epoch, step), so no RNG state is needed.
"""
from __future__ import annotations

import glob
import json
import os

import torch

from ..utils.io import atomic_path

FORMAT = "codanet-checkpoint-v1"


def _open_safetensors(path: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, expected a checkpoint file (.safetensors)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a safetensors checkpoint ({e}); codanet never loads pickle "
                         "files, which can run arbitrary code") from None
    return tensors, metadata


def save_checkpoint(path: str, model, optimizer=None, state: dict | None = None) -> str:
    """Write model (+ optimiser) tensors and JSON state to `path` atomically."""
    from safetensors.torch import save_file
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    groups = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for key, value in st.items():
                tensors[f"optim.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups = sd["param_groups"]
    meta = dict(format=FORMAT, arch=model.arch, param_groups=groups, **(state or {}))
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"codanet": json.dumps(meta)})
    return path


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(tensors, state) of a codanet checkpoint or exported model file."""
    tensors, metadata = _open_safetensors(path)
    try:
        state = json.loads(metadata["codanet"])
        assert state.get("format") == FORMAT and isinstance(state.get("arch"), dict)
    except (KeyError, json.JSONDecodeError, AssertionError):
        raise ValueError(f"{path} is a safetensors file but not a codanet checkpoint "
                         "(no codanet metadata)") from None
    return tensors, state


def arch_differences(expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [f"{k}: model has {expected.get(k)!r}, checkpoint has {found.get(k)!r}"
            for k in keys if expected.get(k) != found.get(k)]


def load_into(model, path: str, optimizer=None) -> dict:
    """Load weights (and optimiser state) after checking the architecture; returns the state."""
    tensors, state = read_checkpoint(path)
    diffs = arch_differences(model.arch, state["arch"])
    if diffs:
        raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(diffs))
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights)
    if optimizer is not None and state.get("param_groups") is not None:
        per_param: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, key = k.split(".", 2)
                per_param.setdefault(int(i), {})[key] = v
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def load_model(path: str, device: str = "cpu"):
    """Build the model described in a checkpoint / exported file and load its weights."""
    from ..models import CoDANet
    _, state = read_checkpoint(path)
    arch = dict(state["arch"])
    model = CoDANet(**arch)
    load_into(model, path)
    return model.to(device).eval(), state


def checkpoint_files(folder: str) -> list[str]:
    """Checkpoints in `folder`, oldest first (names carry the zero-padded update count)."""
    return sorted(glob.glob(os.path.join(folder, "step-*.safetensors")))


def prune(folder: str, keep: int) -> None:
    for path in checkpoint_files(folder)[:-keep]:
        os.remove(path)
