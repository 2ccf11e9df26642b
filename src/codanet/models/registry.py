"""Model registry in the style of timm: `create_model(name, **overrides)`, `list_models()`."""
from __future__ import annotations

import copy
from typing import Any

from .coda_net import CoDANet
from .configs import CONFIGS


def list_models() -> list[str]:
    return sorted(CONFIGS)


def model_config(name: str) -> dict:
    """A copy of the plain-data architecture of `name`."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return copy.deepcopy(CONFIGS[name])


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 nonlinearity: str = "sq", temperature: float | None = None,
                 rank: int | list[int] | None = None, pretrained: str | None = None,
                 **overrides: Any) -> CoDANet:
    """Build a CoDA-Net from the registry.

    num_classes / in_channels default to the config's (3 channels unless the config says
    otherwise); temperature defaults to the config's T.  `rank` is either a list with one rank
    per layer or an int f that rescales the config's rank pattern so the first layer has rank f
    (coda_s: [f, f, 2f x7], the paper's rank ablation).  Other keyword arguments override
    config entries (kernel_sizes, strides, paddings, channels, ranks, logit_bias).

    `pretrained="fashion_mnist"` (see `codanet models`) loads shipped weights, checked against
    their model card's sha256; the model comes in eval mode with `class_names`.  Other arguments
    must then agree with the weights (fine-tuning changes the class count, not this).
    """
    if pretrained is not None:
        return _pretrained(name, pretrained, num_classes=num_classes, in_channels=in_channels,
                           nonlinearity=nonlinearity, temperature=temperature, rank=rank, **overrides)
    cfg = resolve_config(name, num_classes=num_classes, in_channels=in_channels, temperature=temperature,
                         rank=rank, **overrides)
    return CoDANet(name=name, nonlinearity=nonlinearity, **cfg)


def resolve_config(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                   temperature: float | None = None, rank: int | list[int] | None = None,
                   **overrides: Any) -> dict:
    """The architecture `create_model` would build, as plain data, without building it."""
    cfg = model_config(name)
    if rank is not None and "ranks" in overrides:
        raise ValueError("give either rank (an int f or a list) or ranks (a list), not both")
    if rank is not None:
        if isinstance(rank, int):
            if rank < 1:
                raise ValueError(f"rank must be >= 1, got {rank}")
            base = cfg["ranks"][0]
            cfg["ranks"] = [max(1, r * rank // base) for r in cfg["ranks"]]
        else:
            cfg["ranks"] = list(rank)
    unknown = set(overrides) - {"kernel_sizes", "strides", "paddings", "channels", "ranks", "logit_bias"}
    if unknown:
        raise ValueError(f"unknown create_model options {sorted(unknown)}")
    cfg.update(overrides)
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if in_channels is not None:
        cfg["in_channels"] = in_channels
    cfg.setdefault("in_channels", 3)
    if temperature is not None:
        cfg["temperature"] = temperature
    for key in ("num_classes", "in_channels"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive int, got {cfg[key]!r}")
    return cfg


def _pretrained(name: str, weights: str, **requested: Any) -> CoDANet:
    from .pretrained import load_pretrained
    model_config(name)                                       # unknown model: ValueError
    model, _ = load_pretrained(name, weights)
    arch = model.arch
    have = dict(arch, rank=arch["ranks"])
    clash = [f"{k}={v!r} (the weights have {have.get(k)!r})" for k, v in requested.items()
             if v is not None and v != have.get(k) and not (k == "rank" and v == arch["ranks"])]
    if clash:
        raise ValueError(f"pretrained weights {name}:{weights} do not fit " + ", ".join(clash)
                         + "; leave these arguments out (or fine-tune: docs/finetuning.md)")
    return model
