"""`explanation_mode`: make every dynamic-linear layer linear in its input (paper eq. 5-8).

Inside the context each DAU layer detaches its dynamic weights w(a_{l-1}), so the network is the
linear map W_{0->L}(x) x with W held fixed at the current input; a single backward pass from an
output then yields exactly the row [W_{0->L}(x)]_j (eq. 7), and gradient * input the
contributions s_j (eq. 8).  Forward values are unchanged (docs/maths.md).

The protocol is open: any module with an `explanation_mode` attribute and a
`set_explanation_mode(on)` method takes part, so your own dynamic-linear layers (a B-cos layer,
an attention whose weights should be held fixed) join the explanation of a model built with them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class ExplainableLayer(Protocol):
    """A layer y = W(x) x that can hold W(x) fixed: `set_explanation_mode(True)` detaches W(x)."""

    explanation_mode: bool

    def set_explanation_mode(self, on: bool) -> None: ...


def explainable_layers(model: nn.Module) -> list[ExplainableLayer]:
    """The modules of `model` (itself included) that follow the explanation-mode protocol."""
    return [m for m in model.modules() if isinstance(m, ExplainableLayer)]


@contextlib.contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: every explainable layer of `model` holds W(x) fixed; each layer's previous
    state is restored on exit, also when the body raises."""
    layers = explainable_layers(model)
    previous = [bool(m.explanation_mode) for m in layers]
    try:
        for m in layers:
            m.set_explanation_mode(True)
        yield model
    finally:
        for m, flag in zip(layers, previous):
            m.set_explanation_mode(flag)
