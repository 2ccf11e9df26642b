"""Figures of the metrics in the paper's style (Fig. 6): localisation bars, removal curves."""
from __future__ import annotations

from matplotlib.artist import setp

from ..explain.plot import new_figure, save_figure


def plot_localisation(results: dict, path: str, title: str = "") -> str:
    """Bar per method: mean localisation with its 95 % bootstrap interval (+-1 std where no
    interval was computed); dashed line: uniform 1/n^2."""
    names = list(results)
    means = [results[m]["mean"] for m in names]
    if all("ci95" in results[m] for m in names):
        errors = [[mu - results[m]["ci95"][0] for m, mu in zip(names, means)],
                  [results[m]["ci95"][1] - mu for m, mu in zip(names, means)]]
    else:
        errors = [[results[m]["std"] for m in names]] * 2
    fig, ax = new_figure(figsize=(1 + 0.75 * len(names), 3.2))
    colors = ["tab:red" if m == "CoDA" else "tab:gray" for m in names]
    ax.bar(names, means, yerr=errors, color=colors, capsize=3)
    n = results[names[0]]["grid_size"]
    ax.axhline(1 / n ** 2, ls="--", color="k", lw=0.8, label=f"uniform (1/{n * n})")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"localisation ({n}x{n} grids)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pixel_removal(results: dict, path: str, title: str = "") -> str:
    """Mean target probability vs. fraction of removed pixels, one curve per method."""
    fig, ax = new_figure(figsize=(4.6, 3.4))
    others = iter([f"tab:{c}" for c in ("blue", "orange", "green", "purple", "brown", "pink", "gray", "olive", "cyan")]
                  + ["black", "gold"])                          # red is CoDA's alone
    for name, r in results.items():
        ax.plot([100 * f for f in r["fractions"]], r["curve"], lw=2.2 if name == "CoDA" else 1.2,
                color="tab:red" if name == "CoDA" else next(others, None), label=f"{name} ({r['area']:.3f})")
    order = "most" if next(iter(results.values()))["most_first"] else "least"
    ax.set_xlabel(f"% of pixels removed ({order} important first)")
    ax.set_ylabel("mean target probability")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
