"""Training: the loss (eq. 9-10), configs, checkpoints, the training loop."""
from .checkpoint import average_models, has_checkpoint, load_into, load_model, read_checkpoint, save_checkpoint
from .config import DEFAULTS, KEYS, load_config_file, make_config, parse_set
from .loss import bce_loss, coda_loss, forward_with_linear_map
from .setup import evaluate_accuracy, learning_rate
from .trainer import Run, TrainingStopped, train

__all__ = ["train", "Run", "evaluate_accuracy", "learning_rate", "TrainingStopped", "coda_loss", "bce_loss",
           "forward_with_linear_map", "make_config", "load_config_file", "parse_set", "DEFAULTS", "KEYS",
           "save_checkpoint", "has_checkpoint", "average_models", "load_into", "load_model", "read_checkpoint"]
