"""How evenly a map covers the pixel phases of the strided layers (docs/evaluation.md, "Checkerboard").

A stride-s layer whose kernel size k is not divisible by s reaches the pixels of its input through
different numbers of kernel taps: with k = 3, s = 2 the even pixels are covered twice, the odd ones
once.  Two such layers (coda_cpu: 28 -> 14 -> 7) repeat the pattern with period P = 4, and the
contribution maps show it as a checkerboard.  The checkerboard index of a map is the coefficient of
variation of its mean |value| over the P x P phases (i mod P, j mod P): 0 when every phase carries
the same mass, sqrt(P^2 - 1) when one phase carries all of it.  Image content alone gives a small
non-zero index (compare the index of the images themselves).
"""
from __future__ import annotations

import torch


def phase_means(maps: torch.Tensor, period: int) -> torch.Tensor:
    """(N, H, W) maps -> (N, P, P): mean |map| over the pixels of each phase (i mod P, j mod P);
    H and W are cut to multiples of P."""
    if maps.dim() != 3:
        raise ValueError(f"phase_means expects maps of shape (N, H, W), got {tuple(maps.shape)}")
    n, h, w = maps.shape
    if period < 1 or period > min(h, w):
        raise ValueError(f"period must be in [1, {min(h, w)}] for {h}x{w} maps, got {period}")
    a = maps.abs()[:, :h - h % period, :w - w % period]
    a = a.unflatten(1, (-1, period)).unflatten(3, (-1, period))         # (N, H/P, P, W/P, P)
    return a.mean((1, 3))                                               # (N, P, P)


def checkerboard_index(maps: torch.Tensor, period: int) -> torch.Tensor:
    """(N, H, W) -> (N,): std / mean of the P*P phase means of each map (0 for an all-zero map)."""
    m = phase_means(maps, period).flatten(1).double()                  # (N, P*P)
    mean = m.mean(1)
    return torch.where(mean > 0, m.std(1, unbiased=False) / mean.clamp_min(1e-300), torch.zeros_like(mean))
