"""The model-inherent contributions (eq. 8) as a Captum-style attribution object, so metrics
treat them exactly like any post-hoc method:  CoDAContributions(model).attribute(x, target=...).
"""
from __future__ import annotations

import torch


class CoDAContributions:
    """Per-pixel contributions s_target(x) = [W_{0->L}(x)]_target * [x, 1-x], summed over channels.

    `attribute` returns (N, H, W); the map sums to logit[target] - b0 for every sample.
    """

    name = "CoDA"
    evaluations_per_image = 1     # one forward + one backward pass

    def __init__(self, model):
        self.model = model

    def attribute(self, inputs: torch.Tensor, target=None) -> torch.Tensor:
        return self.model.explain(inputs, target=target)["contributions"]

    def attribute_all_classes(self, inputs: torch.Tensor) -> torch.Tensor:
        """Contributions for every class: (N, K, H, W), from one batched backward pass."""
        return self.model.explain_all(inputs)["contributions"]
