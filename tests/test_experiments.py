"""The DAU experiments of the paper (Fig. 2 and 3) on real MNIST digits, reduced sizes."""
import numpy as np
import pytest
import torch

from codanet.experiments import digits, eigenvectors


@pytest.mark.parametrize("seed,triple", [(0, (0, 1, 2)), (1, (10, 25, 300)), (2, (7, 1500, 3999))])
def test_eigenvectors_of_AB_encode_the_clean_digits(seed, triple):
    r = eigenvectors.run(triple, samples=1536, noise=1.0, steps=300, seed=seed, progress=False)
    assert len(r["eigenvalues"]) == 3
    assert min(r["best_cosine"]) >= 0.85, r["best_cosine"]
    assert min(r["principal_angle_cosines"]) >= 0.95, r["principal_angle_cosines"]
    assert sorted(r["best_eigenvector"]) == [0, 1, 2]          # one eigenvector per digit


def test_eigenvectors_come_from_BA():
    torch.manual_seed(0)
    unit = eigenvectors.DAU(20, rank=3, bias=False).double()
    lam, vecs = eigenvectors.eigenvectors(unit)
    A, B, _ = unit.paper_matrices()
    M = (A[0] @ B).numpy()
    for i in range(len(lam)):
        assert np.allclose(M @ vecs[:, i], lam[i] * vecs[:, i], atol=1e-10)


def test_linear_rows_reproduce_outputs_and_match_materialised_weights():
    torch.manual_seed(0)
    model = digits.SingleLayer(rank=4).double()
    x = torch.randn(5, 784, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 2, 2])
    w = digits.linear_rows(model, x, y)
    out = model(x)
    assert torch.allclose((w * x).sum(1), out.gather(1, y[:, None])[:, 0] - digits.LOGIT_BIAS)
    materialised = model.daus.linear_weights(x)[torch.arange(5), y] / model.temperature
    assert torch.allclose(w, materialised)
    deep = digits.FiveLayerDAUNet().double()
    xi = torch.rand(5, 784, dtype=torch.float64)
    c5 = deep.contributions(xi, y)
    assert torch.allclose(c5.sum(1), deep(xi).gather(1, y[:, None])[:, 0] - digits.LOGIT_BIAS)
    w5 = digits.linear_rows(deep, xi, y)                       # = W_x - W_{1-x}
    lm = deep.net.explain(xi.view(-1, 1, 28, 28), target=y)["linear_map"]
    assert torch.allclose(w5, (lm[:, 0] - lm[:, 1]).flatten(1))


def test_single_dau_layer_learns_noisy_digits_and_aligns_with_correct_samples():
    """Reduced Fig. 2 (top): 10 DAUs, 3 epochs on fresh noise; w_label(x) aligns better with x on
    correctly classified digits than on misclassified ones."""
    (clean, y), (te_clean, te_noisy, te_y) = digits.noisy_mnist(0.3, seed=0)
    model = digits.train_classifier(digits.SingleLayer(rank=16), clean, y, 0.3, epochs=3, lr=2e-3, progress=False)
    a = digits.analyse(model, te_clean, te_noisy, te_y)
    assert a["accuracy"] > 0.8
    assert a["cos_w_input_correct"] > a["cos_w_input_misclassified"] + 0.2
