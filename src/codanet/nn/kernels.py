"""The fast primitives the DAU layer (`dau.py`) is written in; each equals a one-line formula.

  contract(M, v)            y_j = sum_s M_js v_s per position        (u_j^T x = z'^T (A'_j^T x))
  gram_form(z, G)           q_j = z^T G_j z, symmetric G_j            (||u_j||^2 from Gram matrices)
  matmul_rows(x, W)         x @ W^T at every position                 (G_j z', w_j = A'_j z')

They exist for speed only (tests compare each with its formula): a lean custom backward for the
first two, and routes through the kernels that run fastest on CPU -- oneDNN's 1x1 convolution
instead of torch.mm, the (1 x S)(S x J) form of a batched matrix-vector product.
"""
from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_weight


def _matvec(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(..., J, S) x (..., S) -> (..., J), written as v^T M^T: MKL's batched (1 x S)(S x J)
    product is 2.5x faster on CPU than the equal (J x S)(S x 1) one (memory-bound either way)."""
    return (v.unsqueeze(-2) @ M.transpose(-1, -2)).squeeze(-2)


class _Contract(torch.autograd.Function):
    """y[..., j] = sum_s M[..., j, s] v[..., s] with a lean backward (no saved temporaries)."""

    @staticmethod
    def forward(ctx: Any, M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(M, v)
        return _matvec(M, v)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        M, v = ctx.saved_tensors
        dM = grad.unsqueeze(-1) * v.unsqueeze(-2) if ctx.needs_input_grad[0] else None
        dv = (grad.unsqueeze(-2) @ M).squeeze(-2) if ctx.needs_input_grad[1] else None
        return dM, dv


def contract(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product (..., J, S) x (..., S) -> (..., J)."""
    return cast(torch.Tensor, _Contract.apply(M, v))


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """View x (..., P, S) as channels-last images (B, S, P, 1): S channels at P positions."""
    return x.reshape(-1, x.shape[-2], 1, x.shape[-1]).permute(0, 3, 1, 2)


def matmul_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T for every position: x (..., P, S), weight (O, S) -> (..., P, O).

    Computed as a 1x1 convolution, so that PyTorch runs it with oneDNN: on this project's CPU
    (AMD EPYC, torch 2.13) that is 2-2.5x faster than torch.mm for the skinny products of the DAU
    layer (inner size r+1 = 9..65).  Without positions (P = 1) a plain matmul is faster."""
    if x.ndim < 3 or x.shape[-2] == 1:
        return x @ weight.t()
    y = F.conv2d(_as_images(x), weight[:, :, None, None])               # (B, O, P, 1)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


def matmul_rows_weight_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The weight gradient of `matmul_rows`: sum over rows of grad_m x_m^T -> (O, S)."""
    o, s = grad.shape[-1], x.shape[-1]
    if x.ndim < 3 or x.shape[-2] == 1:
        return grad.reshape(-1, o).t() @ x.reshape(-1, s)
    w = conv2d_weight(_as_images(x), (o, s, 1, 1), _as_images(grad))
    return w.view(o, s)


class _GramForm(torch.autograd.Function):
    """q[..., j] = z^T G_j z for symmetric G_j, using the symmetry in the backward pass.

    Forward: G_j z for every unit (one GEMM), then z^T (G_j z).  Backward: dq/dz = 2 G_j z
    reuses the forward's G_j z, so the backward costs one GEMM (dq/dG_j = z z^T) instead of
    the two that autograd would run -- a third less work for the Gram term in training.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        out, r1 = gram.shape[:2]
        gz = matmul_rows(z, gram.flatten(0, 1)).unflatten(-1, (out, r1))  # G_j z: (..., out, r')
        ctx.save_for_backward(z, gz)
        return _matvec(gz, z)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, gz = ctx.saved_tensors
        dz = 2 * (grad.unsqueeze(-2) @ gz).squeeze(-2)                    # sum_j q_j' 2 G_j z
        outer = (grad.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)          # (..., out*r')
        dgram = matmul_rows_weight_grad(z, outer)                           # sum q_j' z z^T
        return dz, dgram.view(grad.shape[-1], z.shape[-1], z.shape[-1])


def gram_form(z: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """z'^T G_j z' for every unit j: z (..., r'), symmetric gram (out, r', r') -> (..., out)."""
    return cast(torch.Tensor, _GramForm.apply(z, gram))
