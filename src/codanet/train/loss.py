"""The training loss (paper eq. 9-10).

    L = BCE(sigmoid(T^-1 W_{0->L}(x) x + b0), y)  +  lambda * <|W_{0->L}(x)|>

The first term is plain BCE-with-logits on one-hot targets (T and b0 live inside the model),
averaged over samples and classes.  The regulariser, as in the authors' release, averages |W| over
two rows per sample: the true class and one random other class.  W_{0->L} here is the linear map
from the encoded input to the summed class output *before* the division by T (eq. 7).

Exactness.  A row of W_{0->L}(x) is the input gradient of the network with every w(a_{l-1})
held fixed -- but for training its dependence on the parameters *and* on x through the
activations must stay in the graph.  We therefore run a second, linear stream v alongside the
normal forward pass: v_l = W_l(a_{l-1}) v_{l-1}, v_0 = x (a separate leaf), where W_l is computed
from the real activations a_{l-1} with the full graph.  d v_L / d v_0 is then exactly W_{0->L}(x),
and differentiating it again (create_graph=True) gives the exact parameter gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..models.coda_net import check_images, encode

if TYPE_CHECKING:
    from ..models import CoDANet


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits on one-hot targets (eq. 9)."""
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))


def forward_with_linear_map(model: CoDANet, x: torch.Tensor, rows: torch.Tensor):
    """Logits and the rows `rows` (N, R) of W_{0->L}(x) (N, R, 2C, H, W), differentiable."""
    a = encode(x)
    v0 = a.detach().clone().requires_grad_(True)
    v = v0
    for layer in model.blocks():
        z, alpha = layer.dynamic_weights(a)
        a, v = layer.apply_weights(a, z, alpha), layer.apply_weights(v, z, alpha)
    logits = a.sum((2, 3)) / model.temperature + model.logit_bias
    linear_out = v.sum((2, 3))                                   # W_{0->L}(x) v, at v = x
    maps = [torch.autograd.grad(linear_out.gather(1, rows[:, i:i + 1]).sum(), v0, create_graph=True)[0]
            for i in range(rows.shape[1])]
    return logits, torch.stack(maps, 1)


def other_classes(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None):
    """One random class != label per sample."""
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + offset.to(labels.device)) % num_classes


def coda_loss(model: CoDANet, x: torch.Tensor, labels: torch.Tensor, lam: float = 0.0,
              generator: torch.Generator | None = None, check: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Eq. 9-10.  Returns (loss, logits, parts) with parts = {'bce', 'reg'} as detached 0-d tensors
    (read them with .item() when needed: each read waits for the device)."""
    if lam == 0:
        logits = model(x, check=check)
        loss = bce_loss(logits, labels)
        return loss, logits, {"bce": loss.detach(), "reg": torch.zeros((), device=loss.device)}
    check_images(x, model.in_channels, values=check)
    rows = torch.stack([labels, other_classes(labels, model.num_classes, generator)], 1)
    logits, maps = forward_with_linear_map(model, x, rows)
    bce = bce_loss(logits, labels)
    reg = maps.abs().mean()
    return bce + lam * reg, logits, {"bce": bce.detach(), "reg": reg.detach()}
