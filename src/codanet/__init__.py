"""codanet: Convolutional Dynamic Alignment Networks (Boehle, Fritz, Schiele; CVPR 2021).

Data flow, one file each:  nn/dau.py (the unit, eq. 1-3) -> nn/conv.py (conv layer) ->
models/coda_net.py (the network, eq. 5-9, `explain`) -> explain/ (contribution maps, baselines,
plots) -> evaluate/ (the paper's metrics).
"""
from . import train
from .models import CoDANet, create_model, list_models
from .nn import DAU, DAUConv2d, DAULinear, explanation_mode
from .train.checkpoint import load_model
from .train.finetune import finetune

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_model", "train", "finetune", "CoDANet", "DAU", "DAULinear", "DAUConv2d",
           "explanation_mode", "__version__"]
