"""Units and layers: Dynamic Alignment Units (DAU), dense and convolutional layers of them."""
from .conv import DAUConv2d
from .dau import DAU, DAULinear
from .explanation import ExplainableLayer, explainable_layers, explanation_mode
from .rescale import EPS, rescale, rescale_factor

__all__ = ["DAU", "DAULinear", "DAUConv2d", "explanation_mode", "ExplainableLayer", "explainable_layers",
           "rescale", "rescale_factor", "EPS"]
