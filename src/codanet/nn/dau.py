"""Dynamic Alignment Units (paper sec. 3.1, eq. 1) and a dense layer of them.

    DAU(x) = g(A B x + b)^T x = w(x)^T x,    x in R^d, A in R^{d x r}, B in R^{r x d}, b in R^d.

A layer of k DAUs shares one B (sec. 3.4); unit j has its own A_j and b_j.

The low-rank identity (docs/maths.md sec. 2).  With z = B x and the augmented code z' = [z, 1]
and A'_j = [A_j, b_j] (a d x (r+1) matrix), u_j = A_j z + b_j = A'_j z', hence

    u_j^T x   = z'^T (A'_j^T x)            (all A'_j^T x at once: one linear map / convolution)
    ||u_j||^2 = z'^T (A'_j^T A'_j) z'      (an (r+1) x (r+1) Gram matrix per unit)
    DAU_j(x)  = alpha(||u_j||) * u_j^T x   (eq. 1 with g(u) = alpha(||u||) u, eq. 2)

so a layer costs k*(r+1)*d multiply-adds per input and never holds the k*d values of all w_j(x).
`_DAUBase` holds this maths once; `DAULinear` (vectors) and `DAUConv2d` (image patches, in
`conv.py`) differ only in how they apply a weight to their input (`_project`).

Explanation mode (eq. 7-8): when `explanation_mode` is set (see `explanation.py`), the dynamic
weights w(x) -- here z' and alpha -- are detached, so the layer is linear in its input and the
gradient of an output w.r.t. the input is exactly the row of W(x).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .kernels import contract, gram_form, matmul_rows
from .rescale import check_nonlinearity, rescale_factor


class _DAUBase(nn.Module):
    """Shared parameters and maths of a layer of DAUs; subclasses define `_project`.

    Parameters, with `patch` the shape of one input (d = prod(patch) values):
      A_T: (out, rank, *patch) -- A_j^T for every unit j (A_j is d x r in eq. 1; stored transposed
                                  so that A_j^T x is one linear map / convolution)
      B:   (rank, *patch)      -- shared by all units
      b:   (out, *patch)       -- or None when bias=False
    `paper_matrices()` returns them in the paper's layout.
    """

    explanation_mode: bool = False           # the explanation-mode protocol (explanation.py)

    def __init__(self, out_units: int, rank: int, patch: tuple[int, ...], nonlinearity: str, bias: bool):
        super().__init__()
        if out_units < 1 or rank < 1:
            raise ValueError(f"out units and rank must be >= 1, got {out_units} and {rank}")
        self.nonlinearity = check_nonlinearity(nonlinearity)
        self.rank = rank
        self.B = nn.Parameter(torch.empty(rank, *patch))
        self.A_T = nn.Parameter(torch.empty(out_units, rank, *patch))
        self.b = nn.Parameter(torch.empty(out_units, *patch)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random initial weights (as on `nn.Conv2d`; the sanity check re-draws layers with it).
        z = Bx has variance ~||x||^2/d per entry and u = Az has ||u|| ~ ||x||, so the SQ units
        start in their sensitive range (alpha*||u|| ~ 1/2 for ||x|| ~ 1); b starts at 0."""
        d, r = self.B[0].numel(), self.rank
        with torch.no_grad():
            self.B.copy_(torch.randn(self.B.shape, generator=generator) / math.sqrt(d))
            self.A_T.copy_(torch.randn(self.A_T.shape, generator=generator) / math.sqrt(r))
            if self.b is not None:
                self.b.zero_()

    # -- to be defined by subclasses ---------------------------------------------------
    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Apply `weight` (m, *patch) to every input patch: -> (N, P, m), P positions."""
        raise NotImplementedError

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Turn the positions-major output (N, P, out) into the layer's output layout."""
        raise NotImplementedError

    # -- the DAU maths -----------------------------------------------------------------
    @property
    def out_units(self) -> int:
        return self.A_T.shape[0]

    def augmented_A(self) -> torch.Tensor:
        """A'_j^T = [A_j, b_j]^T stacked over units: (out, r+1, *patch) (r when bias=False)."""
        if self.b is None:
            return self.A_T
        return torch.cat([self.A_T, self.b.unsqueeze(1)], dim=1)

    def dynamic_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input-dependent part of w_j(x) = alpha_j * A'_j z' at every position.

        Returns z' = [Bx, 1]: (N, P, r') and alpha(||u_j||): (N, P, out), with
        ||u_j||^2 = z'^T G_j z' from the Gram matrices G_j = A'_j^T A'_j.
        """
        z = self._project(x, self.B)
        if self.b is not None:
            z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        # The norms stay in float32 (or float64) even under bf16/fp16 autocast.
        with torch.autocast(z.device.type, enabled=False):
            zn = z if z.dtype in (torch.float32, torch.float64) else z.float()
            Ap = self.augmented_A().flatten(2).to(zn.dtype)           # (out, r', d)
            gram = Ap @ Ap.transpose(1, 2)                            # (out, r', r')
            out, r1 = gram.shape[:2]
            if r1 < out:    # cheaper: outer products z'z'^T (r'^2 per position), one GEMM with all G_j
                zz = (zn.unsqueeze(-1) * zn.unsqueeze(-2)).flatten(-2)            # (N, P, r'^2)
                squared_norm = matmul_rows(zz, gram.flatten(1))                   # (N, P, out)
            else:           # cheaper: G_j z' for every unit (out*r' per position), then z'^T (G_j z')
                squared_norm = gram_form(zn, gram)
            return z, rescale_factor(squared_norm, self.nonlinearity)

    def apply_weights(self, x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """w_j^T x = alpha_j * z'^T (A'_j^T x) for given dynamic weights: linear in x."""
        Ap = self.augmented_A()
        projected = self._project(x, Ap.flatten(0, 1)).unflatten(-1, Ap.shape[:2])  # (N,P,out,r')
        return self._output(alpha * contract(projected, z), x)

    def set_explanation_mode(self, on: bool) -> None:
        """Hold w(x) fixed (detached) in forward: the layer becomes linear in x (eq. 7)."""
        self.explanation_mode = bool(on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, alpha = self.dynamic_weights(x)
        if self.explanation_mode:
            z, alpha = z.detach(), alpha.detach()
        return self.apply_weights(x, z, alpha)

    def paper_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A: (out, d, r), B: (r, d), b: (out, d)) in the paper's notation (eq. 1).

        The d input dimensions are ordered as `torch.nn.functional.unfold` orders a patch
        (channel, then kernel row, then kernel column).  b is zeros when bias=False.
        """
        A = self.A_T.detach().flatten(2).transpose(1, 2)                   # (out, d, r): A_j
        B = self.B.detach().flatten(1)
        b = self.b.detach().flatten(1) if self.b is not None else A.new_zeros(A.shape[:2])
        return A, B, b


class DAULinear(_DAUBase):
    """`out_features` DAUs over a d-dimensional input with a shared B (sec. 3.2).

    Input (N, in_features) -> output (N, out_features); output j is w_j(x)^T x.
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int,
                 nonlinearity: str = "sq", bias: bool = True):
        super().__init__(out_features, rank, (in_features,), nonlinearity, bias)
        self.in_features, self.out_features = in_features, out_features

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"DAULinear expects input of shape (N, {self.in_features}), got {tuple(x.shape)}"
            )
        return (x @ weight.t()).unsqueeze(1)                   # one "position"

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y.squeeze(1)

    def linear_weights(self, x: torch.Tensor) -> torch.Tensor:
        """w_j(x) for every unit, materialised: (N, out, d) -- for plots and analysis."""
        z, alpha = self.dynamic_weights(x)                       # (N, 1, r'), (N, 1, out)
        return alpha[:, 0, :, None] * torch.einsum("jsd,ns->njd", self.augmented_A(), z[:, 0])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, nonlinearity={self.nonlinearity!r}, bias={self.b is not None}")


class DAU(DAULinear):
    """A single Dynamic Alignment Unit (eq. 1): (N, d) -> (N,)."""

    def __init__(self, in_features: int, *, rank: int, nonlinearity: str = "sq", bias: bool = True):
        super().__init__(in_features, 1, rank=rank, nonlinearity=nonlinearity, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(-1)
