"""Paper Fig. 3 / property P2: a single rank-3 DAU (b = 0) maximising its mean output over noisy
copies of 3 MNIST digits encodes the clean digits as the eigenvectors of AB.

Eigenvectors of AB (d x d, rank r) with non-zero eigenvalue come from the r x r matrix BA:
BA v = lambda v  =>  AB (A v) = lambda (A v).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..nn import DAU


def noisy_copies(digits: torch.Tensor, n: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """n samples (n, d): digit i % k plus zero-mean Gaussian noise of std `noise`."""
    k = len(digits)
    idx = torch.arange(n) % k
    return digits[idx] + noise * torch.randn(n, digits.shape[1], generator=generator)


def train_dau(samples: torch.Tensor, rank: int = 3, steps: int = 400, lr: float = 0.05, seed: int = 0,
              nonlinearity: str = "sq", progress: bool = False) -> DAU:
    """Maximise the mean DAU output over `samples` (Adam, full batch)."""
    torch.manual_seed(seed)
    unit = DAU(samples.shape[1], rank=rank, nonlinearity=nonlinearity, bias=False)
    opt = torch.optim.Adam(unit.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="maximising DAU output", disable=not progress, leave=False):
        loss = -unit(samples).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unit


def eigenvectors(unit: DAU, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Real, non-zero eigenvalues and unit-norm eigenvectors (columns, d x m) of AB.

    (A trained DAU's are all real; a complex pair, possible for random A and B, is left out.)
    """
    A_t, B_t, _ = unit.paper_matrices()
    A, B = A_t[0].double().numpy(), B_t.double().numpy()       # (d, r), (r, d)
    lam, v = np.linalg.eig(B @ A)
    scale = np.abs(lam).max()
    keep = (np.abs(lam) > tol * scale) & (np.abs(lam.imag) <= tol * scale)
    vecs = np.real(A @ v[:, keep])
    vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
    return np.real(lam[keep]), vecs


def principal_angle_cosines(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between span(U) and span(V) (columns), descending."""
    qu, _ = np.linalg.qr(U)
    qv, _ = np.linalg.qr(V)
    return np.linalg.svd(qu.T @ qv, compute_uv=False)


def run(digit_indices=(0, 1, 2), samples: int = 3072, noise: float = 1.0, steps: int = 400, seed: int = 0,
        progress: bool = True) -> dict:
    """The full experiment on 3 digits from MNIST-5k; returns the numbers and the arrays to plot."""
    from ..data.datasets import mnist_5k
    ds = mnist_5k("train")
    digits = ds.load_uint8(list(digit_indices)).flatten(1).float() / 255
    gen = torch.Generator().manual_seed(seed)
    noisy = noisy_copies(digits, samples, noise, gen)                # (samples, d)
    unit = train_dau(noisy, steps=steps, seed=seed, progress=progress)
    lam, vecs = eigenvectors(unit)
    D = digits.double().numpy().T                               # (d, 3)
    Dn = D / np.linalg.norm(D, axis=0, keepdims=True)
    cos = np.abs(Dn.T @ vecs)                                   # (3 digits, m eigenvectors)
    best = cos.argmax(1)
    return dict(
        digit_indices=list(digit_indices), labels=[int(ds.labels[i]) for i in digit_indices], samples=samples,
        noise=noise, seed=seed, eigenvalues=lam.tolist(), best_eigenvector=best.tolist(),
        best_cosine=[float(cos[i, best[i]]) for i in range(len(best))],
        principal_angle_cosines=principal_angle_cosines(D, vecs).tolist(),
        mean_output=float(unit(noisy).mean().detach()), mean_norm=float(noisy.norm(dim=1).mean()),
        _digits=digits, _samples=noisy[:3 * 3], _vectors=vecs, _best=best)


def plot(result: dict, path: str) -> str:
    """Fig. 3 layout: originals | noisy samples | best-matching eigenvectors of AB."""
    from ..explain.plot import new_figure, save_figure
    digits, samples, vecs, best = result["_digits"], result["_samples"], result["_vectors"], result["_best"]
    k = len(digits)
    fig, axes = new_figure(k, 5, figsize=(7.5, 1.6 * k))
    for i in range(k):
        axes[i, 0].imshow(digits[i].view(28, 28), cmap="gray")
        for j in range(3):
            axes[i, 1 + j].imshow(samples[i + k * j].view(28, 28), cmap="gray")
        v = vecs[:, best[i]].reshape(28, 28)
        v = v * np.sign(v.sum()) if v.sum() != 0 else v
        s = np.abs(v).max()
        axes[i, 4].imshow(v, cmap="bwr", vmin=-s, vmax=s)
        axes[i, 4].set_xlabel(f"|cos| = {result['best_cosine'][i]:.3f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for j, t in enumerate(["original", "noisy samples", "", "", "eigenvector of AB"]):
        axes[0, j].set_title(t, fontsize=9)
    fig.suptitle(f"rank-3 DAU, {result['samples']} samples, noise std {result['noise']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}
