"""`explanation_mode`: make every DAU layer linear in its input (paper eq. 5-8).

Inside the context each DAU layer detaches its dynamic weights w(a_{l-1}), so the network is the
linear map W_{0->L}(x) x with W held fixed at the current input; a single backward pass from an
output then yields exactly the row [W_{0->L}(x)]_j (eq. 7), and gradient * input the
contributions s_j (eq. 8).  Forward values are unchanged.
"""
from __future__ import annotations

import contextlib

from torch import nn

from .dau import _DAUBase


@contextlib.contextmanager
def explanation_mode(model: nn.Module):
    """Context manager: DAU layers of `model` hold w(x) fixed; restored on exit, also on error."""
    layers = [m for m in model.modules() if isinstance(m, _DAUBase)]
    previous = [m.explanation_mode for m in layers]
    try:
        for m in layers:
            m.explanation_mode = True
        yield model
    finally:
        for m, flag in zip(layers, previous):
            m.explanation_mode = flag
