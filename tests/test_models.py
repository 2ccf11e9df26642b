"""Models: registry, parameter counts, completeness of the contributions (eq. 8), bad input."""
import math

import pytest
import torch

import codanet
from conftest import tiny_model

SMALL_INPUT = {"coda_s": 16, "coda_m": 16, "coda_l": 24, "coda_xl": 16, "coda_cpu": 14}


def test_registry_lists_paper_sizes():
    names = codanet.list_models()
    assert {"coda_s", "coda_m", "coda_l", "coda_xl", "coda_cpu"} <= set(names)
    with pytest.raises(ValueError, match="unknown model"):
        codanet.create_model("coda_xxl", num_classes=10)


@pytest.mark.parametrize("name,classes,expected", [
    ("coda_s", 10, 7.78e6), ("coda_l", 100, 47.5e6), ("coda_m", 10, 28e6), ("coda_xl", 200, 62e6)])
def test_parameter_counts(name, classes, expected):
    m = codanet.create_model(name, num_classes=classes)
    assert abs(m.num_parameters() - expected) / expected < 0.01


def test_rank_ablation_counts():
    """The paper's rank ablation: ranks [f, f, 2f x7] give 1.08, 2.03, 3.95, 34.6 M."""
    for f, expected in [(4, 1.08e6), (8, 2.03e6), (16, 3.95e6), (144, 34.6e6)]:
        m = codanet.create_model("coda_s", num_classes=10, rank=f)
        assert abs(m.num_parameters() - expected) / expected < 0.01


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
@pytest.mark.parametrize("nonlinearity", ["sq", "l2"])
def test_contributions_are_complete_in_float64(name, nonlinearity):
    """sum of contributions == logit[target] - b0 (rel. error <= 1e-5), every registered model."""
    model = codanet.create_model(name, nonlinearity=nonlinearity).double()
    s = SMALL_INPUT[name]
    x = torch.rand(2, model.in_channels, s, s, dtype=torch.float64)
    for target in (None, 1, torch.tensor([0, 2])):
        out = model.explain(x, target=target)
        picked = out["logits"].gather(1, out["target"][:, None])[:, 0]
        total = out["contributions"].sum((1, 2))
        assert torch.allclose(total, picked - model.logit_bias, rtol=1e-5, atol=0)
        assert out["linear_map"].shape == (2, 2 * model.in_channels, s, s)
        assert out["contributions"].shape == (2, s, s)
    assert torch.equal(out["target"], torch.tensor([0, 2]))


def test_explain_float32_and_default_target_is_prediction():
    model = tiny_model("coda_cpu")
    x = torch.rand(3, 1, 28, 28)
    out = model.explain(x)
    assert torch.equal(out["target"], out["prediction"])
    assert torch.equal(out["prediction"], model(x).argmax(1))
    picked = out["logits"].gather(1, out["target"][:, None])[:, 0]
    assert torch.allclose(out["contributions"].sum((1, 2)), picked - model.logit_bias,
                          rtol=1e-4, atol=1e-5)
    assert torch.allclose(out["logits"], model(x), atol=1e-6)
    assert not any(m.explanation_mode for m in model.modules() if hasattr(m, "rank"))


def test_explain_linear_map_is_the_input_gradient_in_explanation_mode():
    model = tiny_model("coda_cpu").double()
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    out = model.explain(x, target=3)
    enc = torch.cat([x, 1 - x], 1).requires_grad_()
    with codanet.explanation_mode(model):
        logit = model.forward_encoded(enc)[0, 3]
    grad = torch.autograd.grad(logit, enc)[0]
    assert torch.allclose(grad, out["linear_map"], rtol=1e-10, atol=1e-14)


def test_temperature_and_bias_attributes():
    m = codanet.create_model("coda_s", num_classes=10, temperature=64)
    assert m.temperature == 64.0 and isinstance(m.temperature, float)
    assert math.isclose(m.logit_bias, math.log(0.1 / 0.9))
    assert m.layers[-1].out_channels == 10 and len(m.layers) == 9
    with pytest.raises(ValueError, match="temperature"):
        codanet.create_model("coda_s", num_classes=10, temperature=-1)


@pytest.mark.parametrize("bad,match", [
    (torch.rand(2, 1, 16, 16), r"\(N, 3, H, W\)"),              # wrong channel count
    (torch.rand(3, 16, 16), r"\(N, 3, H, W\)"),                 # wrong rank
    (torch.randint(0, 255, (1, 3, 16, 16)), "dtype"),            # integer dtype
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    (torch.rand(1, 3, 16, 16) * 2, r"\[0, 1\]"),                 # outside [0, 1]
    (torch.rand(1, 3, 16, 16) - 0.5, r"\[0, 1\]"),
    ("an image", "tensor"),
])
def test_bad_input_raises_value_error(bad, match):
    model = tiny_model("coda_s")
    with pytest.raises(ValueError, match=match):
        model(bad)
    with pytest.raises(ValueError, match=match):
        model.explain(bad)


def test_bad_targets():
    model = tiny_model("coda_s")
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="target"):
        model.explain(x, target=10)
    with pytest.raises(ValueError, match="target"):
        model.explain(x, target=torch.tensor([1, 2, 3]))


def test_torch_hub_local_load():
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    m = torch.hub.load(repo, "coda_s", source="local", num_classes=10)
    assert isinstance(m, codanet.CoDANet) and m.num_classes == 10


@pytest.mark.parametrize("name,size", [("coda_cpu", 14), ("coda_s", 16), ("coda_l", 24)])
def test_explain_all_equals_single_class_explanations(name, size):
    model = codanet.create_model(name, num_classes=5, channels=[4] * 8 + [5], ranks=[3] * 9).double()
    x = torch.rand(2, model.in_channels, size, size, dtype=torch.float64)
    allc = model.explain_all(x)
    assert allc["contributions"].shape == (2, 5, size, size)
    for k in range(5):
        one = model.explain(x, target=k)
        assert torch.allclose(allc["linear_map"][:, k], one["linear_map"], rtol=1e-9, atol=1e-12)
        assert torch.allclose(allc["contributions"][:, k], one["contributions"], rtol=1e-9, atol=1e-12)
    assert torch.allclose(allc["logits"], one["logits"], rtol=1e-12)


@pytest.mark.parametrize("name", codanet.list_models())
def test_layer_contributions_sum_to_logit_for_every_layer(name):
    """explain(x, layer=l): contributions of a_l sum to logit - b0 for every l (eq. 6-8)."""
    torch.manual_seed(0)
    model = codanet.create_model(name).double()
    x = torch.rand(2, model.in_channels, 16, 16, dtype=torch.float64)
    for layer in range(len(model.layers) + 1):
        out = model.explain(x, target=[1, 0], layer=layer)
        c_l = model.layers[layer - 1].out_channels if layer else 2 * model.in_channels
        assert out["linear_map"].shape[:2] == (2, c_l) and out["contributions"].ndim == 3
        expected = out["logits"].gather(1, out["target"][:, None])[:, 0] - model.logit_bias
        assert torch.allclose(out["contributions"].sum((1, 2)), expected, rtol=1e-9, atol=1e-9), (name, layer)


def test_explain_all_at_a_layer_equals_explain():
    model = codanet.create_model("coda_cpu", num_classes=4, channels=[4] * 8 + [4], ranks=[3] * 9).double()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    for layer in (1, 4, 9):
        allc = model.explain_all(x, layer=layer)
        for k in range(4):
            one = model.explain(x, target=k, layer=layer)
            assert torch.allclose(allc["contributions"][:, k], one["contributions"], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="layer"):
        model.explain(x, layer=10)


def test_targets_by_class_name_and_clear_errors():
    model = tiny_model("coda_s")
    model.class_names = [f"c{i}" for i in range(10)]
    x = torch.rand(2, 3, 16, 16)
    assert model.explain(x, target="c3")["target"].tolist() == [3, 3]
    assert model.explain(x, target=["c1", 2])["target"].tolist() == [1, 2]
    for bad in ("3", "Trouser", {"a": 1}, 1.5, [0.5, 1]):
        with pytest.raises(ValueError, match="target"):
            model.explain(x, target=bad)
