"""Explanations: CoDA contributions (eq. 8) and post-hoc baselines behind one interface,
`method.attribute(inputs, target=...)` -> (N, H, W); plots."""
from .baselines import CoDA, make_methods
from .plot import plot_contribution_map, plot_explanation_grid, show_contributions, show_image

__all__ = ["CoDA", "make_methods", "plot_contribution_map", "plot_explanation_grid", "show_contributions",
           "show_image"]
