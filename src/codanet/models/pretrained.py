"""Weights shipped with the package: `create_model("coda_cpu", pretrained="fashion_mnist")`.

Each set of weights is three files in `codanet/weights/`:
  <model>-<weights>.safetensors   float32 tensors + JSON metadata (a codanet checkpoint, no pickle),
  <model>-<weights>.json          the model card as data (dataset, classes, accuracy, T, b0,
                                  metric scores, training command, sha256 of the .safetensors),
  <model>-<weights>.md            the same card for people.
The sha256 in the card is checked on every load: a file that does not match is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .coda_net import CoDANet

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def _cards(directory: str | None = None) -> dict[tuple[str, str], dict]:
    """{(model, weights): card} for every card JSON in `directory`."""
    directory = directory or WEIGHTS_DIR
    cards = {}
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    card = json.load(f)
                cards[(card["model"], card["weights"])] = card
    return cards


def available_weights(model: str | None = None, directory: str | None = None) -> dict[str, list[str]]:
    """{model name: [weight names]} of the shipped weights (of `model` only, when given)."""
    out: dict[str, list[str]] = {}
    for m, w in _cards(directory):
        if model is None or m == model:
            out.setdefault(m, []).append(w)
    return out


def model_card(model: str, weights: str, directory: str | None = None) -> dict:
    """The card (JSON) of shipped weights; ValueError listing what is available."""
    cards = _cards(directory)
    if (model, weights) not in cards:
        avail = ", ".join(f"{m}:{w}" for m, w in sorted(cards)) or "none"
        raise ValueError(f"no pretrained weights {weights!r} for model {model!r}; available: {avail}")
    return cards[(model, weights)]


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_path(model: str, weights: str, directory: str | None = None) -> str:
    """Path of the shipped weights file after checking its sha256 against the card."""
    card = model_card(model, weights, directory)
    path = os.path.join(directory or WEIGHTS_DIR, card["file"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} of {model}:{weights} is missing (reinstall codanet)")
    digest = sha256_of(path)
    if digest != card["sha256"]:
        raise ValueError(f"weights file {path} has sha256 {digest[:16]}..., but its model card says "
                         f"{card['sha256'][:16]}...: the file is damaged or was replaced; refusing to load it")
    return path


def load_pretrained(model: str, weights: str, directory: str | None = None) -> tuple[CoDANet, dict]:
    """(model in eval mode with `class_names`, checkpoint state) of shipped weights."""
    from ..train.checkpoint import load_model
    model_obj, state = load_model(weights_path(model, weights, directory))
    return model_obj, state


def resolve_weights(spec: str) -> str:
    """The file a weights argument names: shipped weights 'coda_cpu:fashion_mnist' (sha256-checked)
    or the path itself."""
    named = split_spec(spec)
    return weights_path(*named) if named else spec


def split_spec(spec: str) -> tuple[str, str] | None:
    """'coda_cpu:fashion_mnist' -> ('coda_cpu', 'fashion_mnist') when the model is registered and
    no file of that name exists; otherwise None (a checkpoint path)."""
    from .registry import list_models
    if os.path.exists(spec) or spec.count(":") != 1:
        return None
    model, weights = spec.split(":")
    return (model, weights) if model in list_models() else None
