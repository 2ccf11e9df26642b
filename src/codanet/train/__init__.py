"""Training: the loss (eq. 9-10), configs, checkpoints, the training loop."""
from .checkpoint import load_into, load_model, read_checkpoint, save_checkpoint
from .config import DEFAULTS, load_config_file, make_config, parse_set
from .loss import bce_loss, coda_loss, forward_with_linear_map
from .trainer import TrainingStopped, evaluate_accuracy, learning_rate, train

__all__ = ["train", "evaluate_accuracy", "learning_rate", "TrainingStopped", "coda_loss", "bce_loss",
           "forward_with_linear_map", "make_config", "load_config_file", "parse_set", "DEFAULTS",
           "save_checkpoint", "load_into", "load_model", "read_checkpoint"]
