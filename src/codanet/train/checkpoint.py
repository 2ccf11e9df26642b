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
from typing import TYPE_CHECKING

import torch

from ..utils.io import atomic_path

if TYPE_CHECKING:
    from ..models import CoDANet

FORMAT = "codanet-checkpoint-v1"


def _check_path(path: str) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, expected a checkpoint file (.safetensors)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def _not_safetensors(path: str, e: Exception) -> ValueError:
    return ValueError(f"{path} is not a safetensors checkpoint ({e}); codanet never loads pickle "
                      "files, which can run arbitrary code")


def _read_header(path: str) -> tuple[dict, dict]:
    """(metadata, {tensor name: shape}) from the safetensors header, without reading the tensors."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(path, e) from None
    return metadata, shapes


def _read_tensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(path, e) from None
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise ValueError(f"{path} holds NaN or infinite values in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}; refusing to load it")
    return tensors


def save_checkpoint(path: str, model: CoDANet, optimizer: torch.optim.Optimizer | None = None,
                    state: dict | None = None) -> str:
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


def current_name(name: str) -> str:
    """Parameter names of files written before A_T was named for its layout ('layers.3.A')."""
    return name + "_T" if name.endswith(".A") else name


def read_state(path: str) -> tuple[dict, dict]:
    """(state, {tensor name: shape}) of a codanet checkpoint, checked before any tensor is read:
    the metadata against its schema (`schema.check_state`) and the model tensors' shapes against
    the architecture it describes."""
    from .schema import check_state, expected_shapes
    path = _check_path(path)
    metadata, shapes = _read_header(path)
    try:
        state = json.loads(metadata["codanet"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{path} is a safetensors file but not a codanet checkpoint "
                         "(no codanet metadata)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a codanet checkpoint (metadata is not "
                         f"a {FORMAT} object)")
    check_state(state, path)
    expected = expected_shapes(state["arch"])
    found = {current_name(k[len("model."):]): v for k, v in shapes.items() if k.startswith("model.")}
    diffs = [f"{k}: architecture needs {expected[k]}, file has {found.get(k, 'nothing')}"
             for k in expected if found.get(k) != expected[k]]
    diffs += [f"{k}: unexpected tensor {found[k]}" for k in found if k not in expected]
    if diffs:
        raise ValueError(f"{path}: the tensors do not match the architecture in its metadata ("
                         + "; ".join(diffs[:10]) + (" ..." if len(diffs) > 10 else "") + ")")
    return state, shapes


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(tensors, state) of a codanet checkpoint or exported model file, fully checked."""
    state, _ = read_state(path)
    return _read_tensors(os.fspath(path)), state


def arch_differences(expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [f"{k}: model has {expected.get(k)!r}, checkpoint has {found.get(k)!r}"
            for k in keys if expected.get(k) != found.get(k)]


def load_into(model: CoDANet, path: str, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load weights (and optimiser state) after checking the architecture; returns the state."""
    tensors, state = read_checkpoint(path)
    diffs = arch_differences(model.arch, state["arch"])
    if diffs:
        raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(diffs))
    weights = {current_name(k[len("model."):]): v for k, v in tensors.items() if k.startswith("model.")}
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
    """Build the model described in a checkpoint / exported file and load its weights.

    `path` may also name shipped weights, 'coda_cpu:fashion_mnist' (checked against their model
    card).  Returns (model in eval mode, state); `model.class_names` holds the classes when the
    file records them."""
    from ..models import CoDANet
    from ..models.pretrained import resolve_weights
    path = resolve_weights(os.fspath(path))
    state, _ = read_state(path)                   # metadata and shapes checked: the model fits the file
    model = CoDANet(**state["arch"])
    load_into(model, path)
    classes = state.get("classes")
    if isinstance(classes, list) and len(classes) == model.num_classes:
        model.class_names = [str(c) for c in classes]
    return model.to(device).eval(), state


def average_models(paths: list[str], device: str = "cpu"):
    """Weight averaging (Izmailov et al., 2018): the uniform mean of the weights of checkpoints of
    one architecture, e.g. the ends of the last epochs of one run.  Returns (model, state): the
    state is the last file's, with 'averaged_from' naming the files.  A CoDA-Net has no batch
    statistics, so the mean needs no recalibration; it is a model like any other (docs/training.md)."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    models = [load_model(p, device) for p in paths]
    model, state = models[-1]
    for p, (other, _) in zip(paths, models):
        diffs = arch_differences(model.arch, other.arch)
        if diffs:
            raise ValueError(f"cannot average {p} with {paths[-1]}: " + "; ".join(diffs))
    states = [m.state_dict() for m, _ in models]
    with torch.no_grad():
        for name, value in model.state_dict().items():       # state_dict tensors share the parameters' storage
            if value.is_floating_point():                     # mean in float64, stored in the model's dtype
                value.copy_(torch.stack([sd[name].double() for sd in states]).mean(0).to(value.dtype))
    return model, dict(state, averaged_from=[os.fspath(p) for p in paths])


def checkpoint_files(folder: str) -> list[str]:
    """Checkpoints in `folder`, oldest first (names carry the zero-padded update count)."""
    return sorted(glob.glob(os.path.join(folder, "step-*.safetensors")))


def has_checkpoint(run_dir: str) -> bool:
    """Whether a run folder holds a checkpoint to resume from; a run killed before its first
    checkpoint (an empty `checkpoints/`) has none and starts afresh."""
    return bool(checkpoint_files(os.path.join(run_dir, "checkpoints")))


def prune(folder: str, keep: int) -> None:
    for path in checkpoint_files(folder)[:-keep]:
        os.remove(path)
