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


def test_gini_index_of_maps():
    from codanet.experiments.study import gini
    n = 16
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 1, 2] = -3.0                                     # |map|: sign does not matter
    maps = torch.cat([torch.ones(1, 4, 4), one_hot, torch.zeros(1, 4, 4)])
    assert gini(maps).tolist() == pytest.approx([0.0, (n - 1) / n, 0.0])
    x = torch.rand(3, 5, 5)
    assert torch.allclose(gini(7 * x), gini(x)) and ((gini(x) > 0) & (gini(x) < 1)).all()
    # the textbook form: mean absolute difference over twice the mean
    v = x[0].flatten().double()
    assert float(gini(x[:1])) == pytest.approx(float((v[:, None] - v[None]).abs().mean() / (2 * v.mean())))


def test_lambda_study_trains_measures_and_skips_finished_models(tmp_path, monkeypatch):
    """Two tiny fine-tuning runs (from the shipped MNIST weights, 128 images each); a second call
    trains nothing and gives the same table."""
    from codanet.experiments import study
    from test_hostile import mnist_or_skip
    mnist_or_skip()
    base = dict(dataset="mnist_5k", init_from="coda_cpu:mnist_5k", max_train_images=128, temperature=500.0,
                checkpoint_every_steps=1)
    first = study.run("lam", [0, 0.5], str(tmp_path), epochs=1, grids=3, images=8, base=base)
    assert [r["value"] for r in first["rows"]] == [0, 0.5]
    for r in first["rows"]:
        assert r["accuracy"] > 0.8 and 0 < r["gini"] < 1 and r["localisation_ci95"][0] <= r["localisation"]
    for name in ("scores_vs_lam.png", "maps_vs_lam.png", "summary.json", "lambda0.5/localisation.json"):
        assert (tmp_path / name).stat().st_size > 0
    monkeypatch.setattr("codanet.train.train", lambda *a, **k: pytest.fail("a finished model was trained again"))
    monkeypatch.setattr(study, "measure", lambda *a, **k: pytest.fail("a finished model was measured again"))
    again = study.run("lam", [0, 0.5], str(tmp_path), epochs=1, grids=3, images=8, base=base)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in first["rows"]]
    with pytest.raises(ValueError, match="unknown study"):
        study.run("rank", [1], str(tmp_path))


def test_a_stopped_study_model_resumes_instead_of_counting_as_finished(tmp_path, monkeypatch):
    """A crash before the first checkpoint starts the model afresh; a stop by signal (the trainer
    checkpoints and returns stopped_by="signal") ends the study and writes no summary.json, so the
    next call resumes from the checkpoint rather than reading the stopped run as a finished one."""
    import os

    from codanet.experiments import study
    calls = []

    def fake_train(cfg, out_dir, resume=False, progress=True):
        calls.append(resume)
        os.makedirs(os.path.join(out_dir, "checkpoints"), exist_ok=True)
        if len(calls) == 1:
            raise RuntimeError("killed before the first checkpoint")
        if len(calls) == 2:
            open(os.path.join(out_dir, "checkpoints", "step-000000007.safetensors"), "w").close()
            return dict(stopped_by="signal", epoch=0, step=7)
        return dict(test_accuracy=0.9, epochs=1.0, stopped_by=None)
    monkeypatch.setattr("codanet.train.train", fake_train)
    run_dir = str(tmp_path / "T49")
    with pytest.raises(RuntimeError):
        study.train_or_resume({}, run_dir)
    with pytest.raises(KeyboardInterrupt, match="resumes from its last checkpoint"):
        study.train_or_resume({}, run_dir)
    assert not os.path.exists(os.path.join(run_dir, "summary.json"))
    assert study.train_or_resume({}, run_dir)["test_accuracy"] == 0.9
    assert calls == [False, False, True]
    assert study.train_or_resume({}, run_dir)["test_accuracy"] == 0.9 and len(calls) == 3     # finished: read back


def test_a_collapsed_model_is_reported_without_localisation(tmp_path, monkeypatch):
    """A study model that classifies fewer than 9 classes confidently (lambda = 0.1 at T = 500 on
    MNIST-5k collapsed to 7 %) has no 3x3 grids: the study records why and measures the rest."""
    from codanet.evaluate import runner
    from codanet.evaluate.localisation import TooFewClasses
    from codanet.experiments import study
    from conftest import tiny_model

    def fake_run(kind, *args, **kwargs):
        if kind == "localisation":
            raise TooFewClasses("a 3x3 grid needs 9 distinct classes, but only 0 classes have confident images")
        return {"results": {"CoDA": {"area": 0.5}, "IxG": {"area": 0.4}}}
    model = tiny_model("coda_cpu")
    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(runner, "load_for_evaluation",
                        lambda checkpoint, max_images: (model, torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]), None))
    row = study.measure("model.safetensors", str(tmp_path), grids=5, images=3)
    assert row["localisation"] is None and "9 distinct classes" in row["localisation_error"]
    assert row["removal_area"] == 0.5 and 0 <= row["gini"] < 1
    trained = dict(localisation=0.5, localisation_ci95=[0.4, 0.6], localisation_ixg=0.1, removal_area=0.9,
                   removal_area_ixg=0.8, gini=0.5)
    result = dict(setting="lam", rows=[dict(value=0, accuracy=0.97, epochs=4, **trained),
                                       dict(value=0.1, accuracy=0.07, epochs=4, **row)])
    assert "no grids" in study.format_table(result).splitlines()[-1]
    monkeypatch.setattr(runner, "run", lambda *a, **k: (_ for _ in ()).throw(ValueError("another problem")))
    with pytest.raises(ValueError, match="another problem"):             # only "no grids" is recorded
        study.measure("model.safetensors", str(tmp_path), grids=5, images=3)
    assert (tmp_path / "scores.png").exists() is False
    assert study.plot_scores(result, str(tmp_path / "scores.png")) and (tmp_path / "scores.png").stat().st_size > 0
