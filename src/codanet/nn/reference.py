"""Literal, materialised implementations of eq. 1, 5 and 7 -- the reference for tests and
benchmarks.  They build w_j(x) = g(A_j B x + b_j) for every unit and position explicitly
(the authors' release does this), which costs C_out*d values per position.  Slow by design.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv import DAUConv2d
from .rescale import rescale

if TYPE_CHECKING:
    from ..models import CoDANet


def dau_reference(x: Tensor, A: Tensor, B: Tensor, b: Tensor, nonlinearity: str = "sq") -> Tensor:
    """Eq. 1 for k units sharing B.  x: (N, d), A: (k, d, r), B: (r, d), b: (k, d) -> (N, k)."""
    u = torch.einsum("kdr,rn->nkd", A, B @ x.t()) + b          # (N, k, d)  u_j = A_j B x + b_j
    w = rescale(u, nonlinearity)                                # w_j(x) = g(u_j)
    return (w * x.unsqueeze(1)).sum(-1)                         # w_j(x)^T x


def dau_conv2d_weights(x: Tensor, A: Tensor, B: Tensor, b: Tensor, kernel_size: int, stride: int, padding: int,
                       nonlinearity: str = "sq") -> tuple[Tensor, Tensor]:
    """All w_j(x) of a conv DAU layer, materialised: (N, C_out, d, L) with L positions."""
    patches = F.unfold(x, kernel_size, padding=padding, stride=stride)   # (N, d, L)
    u = torch.einsum("kdr,nrl->nkdl", A, B @ patches) + b[None, :, :, None]
    return rescale(u, nonlinearity, dim=2), patches


def dau_conv2d_reference(x: Tensor, A: Tensor, B: Tensor, b: Tensor, kernel_size: int, stride: int, padding: int,
                         nonlinearity: str = "sq") -> Tensor:
    """Conv DAU layer by materialising w_j(x) at every position.  x: (N, C, H, W)."""
    w, patches = dau_conv2d_weights(x, A, B, b, kernel_size, stride, padding, nonlinearity)
    out = (w * patches.unsqueeze(1)).sum(2)                     # (N, C_out, L)
    h = (x.shape[2] + 2 * padding - kernel_size) // stride + 1
    return out.unflatten(2, (h, out.shape[2] // h))


def layer_matrix(layer: DAUConv2d, a: Tensor, matrices: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """W_l(a) of eq. 5 for one sample a: (C_in, H, W), as a dense (C_out*H'*W', C_in*H*W) matrix.

    Row (j, position) is w_j at that position, scattered into the input's coordinates
    (F.fold is the adjoint of unfold).  Built from the materialised weights; `matrices`
    (A, B, b) in the paper's notation replace layer.paper_matrices() (e.g. to keep gradients).
    """
    A, B, b = (t.to(a.dtype) for t in (matrices or layer.paper_matrices()))
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    w, _ = dau_conv2d_weights(a.unsqueeze(0), A, B, b, k, s, p, layer.nonlinearity)
    w = w[0]                                                     # (C_out, d, L)
    c_out, d, L = w.shape
    rows = w.permute(0, 2, 1).reshape(c_out * L, d)
    # Row r only touches its own position: place its d values into an unfold layout, then fold.
    idx = torch.arange(c_out * L)
    mask = (idx[:, None] % L == torch.arange(L)).to(a.dtype)          # (rows, L) one-hot position
    cols = rows[:, :, None] * mask[:, None, :]
    return F.fold(cols, a.shape[1:], k, padding=p, stride=s).flatten(1)


class MaterialisedDAUConv2d(torch.nn.Module):
    """A DAUConv2d that runs the literal eq. 1 (for whole-model benchmarks); same parameters."""

    def __init__(self, layer: DAUConv2d):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        l = self.layer  # noqa: E741
        A, B = l.A_T.flatten(2).transpose(1, 2), l.B.flatten(1)
        b = l.b.flatten(1) if l.b is not None else A.new_zeros(A.shape[:2])
        return dau_conv2d_reference(x, A, B, b, l.kernel_size, l.stride, l.padding, l.nonlinearity)


def materialised_model(model: CoDANet) -> CoDANet:
    """A deep copy of a CoDANet whose layers run the materialised reference."""
    import copy
    ref = copy.deepcopy(model)
    ref.layers = torch.nn.Sequential(*[MaterialisedDAUConv2d(layer) for layer in ref.blocks()])
    return ref
