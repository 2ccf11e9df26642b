"""The norm-rescaling functions g(u) = alpha(||u||) * u of a DAU (paper eq. 2).

Both keep ||g(u)|| <= 1, which gives the bound |DAU(x)| <= ||x|| of eq. 3:

* SQ (squashing):  g(u) = u * ||u|| / (1 + ||u||^2)   ->  alpha = ||u|| / (1 + ||u||^2)
* L2 (unit norm):  g(u) = u / ||u||                   ->  alpha = 1 / ||u||

Epsilon.  The authors' release divides by ||u|| without protection, so a zero vector gives NaN
(and the gradient of ||u|| at 0 is undefined).  We evaluate the norm as

    ||u||_eps = sqrt(max(||u||^2, 0) + EPS),   EPS = 1e-12,

everywhere a norm is needed.  The clamp at 0 matters for the low-rank layer, which computes
||u||^2 from Gram matrices and can be a few ulps below zero when u ~ 0.  With the epsilon,
SQ gives alpha*||u|| = ||u|| ||u||_eps / (1 + ||u||_eps^2) < 1 and L2 gives ||u|| / ||u||_eps <= 1,
so the bound of eq. 3 still holds exactly, and g(0) = 0 with a finite gradient.
"""
from __future__ import annotations

import torch

EPS = 1e-12
NONLINEARITIES = ("sq", "l2")


def check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be one of {NONLINEARITIES} (paper eq. 2), got {nonlinearity!r}"
        )
    return nonlinearity


def rescale_factor(squared_norm: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """alpha(||u||) from ||u||^2, so that g(u) = alpha * u (eq. 2)."""
    norm = torch.sqrt(squared_norm.clamp_min(0) + EPS)
    if nonlinearity == "sq":
        return norm / (1 + norm * norm)
    if nonlinearity == "l2":
        return 1 / norm
    raise ValueError(check_nonlinearity(nonlinearity))


def rescale(u: torch.Tensor, nonlinearity: str, dim: int = -1) -> torch.Tensor:
    """g(u) for vectors u along `dim` (used by the literal reference implementation)."""
    return rescale_factor((u * u).sum(dim, keepdim=True), nonlinearity) * u
