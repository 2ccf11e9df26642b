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

import torch
from torch import nn

from ..nn import DAUConv2d, explanation_mode
from .configs import LOGIT_BIAS


def encode(x: torch.Tensor) -> torch.Tensor:
    """Input encoding [x, 1-x] (sec. 3.4): every pixel gets the same norm range."""
    return torch.cat([x, 1 - x], dim=1)


def check_images(x, in_channels: int) -> None:
    """Raise ValueError unless x is a float (N, in_channels, H, W) tensor with values in [0, 1]."""
    expected = f"a float tensor of shape (N, {in_channels}, H, W) with values in [0, 1]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert with x.float() / 255)")
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected {expected}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"expected {expected}, got an empty tensor of shape {tuple(x.shape)}")
    if torch.isnan(x).any():
        raise ValueError(f"expected {expected}, got NaN values")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"expected {expected}, got values in [{lo:.4g}, {hi:.4g}] "
                         "(images must be scaled to [0, 1], not normalised by mean/std)")


class CoDANet(nn.Module):
    """A CoDA-Net; build one with `codanet.create_model(name, ...)`."""

    def __init__(self, *, in_channels: int, num_classes: int, kernel_sizes, strides, paddings,
                 channels, ranks, temperature: float, nonlinearity: str = "sq",
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
        layers, c_in = [], 2 * in_channels
        for k, s, p, c_out, r in zip(kernel_sizes, strides, paddings, channels, ranks):
            layers.append(DAUConv2d(c_in, c_out, k, r, stride=s, padding=p, nonlinearity=nonlinearity))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.arch = dict(lists, channels=channels, in_channels=in_channels, num_classes=num_classes,
                         nonlinearity=nonlinearity, temperature=self.temperature,
                         logit_bias=self.logit_bias, name=name, input_size=input_size)

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images x in [0, 1] of shape (N, C, H, W)."""
        check_images(x, self.in_channels)
        return self.forward_encoded(encode(x.to(self.dtype)))

    def forward_encoded(self, x_encoded: torch.Tensor) -> torch.Tensor:
        """Logits for an already encoded input (N, 2C, H, W), e.g. with pixels removed."""
        out = self.layers(x_encoded)                       # (N, classes, H_L, W_L)
        return out.sum(dim=(2, 3)) / self.temperature + self.logit_bias

    # -- explanations (eq. 7-8) ------------------------------------------------------
    def _targets(self, target, logits: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if target is None:
            return logits.argmax(1)
        target = torch.as_tensor(target, device=logits.device)
        if target.is_floating_point() or target.ndim > 1 or (target.ndim == 1 and len(target) != n):
            raise ValueError(f"target must be None, an int or {n} integer class indices, "
                             f"got {tuple(target.shape)} {target.dtype}")
        target = target.long().expand(n)
        if (target < 0).any() or (target >= self.num_classes).any():
            raise ValueError(f"target must lie in [0, {self.num_classes - 1}], got {target.tolist()}")
        return target

    def explain(self, x: torch.Tensor, target=None) -> dict:
        """Exact linear decomposition of the target logit (eq. 8).

        Returns a dict with
          logits (N, K), prediction (N,), target (N,) -- target defaults to the prediction,
          encoded_input (N, 2C, H, W) -- the network input [x, 1-x],
          linear_map (N, 2C, H, W) -- [W_{0->L}(x)]_target / T, the target row of the linear map
              from the encoded input to the logit (it includes 1/T, so that)
          contributions (N, H, W) = (linear_map * encoded_input).sum(1), whose sum over pixels
              equals logits[target] - logit_bias up to float rounding,
          channel_contributions (N, 2C, H, W) -- the same before summing over channels.
        """
        check_images(x, self.in_channels)
        x_encoded = encode(x.detach().to(self.dtype)).requires_grad_(True)
        with explanation_mode(self), torch.enable_grad():
            logits = self.forward_encoded(x_encoded)
            target = self._targets(target, logits)
            selected = logits.gather(1, target[:, None]).sum()
            (linear_map,) = torch.autograd.grad(selected, x_encoded)
        x_encoded = x_encoded.detach()
        channel_contributions = linear_map * x_encoded
        return dict(logits=logits.detach(), prediction=logits.argmax(1).detach(), target=target,
                    encoded_input=x_encoded, linear_map=linear_map,
                    channel_contributions=channel_contributions,
                    contributions=channel_contributions.sum(1))

    @torch.no_grad()
    def explain_all(self, x: torch.Tensor) -> dict:
        """Rows of W_{0->L}(x)/T for every class in one forward and one batched backward pass.

        Returns logits (N, K), linear_map (N, K, 2C, H, W), contributions (N, K, H, W);
        equal to `explain(x, target=k)` for every k.  The backward pass runs all K gradients
        through each layer's materialised weights (`DAUConv2d.backproject`).
        """
        check_images(x, self.in_channels)
        x_encoded = a = encode(x.to(self.dtype))
        saved = []
        for layer in self.layers:                       # forward, keeping each layer's w(x)
            z, alpha = layer.dynamic_weights(a)
            saved.append((a.shape, z, alpha))
            a = layer.apply_weights(a, z, alpha)
        logits = a.sum((2, 3)) / self.temperature + self.logit_bias
        n, k = x.shape[0], self.num_classes
        eye = torch.eye(k, dtype=a.dtype, device=a.device) / self.temperature
        grad = eye.expand(n, *a.shape[2:], k, k)        # d logit_k / d a_L, (N, H_L, W_L, K, K)
        for layer, (shape, z, alpha) in zip(reversed(self.layers), reversed(saved)):
            grad = layer.backproject(grad, layer.weights_per_position(z), shape, alpha)
        linear_map = grad.permute(0, 3, 4, 1, 2).contiguous()              # (N, K, 2C, H, W)
        return dict(logits=logits, prediction=logits.argmax(1), linear_map=linear_map,
                    contributions=(linear_map * x_encoded[:, None]).sum(2))

    def compile(self, **kwargs) -> None:
        """torch.compile the network in place (parameter names, checkpoints unchanged).

        Only `forward_encoded` is compiled: the input checks of `forward` read x.min()/x.max() as
        Python numbers, which would make dynamo recompile for every batch."""
        self.forward_encoded = torch.compile(self.forward_encoded, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype; inputs are cast to it."""
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
