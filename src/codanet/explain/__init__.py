"""Explanations: CoDA contributions (eq. 8), post-hoc baselines, plots."""
from .contributions import CoDAContributions
from .plot import plot_contribution_map, plot_explanation_grid, show_contributions, show_image

__all__ = ["CoDAContributions", "plot_contribution_map", "plot_explanation_grid", "show_contributions", "show_image"]
