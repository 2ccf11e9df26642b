"""torch.hub entry points: torch.hub.load(repo_dir, 'coda_s', source='local', num_classes=10)."""
import os
import sys

dependencies = ["torch"]

try:
    import codanet
except ImportError:                      # a plain checkout: use the src layout directly
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    import codanet


def _entry(name):
    def build(**kwargs):
        return codanet.create_model(name, **kwargs)
    build.__name__ = name
    build.__doc__ = f"CoDA-Net {name!r}; keyword arguments go to codanet.create_model."
    return build


for _name in codanet.list_models():
    globals()[_name] = _entry(_name)
