"""The Convolutional Dynamic Alignment Network (paper sec. 3.3, eq. 5-9).

    image x in [0,1]^(C,H,W)
      -> encoding [x, 1-x]                     (sec. 3.4, 2C channels)
      -> 9 DAUConv2d layers   a_l = W_l(a_{l-1}) a_{l-1}          (eq. 5)
      -> sum over positions                    (still linear: W_{0->L}(x) x, eq. 6-7)
      -> / T + b0                              (eq. 9)

Because every step is (dynamic) linear, logit_c - b0 = sum_i [W_{0->L}(x)]_c,i x_i / T, and
`explain` returns those per-pixel contributions (eq. 8).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..nn import DAUConv2d, explanation_mode
from .configs import LOGIT_BIAS


def encode(x: torch.Tensor) -> torch.Tensor:
    """Input encoding [x, 1-x] (sec. 3.4): every pixel gets the same norm range."""
    return torch.cat([x, 1 - x], dim=1)


def check_images(x: object, in_channels: int, values: bool = True) -> None:
    """Raise ValueError unless x is a float (N, in_channels, H, W) tensor with values in [0, 1].
    The value check reads one (min, max) pair from the device; `values=False` skips it (the
    training data path, whose batches are uint8 / 255 by construction)."""
    expected = f"a float tensor of shape (N, {in_channels}, H, W) with values in [0, 1]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float() / 255)")
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected {expected}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"expected {expected}, got an empty tensor of shape {tuple(x.shape)}")
    if not values:
        return
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()          # one device sync; NaN propagates
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"expected {expected}, got NaN values")
    if lo < 0 or hi > 1:
        raise ValueError(f"expected {expected}, got values in [{lo:.4g}, {hi:.4g}] "
                         "(images must be scaled to [0, 1], not normalised by mean/std)")


class CoDANet(nn.Module):
    """A CoDA-Net; build one with `codanet.create_model(name, ...)`."""

    layers: nn.Sequential            # the DAUConv2d layers 1..L

    def __init__(self, *, in_channels: int, num_classes: int, kernel_sizes: Sequence[int], strides: Sequence[int],
                 paddings: Sequence[int], channels: Sequence[int], ranks: Sequence[int], temperature: float,
                 nonlinearity: str = "sq",
                 logit_bias: float = LOGIT_BIAS, name: str = "coda_net", input_size: int | None = None):
        super().__init__()
        lists = dict(kernel_sizes=kernel_sizes, strides=strides, paddings=paddings,
                     channels=channels, ranks=ranks)
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError(f"per-layer lists must have equal lengths, got "
                             f"{ {k: len(v) for k, v in lists.items()} }")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        channels = list(channels[:-1]) + [num_classes]
        self.name, self.in_channels, self.num_classes = name, in_channels, num_classes
        self.input_size = input_size
        self.temperature = float(temperature)
        self.logit_bias = float(logit_bias)
        self.nonlinearity = nonlinearity
        self.class_names: list[str] | None = None     # set when loaded from weights that know them
        layers, c_in = [], 2 * in_channels
        for k, s, p, c_out, r in zip(kernel_sizes, strides, paddings, channels, ranks):
            layers.append(DAUConv2d(c_in, c_out, k, rank=r, stride=s, padding=p, nonlinearity=nonlinearity))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.arch: dict[str, Any] = dict(lists, channels=channels, in_channels=in_channels, num_classes=num_classes,
                         nonlinearity=nonlinearity, temperature=self.temperature,
                         logit_bias=self.logit_bias, name=name, input_size=input_size)

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Logits (N, num_classes) for images x in [0, 1] of shape (N, C, H, W).  `check=False`
        skips the value check (one device sync) for inputs in [0, 1] by construction."""
        check_images(x, self.in_channels, values=check)
        return self.forward_encoded(encode(x.to(self.dtype)))

    def forward_encoded(self, x_encoded: torch.Tensor, first_layer: int = 0) -> torch.Tensor:
        """Logits for an already encoded input (N, 2C, H, W), e.g. with pixels removed, or, with
        `first_layer=l`, for the activations a_l (N, C_l, H_l, W_l) of DAU layer l."""
        out = self.layers[first_layer:](x_encoded)         # (N, classes, H_L, W_L)
        return out.sum(dim=(2, 3)) / self.temperature + self.logit_bias

    def blocks(self, start: int = 0, stop: int | None = None) -> list[DAUConv2d]:
        """The DAU layers start+1 .. stop (all by default), typed."""
        return [cast(DAUConv2d, m) for m in list(self.layers)[start:stop]]

    # -- explanations (eq. 6-8) ------------------------------------------------------
    def resolve_targets(self, target: Any, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Target classes as an (n,) long tensor: None (the caller's default), an int, a class name
        (when `class_names` is known), or one of these per sample; ValueError otherwise."""
        names = self.class_names or []
        what = (f"None, a class index in [0, {self.num_classes - 1}]"
                + (", a class name (" + ", ".join(map(repr, names)) + ")" if names else "")
                + f", or a sequence/tensor of {n} of these")

        def index(t: Any) -> int:
            if isinstance(t, str):
                if t in names:
                    return names.index(t)
                raise ValueError(f"target {t!r} is not a class name of this model; a target is {what}")
            if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)) or (
                    isinstance(t, torch.Tensor) and (t.is_floating_point() or t.ndim)):
                raise ValueError(f"target {t!r} ({type(t).__name__}) is not valid; a target is {what}")
            return int(t)

        if isinstance(target, torch.Tensor) and not target.is_floating_point() and target.ndim == 1:
            target = target.tolist()
        if isinstance(target, (list, tuple)):
            if len(target) != n:
                raise ValueError(f"target has {len(target)} entries for {n} samples; a target is {what}")
            idx = [index(t) for t in target]
        else:
            idx = [index(target)] * n
        bad = [i for i in idx if not 0 <= i < self.num_classes]
        if bad:
            raise ValueError(f"target must lie in [0, {self.num_classes - 1}], got {bad}")
        return torch.tensor(idx, dtype=torch.long, device=device)

    def check_layer(self, layer: Any) -> int:
        """`layer` of explain(): 0 = the encoded input, l = 1..L the output a_l of DAU layer l."""
        depth = len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= depth:
            raise ValueError(f"layer must be an int in [0, {depth}] (0: the input, {depth}: the last "
                             f"DAU layer's output), got {layer!r}")
        return layer

    def activations(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """a_l: the encoded input (l = 0) or the output of DAU layer l, (N, C_l, H_l, W_l)."""
        a = encode(x.to(self.dtype))
        with torch.no_grad():
            for block in self.blocks(0, self.check_layer(layer)):
                a = block(a)
        return a

    def explain(self, x: torch.Tensor, target: Any = None, layer: int = 0) -> dict:
        """Exact linear decomposition of the target logit (eq. 6-8) at layer `layer`.

        The network above a_l is the linear map W_{l->L}(a_l) in explanation mode, so
        logit_target - b0 = sum over channels and positions of [W_{l->L}]_target * a_l / T
        (docs/maths.md).  Returns a dict with
          logits (N, K), prediction (N,), target (N,) -- target defaults to the prediction; an int,
              a class name (models that know their `class_names`) or one per sample,
          layer -- l; activations (N, C_l, H_l, W_l) -- a_l (l = 0: the network input [x, 1-x],
              also returned as encoded_input),
          linear_map (N, C_l, H_l, W_l) -- [W_{l->L}(a_l)]_target / T, the target row of the linear
              map from a_l to the logit (it includes 1/T),
          contributions (N, H_l, W_l) = (linear_map * activations).sum(1), whose sum over positions
              equals logits[target] - logit_bias up to float rounding,
          channel_contributions (N, C_l, H_l, W_l) -- the same before summing over channels.
        """
        check_images(x, self.in_channels)
        a = self.activations(x.detach(), layer).detach().requires_grad_(True)   # (N, C_l, H_l, W_l)
        with explanation_mode(self), torch.enable_grad():
            logits = self.forward_encoded(a, first_layer=layer)
            target = self.resolve_targets(target, len(x), logits.device) if target is not None \
                else logits.argmax(1)
            selected = logits.gather(1, target[:, None]).sum()
            (linear_map,) = torch.autograd.grad(selected, a)
        a = a.detach()
        channel_contributions = linear_map * a
        out = dict(logits=logits.detach(), prediction=logits.argmax(1).detach(), target=target,
                   layer=layer, activations=a, linear_map=linear_map,
                   channel_contributions=channel_contributions, contributions=channel_contributions.sum(1))
        if layer == 0:
            out["encoded_input"] = a
        return out

    @torch.no_grad()
    def explain_all(self, x: torch.Tensor, layer: int = 0) -> dict:
        """Rows of W_{l->L}(a_l)/T for every class in one forward and one batched backward pass.

        Returns logits (N, K), prediction (N,), linear_map (N, K, C_l, H_l, W_l), contributions
        (N, K, H_l, W_l); equal to `explain(x, target=k, layer=layer)` for every k.  The backward
        pass runs all K gradients through each layer's materialised weights
        (`DAUConv2d.backproject`).
        """
        check_images(x, self.in_channels)
        a_l = a = self.activations(x, layer)
        saved = []
        for block in self.blocks(layer):                 # forward, keeping each layer's w(x)
            z, alpha = block.dynamic_weights(a)
            saved.append((a.shape, z, alpha))
            a = block.apply_weights(a, z, alpha)
        logits = a.sum((2, 3)) / self.temperature + self.logit_bias
        n, k = x.shape[0], self.num_classes
        eye = torch.eye(k, dtype=a.dtype, device=a.device) / self.temperature
        grad = eye.expand(n, *a.shape[2:], k, k)        # d logit_k / d a_L, (N, H_L, W_L, K, K)
        for block, (shape, z, alpha) in zip(reversed(self.blocks(layer)), reversed(saved)):
            grad = block.backproject(grad, block.weights_per_position(z), shape, alpha)
        linear_map = grad.permute(0, 3, 4, 1, 2).contiguous()              # (N, K, C_l, H_l, W_l)
        return dict(logits=logits, prediction=logits.argmax(1), layer=layer, linear_map=linear_map,
                    contributions=(linear_map * a_l[:, None]).sum(2))

    def compile(self, **kwargs: Any) -> None:
        """torch.compile the network in place (parameter names, checkpoints unchanged).

        Only `forward_encoded` is compiled: the input checks of `forward` read (min, max) as
        Python numbers, which would make dynamo recompile for every batch."""
        self.forward_encoded = torch.compile(self.forward_encoded, **kwargs)  # type: ignore[method-assign]

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype; inputs are cast to it."""
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
