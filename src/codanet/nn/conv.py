"""The convolutional DAU layer (paper sec. 3.3): one DAU per output channel, applied to the
input patch (d = C_in*k*k values) at every position.

The maths is the low-rank identity of `dau.py`; here `_project` is a convolution, so
z = Bx is a convolution with r output channels and all A'_j^T x together one convolution with
C_out*(r+1) output channels.  Cost ~ C_out*(r+1)*d multiply-adds per position; the C_out*d
values of all w_j(x) are never held (the literal form is `reference.dau_conv2d_reference`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .dau import _DAUBase
from .kernels import matmul_rows


class DAUConv2d(_DAUBase):
    """Convolutional layer of DAUs with a shared B of rank `rank`.

    Args mirror `nn.Conv2d` (`rank` by keyword: DAUConv2d(16, 32, 3, rank=8, stride=2));
    `padding=None` means (kernel_size - 1) // 2.
    Input (N, C_in, H, W) -> output (N, C_out, H', W'), H' as for `nn.Conv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, rank: int,
                 stride: int = 1, padding: int | None = None, nonlinearity: str = "sq",
                 bias: bool = True):
        for name, value, low in (("in_channels", in_channels, 1), ("kernel_size", kernel_size, 1),
                                 ("stride", stride, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"DAUConv2d: {name} must be an int >= {low}, got {value!r}")
        if padding is None:
            padding = (kernel_size - 1) // 2
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"DAUConv2d: padding must be an int >= 0 or None, got {padding!r}")
        super().__init__(out_channels, rank, (in_channels, kernel_size, kernel_size), nonlinearity, bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DAUConv2d expects input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, stride=self.stride, padding=self.padding)   # NHWC in memory
        return y.permute(0, 2, 3, 1).flatten(1, 2)                          # (N, H'*W', m)

    def _output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = (x.shape[2] + 2 * self.padding - self.kernel_size) // self.stride + 1
        return y.unflatten(1, (h, -1)).permute(0, 3, 1, 2)                  # (N, out, H', W')

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
                f"nonlinearity={self.nonlinearity!r}, bias={self.b is not None}")

    # -- explanations for many outputs at once (used by CoDANet.explain_all) ------------
    def weights_per_position(self, z: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """w_j(x) = alpha_j A'_j z' at every position, materialised: (N, P, out, d).

        Only for explaining many outputs at once: back-projecting K gradients through the
        materialised weights costs K*out*d per position instead of K*out*(r+1)*d.  With
        alpha=None the scale alpha_j is left out (`backproject` can apply it to the gradient,
        K*out values per position instead of out*d).
        """
        Ap = self.augmented_A().flatten(2)                                  # (out, r', d)
        w = matmul_rows(z, Ap.transpose(1, 2).flatten(0, 1)).unflatten(-1, (Ap.shape[0], Ap.shape[2]))
        return w if alpha is None else alpha.unsqueeze(-1) * w

    def backproject(self, grad: torch.Tensor, weights: torch.Tensor, input_shape: Sequence[int],
                    alpha: torch.Tensor | None = None) -> torch.Tensor:
        """Transpose of the layer with fixed weights, for K output gradients at once.

        grad: (N, H', W', K, out), positions-major like `weights` -> (N, H, W, K, C_in).
        Row (j, position) of W_l(x) is w_j at that position, so the input gradient is
        sum_j grad_j * w_j (one small matrix product per position), scattered back to the pixels
        each patch came from (the adjoint of unfold).  `alpha` (N, P, out): the scales, when
        `weights` come without them.
        """
        n, ho, wo, k, _ = grad.shape
        ks, s, p = self.kernel_size, self.stride, self.padding
        g = grad.reshape(n, ho * wo, k, -1)                                 # (N, P, K, out)
        if alpha is not None:
            g = g * alpha.unsqueeze(2)
        patches = (g @ weights).view(n, ho, wo, k, self.in_channels, ks, ks)
        # Adjoint of unfold: kernel offset (dy, dx) of output pixel (y, x) came from padded input
        # pixel (s*y + dy, s*x + dx).  One strided add per offset, in this channels-last layout,
        # is ~3x faster than F.fold here (which needs the patches transposed first).
        h, w = input_shape[-2:]
        out = patches.new_zeros(n, max(s * (ho - 1) + ks, h + 2 * p), max(s * (wo - 1) + ks, w + 2 * p),
                                k, self.in_channels)
        for dy in range(ks):
            for dx in range(ks):
                out[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s] += patches[..., dy, dx]
        return out[:, p:p + h, p:p + w]
