import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_model(name="coda_s", **kw):
    """A small-channel, small-rank version of a registered layout (fast tests)."""
    import codanet
    from codanet.models import model_config
    cfg = model_config(name)
    kw.setdefault("channels", [4] * (len(cfg["channels"]) - 1) + [cfg["num_classes"]])
    kw.setdefault("ranks", [3] * len(cfg["ranks"]))
    return codanet.create_model(name, **kw)
