"""CoDA-Net models and their registry."""
from .coda_net import CoDANet, check_images, encode
from .configs import CONFIGS, LOGIT_BIAS
from .registry import create_model, list_models, model_config

__all__ = ["CoDANet", "encode", "check_images", "create_model", "list_models", "model_config",
           "CONFIGS", "LOGIT_BIAS"]
