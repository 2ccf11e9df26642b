"""Attribution methods and the paper's two metrics (localisation, pixel removal)."""
import json
import os

import pytest
import torch

from codanet.evaluate import (
    cell_scores,
    confident_images,
    grid_image,
    localisation,
    make_grids,
    probability_curve,
    removal_counts,
    removal_order,
)
from codanet.explain import CoDA
from codanet.explain.baselines import make_methods
from conftest import tiny_model


class _Oracle:
    """Puts all positive mass exactly on the cell of the target class (knows the grid)."""
    name = "oracle"

    def __init__(self, n, cells, mode):
        self.n, self.cells, self.mode = n, cells, mode

    def attribute(self, x, target):
        size = x.shape[-1] // self.n
        out = torch.zeros(len(x), x.shape[-2], x.shape[-1])
        for k, t in enumerate(target.tolist()):
            if self.mode == "uniform":
                out[k] = 1.0
                continue
            pos = [c for c, _ in self.cells].index(t)
            if self.mode == "wrong":
                pos = (pos + 1) % (self.n * self.n)
            r, c = divmod(pos, self.n)
            out[k, r * size:(r + 1) * size, c * size:(c + 1) * size] = 1.0
            out[k] -= 0.1 * (out[k] == 0)          # negative mass elsewhere is ignored
        return out


@pytest.mark.parametrize("mode,expected", [("oracle", 1.0), ("uniform", 1 / 9), ("wrong", 0.0)])
def test_localisation_score_for_known_attributions(mode, expected):
    images = torch.rand(9, 1, 4, 4)
    labels = torch.arange(9)
    cells = [(c, c) for c in range(9)]
    scores = []
    g = grid_image(images, cells, 3)
    assert g.shape == (1, 12, 12) and torch.equal(g[:, 4:8, 8:12], images[5])
    maps = _Oracle(3, cells, mode).attribute(g[None].expand(9, -1, -1, -1), torch.arange(9))
    share = cell_scores(maps, 3)
    scores = share.diagonal()
    assert torch.allclose(scores, torch.full((9,), expected))
    del labels


class _FixedLogits(torch.nn.Module):
    """A stand-in model: the logits of image i are row i of a fixed table (passed as the image)."""
    num_classes = 10

    def forward(self, x):
        return x[:, 0, 0, :10]


def test_grids_use_only_confident_correct_images_and_distinct_classes():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=g) * 3
    images = torch.zeros(300, 1, 1, 10)
    images[:, 0, 0] = logits
    labels = logits.argmax(1).clone()
    labels[::3] = (labels[::3] + 1) % 10                     # a third are misclassified
    pools = confident_images(_FixedLogits(), images, labels)
    assert len(pools) == 10
    for c, idx in pools.items():
        idx = torch.tensor(idx)
        assert (labels[idx] == c).all() and (logits[idx].argmax(1) == c).all()
        assert (torch.sigmoid(logits[idx, c]) > 0.5).all()
        assert (logits[idx, c].diff() <= 0).all()          # decreasing logit
    confident = (logits.argmax(1) == labels) & (torch.sigmoid(logits.gather(1, labels[:, None])[:, 0]) > 0.5)
    assert sum(len(v) for v in pools.values()) == int(confident.sum())
    for cells in make_grids(pools, 3, 50, seed=1):
        classes = [c for c, _ in cells]
        assert len(set(classes)) == 9
        assert all(i in pools[c] for c, i in cells)
    assert make_grids(pools, 2, 5, seed=3) == make_grids(pools, 2, 5, seed=3)
    assert make_grids(pools, 2, 5, seed=3) != make_grids(pools, 2, 5, seed=4)
    with pytest.raises(ValueError, match="needs 16 distinct classes"):
        make_grids(pools, 4, 1)


class _Float32Ties(torch.nn.Linear):
    """A stand-in model with float32 rounding: images (N, 1, 1, 2) -> logits (N, 10)."""
    num_classes = 10

    def __init__(self):
        super().__init__(2, 10, bias=False)

    def forward(self, x):
        return super().forward(x[:, 0, 0])


def test_confident_images_ranks_in_float64_and_breaks_ties_by_index():
    # Own-class logit 5 + k * 1e-8 (k = i mod 6): one value in float32, six in float64.  The ranking
    # must follow float64 (which float32 noise cannot reorder), then the index.
    model = _Float32Ties()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0] = torch.tensor([5.0, 1e-8])
    images = torch.stack([torch.ones(60), torch.arange(60.0).remainder(6)], 1)[:, None, None]
    labels = torch.zeros(60, dtype=torch.long)
    assert len(set(model(images)[:, 0].tolist())) == 1                         # float32: all tied
    pools = confident_images(model, images, labels)
    assert pools == {0: sorted(range(60), key=lambda i: (-(i % 6), i))}
    assert model.weight.dtype == torch.float32                                  # the model is left as it was


def test_localisation_runs_end_to_end_with_coda():
    model = tiny_model("coda_cpu")
    images = torch.rand(8, 1, 8, 8)
    labels = torch.arange(8)
    grids = [[(0, 0), (1, 1), (2, 2), (3, 3)], [(4, 4), (5, 5), (6, 6), (7, 7)], [(7, 7), (0, 0), (5, 5), (2, 2)]]
    r = localisation(model, CoDA(model), images, labels, grid_size=2, progress=False, grid_cells=grids)
    assert 0 <= r["mean"] <= 1 and len(r["scores"]) == 12 and len(r["per_class"]) == 8
    # by hand for the first cell of the first grid
    g = grid_image(images, grids[0], 2)[None]
    m = model.explain(g, target=0)["contributions"][0].clamp_min(0)
    assert abs(r["scores"][0] - float(m[:8, :8].sum() / m.sum())) < 1e-6


class _Linear(torch.nn.Module):
    """logit_0 = sum_p v_p * x_enc[0, p] (a hand-built linear model on the encoded input)."""

    def __init__(self, v):
        super().__init__()
        self.v = v
        self.num_classes = 2

    def forward_encoded(self, enc):
        z = (enc[:, 0] * self.v).flatten(1).sum(1)
        return torch.stack([z, -z], 1)


def test_pixel_removal_order_and_probabilities():
    v = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    model = _Linear(v)
    x = torch.ones(1, 1, 2, 2)
    attribution = v[None] * x[:, 0]                           # exact contributions
    order = removal_order(attribution, most_first=False)
    assert order.tolist() == [[1, 2, 0, 3]]                   # -2, 0.5, 1, 3
    assert removal_order(attribution, most_first=True).tolist() == [[3, 0, 2, 1]]
    counts = [0, 1, 2, 3, 4]
    curve = probability_curve(model, x, torch.tensor([0]), order, counts)
    expected = torch.sigmoid(torch.tensor([2.5, 4.5, 4.0, 3.0, 0.0]))
    assert torch.allclose(curve, expected)
    assert removal_counts(784, 0.25, 128)[-1] == 196 and len(removal_counts(784)) == 129


def test_coda_attribution_equals_explain():
    model = tiny_model("coda_cpu")
    x = torch.rand(3, 1, 12, 12)
    target = torch.tensor([1, 2, 3])
    assert torch.equal(CoDA(model).attribute(x, target), model.explain(x, target)["contributions"])
    methods = make_methods(model, ["CoDA"], 12)
    assert torch.allclose(methods["CoDA"].attribute(x, target), model.explain(x, target)["contributions"])


ALL = ["CoDA", "Grad", "IxG", "IntGrad", "DeepLIFT", "GradCAM", "Occ5", "Occ9", "RISE", "LIME"]


@pytest.mark.parametrize("channels", [1, 3])
def test_every_baseline_returns_a_pixel_map(channels):
    name = "coda_cpu" if channels == 1 else "coda_s"
    model = tiny_model(name)
    x = torch.rand(2, channels, 16, 16)
    methods = make_methods(model, ALL, 16, RISE={"masks": 50}, LIME={"samples": 20})
    for method_name, m in methods.items():
        a = m.attribute(x, target=torch.tensor([1, 4]))
        assert a.shape == (2, 16, 16), method_name
        assert torch.isfinite(a).all(), method_name


def test_gradient_baselines_agree_with_definitions():
    model = tiny_model("coda_cpu").double()
    x = torch.rand(1, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    logit = model(x)[0, 2]
    grad = torch.autograd.grad(logit, x)[0]
    m = make_methods(model, ["Grad", "IxG"], 10)
    assert torch.allclose(m["Grad"].attribute(x.detach(), 2), grad.sum(1))
    assert torch.allclose(m["IxG"].attribute(x.detach(), 2), (grad * x).detach().sum(1))


def test_unknown_method_and_bad_target_are_rejected():
    model = tiny_model("coda_cpu")
    with pytest.raises(ValueError, match="unknown attribution method 'SHAP'"):
        make_methods(model, ["SHAP"], 28)
    for method in make_methods(model, ["CoDA", "Grad", "Occ5"], 12).values():
        with pytest.raises(ValueError, match=r"target must lie in \[0, 9\]"):
            method.attribute(torch.rand(2, 1, 12, 12), target=10)


def rise_by_the_formula(method, x, k):
    """RISE's map of class k mask by mask: sum_m sigmoid(f_k(x * M_m)) M_m / (M p) (Petsiuk et al. 2018)."""
    from codanet.models.coda_net import encode
    masks = method.masks(*x.shape[2:]).to(x.dtype)
    return sum(torch.sigmoid(method.model.forward_encoded(encode(x) * m))[:, k, None, None] * m
               for m in masks) / (method.n * method.p)


@pytest.mark.parametrize("name", ["Occ5", "RISE", "LIME", "CoDA"])
def test_one_sweep_for_all_classes_equals_the_per_class_maps(name):
    """A grid costs one perturbation sweep: the all-class maps of Occlusion (windows clipped at
    the border, averaged over the windows covering a pixel), RISE and LIME (ours: one Lasso per
    class on one set of samples) equal the per-class ones (Captum's Occlusion and Lime; RISE's formula
    evaluated mask by mask)."""
    model = tiny_model("coda_cpu", num_classes=4, in_channels=1, temperature=1.0, kernel_sizes=[3, 3, 1],
                       strides=[1, 2, 1], paddings=[1, 1, 0], channels=[8, 8, 4], ranks=[4, 4, 4]).double().eval()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    method = make_methods(model, [name], 12, RISE=dict(masks=48, batch_size=20))[name]
    every = method.attribute_all_classes(x)
    assert every.shape == (2, 4, 12, 12) and every.abs().amax((0, 2, 3)).min() > 1e-3   # maps that say something
    # Captum's Occlusion sums in float32 even for float64 input, and its Lime fits the Lasso in float32
    tol = dict(Occ5=1e-6, LIME=1e-5).get(name, 1e-10)
    for k in range(4):
        per_class = rise_by_the_formula(method, x, k) if name == "RISE" else method.attribute(x, target=k).double()
        assert torch.allclose(every[:, k], per_class, atol=tol, rtol=0), (k, (every[:, k] - per_class).abs().max())
    if name == "Occ5":
        assert method.evaluations_per_image == 26          # 5 x 5 window positions + the unoccluded input


def test_absolute_gradient_is_the_absolute_value_of_the_gradient():
    model = tiny_model("coda_cpu").double()
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    m = make_methods(model, ["Grad", "AbsGrad"], 10)
    assert m["AbsGrad"].name == "AbsGrad" and m["Grad"].name == "Grad"
    signed, absolute = m["Grad"].attribute(x, 3), m["AbsGrad"].attribute(x, 3)
    assert torch.allclose(absolute, signed.abs()) and (signed < 0).any()


def test_random_selection_keeps_the_classes_and_changes_the_images():
    pools = {c: list(range(100 * c, 100 * c + 40)) for c in range(10)}
    confident = make_grids(pools, 3, 30, seed=2)
    drawn = make_grids(pools, 3, 30, seed=2, selection="random")
    assert [[c for c, _ in g] for g in confident] == [[c for c, _ in g] for g in drawn]
    assert all(i in pools[c] for g in drawn for c, i in g)
    first = [i for g in confident for c, i in g if c == 0]
    assert first == pools[0][:len(first)]                       # most confident first, in order
    assert [i for g in drawn for c, i in g if c == 0] != first
    with pytest.raises(ValueError, match="unknown grid selection"):
        make_grids(pools, 3, 1, selection="best")


def test_localisation_reports_its_cost_and_per_grid_means():
    model = tiny_model("coda_cpu")
    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8)
    grids = [[(0, 0), (1, 1), (2, 2), (3, 3)], [(4, 4), (5, 5), (6, 6), (7, 7)]]
    occ = make_methods(model, ["Occ5"], 16)["Occ5"]
    r = localisation(model, occ, images, labels, grid_size=2, progress=False, grid_cells=grids)
    assert r["evaluations_per_grid"] == 7 * 7 + 1 and r["seconds_per_grid"] > 0   # one sweep per 16x16 grid
    assert r["grid_means"] == pytest.approx([sum(r["scores"][:4]) / 4, sum(r["scores"][4:]) / 4])
    ixg = make_methods(model, ["IxG"], 16)["IxG"]
    assert localisation(model, ixg, images, labels, grid_size=2, progress=False,
                        grid_cells=grids)["evaluations_per_grid"] == 4      # one pass per cell


def test_bootstrap_intervals_and_paired_differences():
    from codanet.evaluate.intervals import bootstrap_interval, with_intervals
    rng = torch.Generator().manual_seed(0)
    base = torch.rand(400, generator=rng).tolist()
    low, high = bootstrap_interval(base)
    mean = sum(base) / len(base)
    assert low < mean < high and 0.02 < high - low < 0.08            # ~ 4 standard errors of U(0,1)/sqrt(400)
    assert bootstrap_interval(base) == bootstrap_interval(base)        # seeded
    small = bootstrap_interval(base[:40])
    assert small[1] - small[0] > high - low                            # fewer units, wider interval
    noise = (torch.rand(400, generator=rng) - 0.5).mul(0.01).tolist()
    table = with_intervals({"CoDA": base, "better": [b + 0.05 + e for b, e in zip(base, noise)],
                            "same": [b + e for b, e in zip(base, noise)]})
    assert "difference_to_CoDA" not in table["CoDA"]
    assert table["better"]["difference_to_CoDA"]["significant"]
    assert table["better"]["difference_to_CoDA"]["ci95"][0] > 0.04
    assert not table["same"]["difference_to_CoDA"]["significant"]
    with pytest.raises(ValueError, match="same units"):
        with_intervals({"CoDA": base, "other": base[:10]})


def test_pixel_removal_areas_are_per_image_and_average_to_the_area():
    from codanet.evaluate import pixel_removal
    model = tiny_model("coda_cpu")
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    r = pixel_removal(model, CoDA(model), x, y, steps=4, progress=False, batch_size=2)
    assert len(r["areas"]) == 5 and sum(r["areas"]) / 5 == pytest.approx(r["area"])
    alone = pixel_removal(model, CoDA(model), x[3:4], y[3:4], steps=4, progress=False)
    assert alone["area"] == pytest.approx(r["areas"][3], abs=1e-6)


def test_pixel_removal_keeps_the_maps_for_the_other_order(tmp_path):
    from codanet.evaluate import pixel_removal
    model = tiny_model("coda_cpu")
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    path = str(tmp_path / "CoDA.pt")
    least = pixel_removal(model, CoDA(model), x, y, steps=4, progress=False, maps_path=path)

    class Refuses(CoDA):
        def attribute(self, inputs, target=None):
            raise AssertionError("the kept maps should have been used")
    most = pixel_removal(model, Refuses(model), x, y, steps=4, most_first=True, progress=False, maps_path=path)
    fresh = pixel_removal(model, CoDA(model), x, y, steps=4, most_first=True, progress=False)
    assert most["areas"] == pytest.approx(fresh["areas"], abs=1e-7)
    assert torch.allclose(torch.load(path), CoDA(model).attribute(x, target=y), atol=1e-6)
    again = pixel_removal(model, CoDA(model), x[:3], y[:3], steps=4, progress=False, maps_path=path)
    assert again["areas"] == pytest.approx(least["areas"][:3], abs=1e-7)    # other images: measured anew


def test_cascading_randomisation_redraws_the_top_layers_only():
    from codanet.evaluate.sanity import cascading_randomisation, randomised, similarities
    model = tiny_model("coda_cpu").eval()
    x = torch.rand(3, 1, 12, 12)
    assert torch.equal(randomised(model, 0)(x), model(x))
    L = len(model.blocks())
    two, three = randomised(model, 2, seed=1), randomised(model, 3, seed=1)
    for i, (a, b, c) in enumerate(zip(model.blocks(), two.blocks(), three.blocks())):
        assert torch.equal(a.A_T, b.A_T) == (i < L - 2), i                   # only the top 2 re-drawn
        if i >= L - 2:
            assert torch.equal(b.A_T, c.A_T) and torch.equal(b.B, c.B)      # cascading: same draws
    maps = torch.rand(4, 12, 12)
    rho, ssim = similarities(maps, maps)
    assert rho == pytest.approx([1.0] * 4) and ssim == pytest.approx([1.0] * 4)
    rho, _ = similarities(maps, torch.rand(4, 12, 12))
    assert abs(rho.mean()) < 0.2
    result = cascading_randomisation(model, ["CoDA", "IxG"], x, torch.tensor([0, 1, 2]), progress=False)
    assert result["depths"] == list(range(L + 1)) and result["maps"]["CoDA"].shape == (L + 1, 3, 12, 12)
    for scores in result["scores"].values():
        assert scores["spearman"][0] == pytest.approx(1.0) and len(scores["ssim"]) == L + 1


def test_evaluate_commands_report_intervals_cost_and_the_sanity_check(tmp_path, capsys):
    """End to end on the shipped MNIST weights: a ten-method-style table with intervals and cost,
    the random-selection protocol, the weights' sha256, and the sanity check's JSON and figures."""
    import json

    from codanet.cli import main
    from test_hostile import mnist_or_skip
    mnist_or_skip()
    out = tmp_path / "loc.json"
    assert main(["evaluate", "localisation", "coda_cpu:mnist_5k", "--grids", "3", "--methods", "CoDA,AbsGrad,LIME",
                 "--selection", "random", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| LIME |" in table and "s / grid" in table and "[" in table
    summary = json.loads(out.read_text())
    assert summary["selection"] == "random" and len(summary["sha256"]) == 64
    lime = summary["results"]["LIME"]
    assert lime["evaluations_per_grid"] == 256 and len(lime["grid_means"]) == 3
    assert lime["difference_to_CoDA"]["ci95"][0] <= lime["difference_to_CoDA"]["mean"]
    sanity = tmp_path / "sanity.json"
    assert main(["evaluate", "sanity", "coda_cpu:mnist_5k", "--images", "3", "--methods", "CoDA,Grad",
                 "--json", str(sanity)]) == 0
    assert "passes" in capsys.readouterr().out
    result = json.loads(sanity.read_text())
    assert result["depths"] == list(range(10)) and result["scores"]["CoDA"]["spearman"][0] == pytest.approx(1.0)
    assert (tmp_path / "sanity.png").stat().st_size > 0 and (tmp_path / "sanity_maps.png").stat().st_size > 0
    assert main(["report", str(tmp_path)]) == 0                  # a folder of evaluations, no training run
    page = (tmp_path / "report.html").read_text()
    assert "Localisation (eq. 11)" in page and "Sanity check" in page and "<td>LIME</td>" in page
    assert summary["sha256"][:12] in page and page.count("<img") == 3    # loc bars; sanity scores and maps


def test_report_of_evaluation_folders_and_bad_json(tmp_path):
    """`codanet report` on folders of evaluation JSONs alone: one section per folder, the ResNet
    baseline's costs (no evaluation count) included; a broken JSON is one line and exit 2."""
    import json

    from codanet.cli import main
    diff = dict(mean=-0.5, ci95=[-0.6, -0.4], significant=True)
    ev = dict(kind="localisation", selection="random", sha256="ab" * 32, cost={"Grad": {"ms_per_image": 2.0}},
              results={"CoDA": dict(mean=0.9, ci95=[0.8, 1.0], grid_means=[0.9] * 7, per_class={"a": 0.9}),
                       "Grad": dict(mean=0.4, ci95=[0.3, 0.5], grid_means=[0.4] * 7, difference_to_CoDA=diff)})
    for sub in ("fashion", "digits"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "loc.json").write_text(json.dumps(ev))
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "<h2>fashion</h2>" in page and "<h2>digits</h2>" in page and "random, 7 grids" in page
    assert "-0.500 [-0.600, -0.400] *" in page and "<td>—</td>" in page
    assert "timed once" in page and "<td>2.0</td>" in page       # the cost table says when it was timed
    (tmp_path / "digits" / "broken.json").write_text('{"kind": "localisation", ')
    assert main(["report", str(tmp_path)]) == 2


def test_join_summaries_recomputes_the_paired_differences():
    """Methods measured in two runs on the same images make one table whose differences to CoDA
    are those of one joint run; other weights, the other order or other images are refused."""
    from codanet.evaluate.intervals import with_intervals
    from codanet.evaluate.runner import COST_NOTE, format_table, join_summaries
    rng = torch.Generator().manual_seed(0)
    areas = {m: torch.rand(50, generator=rng).tolist() for m in ("CoDA", "Grad", "Occ9")}

    def summary(methods, **changes):
        results = {m: dict(area=sum(areas[m]) / 50, areas=areas[m], most_first=False, final=0.5) for m in methods}
        return dict(dict(kind="pixel-removal", sha256="ab" * 32, dataset="d", model="coda_cpu", temperature=10.0,
                         selection=None, processes=1, results=results,
                         cost={m: {"ms_per_image": 1.0} for m in methods}), **changes)
    cheap, slow = summary(["CoDA", "Grad"]), summary(["Occ9"])
    joined = join_summaries([slow, cheap], ["b.json", "a.json"])
    assert list(joined["results"]) == ["CoDA", "Grad", "Occ9"] and joined["joined_from"] == ["b.json", "a.json"]
    assert joined["results"]["Occ9"]["difference_to_CoDA"] == with_intervals(areas)["Occ9"]["difference_to_CoDA"]
    assert "difference_to_CoDA" not in joined["results"]["CoDA"] and set(joined["cost"]) == set(areas)
    assert format_table(joined).endswith("| 0.500 | 1.0 |\n\n" + COST_NOTE)   # says when ms / image was timed
    with pytest.raises(ValueError, match="sha256"):
        join_summaries([cheap, summary(["Occ9"], sha256="cd" * 32)])
    most = summary(["Occ9"])
    most["results"]["Occ9"]["most_first"] = True
    with pytest.raises(ValueError, match="orders"):
        join_summaries([cheap, most])
    fewer = summary(["Occ9"])
    fewer["results"]["Occ9"]["areas"] = areas["Occ9"][:10]
    with pytest.raises(ValueError, match="same units"):
        join_summaries([cheap, fewer])


def test_checkerboard_index_of_known_maps():
    """0 for an even coverage of the P x P pixel phases, sqrt(P^2 - 1) when one phase holds all the
    mass, scale-free, and small for smooth content (a wide blob)."""
    from codanet.evaluate.checkerboard import checkerboard_index, phase_means
    maps = torch.zeros(3, 8, 8)
    maps[0, ::2, ::2] = -2.0                        # one phase of four: |.| is what counts
    maps[1] = 1.0
    assert torch.allclose(checkerboard_index(maps, 2), torch.tensor([3 ** 0.5, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(checkerboard_index(5 * maps, 2), checkerboard_index(maps, 2))
    assert phase_means(maps, 2)[0].tolist() == [[2.0, 0.0], [0.0, 0.0]]
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((x - 14) ** 2 + (y - 13) ** 2) / 72)[None]
    assert checkerboard_index(blob, 4).item() < 0.01
    with pytest.raises(ValueError, match="period"):
        checkerboard_index(maps, 9)


def _tiny_resnet():
    from codanet.bench.resnet import ResNet56
    from codanet.models.posthoc import PlainClassifier
    torch.manual_seed(0)
    net = ResNet56(num_classes=4, in_channels=1, depth=8).double().eval()        # one block per stage
    return PlainClassifier(net, in_channels=1, num_classes=4, cam_layer="blocks.2", name="resnet8")


def test_post_hoc_methods_explain_an_ordinary_network_as_they_explain_a_coda_net():
    """The ResNet baseline: the gradient methods see d logit / d x of the plain network, a removed
    pixel is 0 for it, and every method (one sweep for all classes included) runs unchanged."""
    model = _tiny_resnet()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(model.net(x)[:, 2].sum(), x)[0]
    x = x.detach()
    m = make_methods(model, ALL[1:] + ["AbsGrad"], 12, RISE={"masks": 40}, LIME={"samples": 20})
    assert torch.allclose(m["Grad"].attribute(x, 2), grad.sum(1))
    assert torch.allclose(m["IxG"].attribute(x, 2), (grad * x).sum(1))
    keep = (torch.rand(2, 1, 12, 12) > 0.3).double()
    from codanet.models import encode
    assert torch.allclose(model.forward_encoded(encode(x) * keep), model.net(x * keep))
    for name, method in m.items():
        assert method.attribute(x, target=[1, 3]).shape == (2, 12, 12), name
    every = m["Occ5"].attribute_all_classes(x)
    for k in range(4):
        assert torch.allclose(every[:, k], m["Occ5"].attribute(x, target=k).double(), atol=1e-6)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 3\]"):
        m["Grad"].attribute(x, target=4)
    from codanet.models.posthoc import PlainClassifier
    with pytest.raises(ValueError, match="cam_layer 'blocks.7' is not a submodule"):
        PlainClassifier(model.net, in_channels=1, num_classes=4, cam_layer="blocks.7")


def test_scoring_pairs_each_method_with_its_own_model_on_the_same_grids():
    """`runner.score`, as the ResNet baseline uses it: CoDA on the CoDA-Net and a method on another
    network, scored on the same grids, so each difference to CoDA is paired grid by grid."""
    from codanet.evaluate.runner import score
    coda, resnet = tiny_model("coda_cpu").double(), _tiny_resnet()
    images, labels = torch.rand(8, 1, 6, 6, dtype=torch.float64), torch.arange(8) % 4
    grids = [[(0, 0), (1, 1), (2, 2), (3, 3)], [(0, 4), (1, 5), (2, 6), (3, 7)]]
    grad = make_methods(resnet, ["Grad"], 12)["Grad"]
    r = score("localisation", {"CoDA": (coda, CoDA(coda)), "Grad": (resnet, grad)}, images, labels,
              grid_cells=grids, grid_size=2, progress=False)
    alone = localisation(resnet, grad, images, labels, grid_size=2, progress=False, grid_cells=grids)
    assert r["Grad"]["grid_means"] == pytest.approx(alone["grid_means"])
    diff = [g - c for g, c in zip(r["Grad"]["grid_means"], r["CoDA"]["grid_means"])]
    assert r["Grad"]["difference_to_CoDA"]["mean"] == pytest.approx(sum(diff) / 2)
    removal = score("pixel-removal", {"CoDA": (coda, CoDA(coda)), "Grad": (resnet, grad)}, images, labels,
                    steps=4, progress=False)
    assert len(removal["Grad"]["areas"]) == 8 and "difference_to_CoDA" in removal["Grad"]
    with pytest.raises(ValueError, match="need the grids' cells"):
        score("localisation", {"CoDA": (coda, CoDA(coda))}, images, labels)
    with pytest.raises(ValueError, match="unknown evaluation 'area'"):
        score("area", {"CoDA": (coda, CoDA(coda))}, images, labels)


def test_scoring_keeps_each_finished_method_so_a_stopped_part_resumes(tmp_path):
    """`score(keep_dir=...)`: a part stopped during its second method, run again, reads the first
    method's kept localisation result instead of measuring it; other grids are measured anew."""
    from codanet.evaluate.runner import score
    model = tiny_model("coda_cpu").double()
    images, labels = torch.rand(8, 1, 6, 6, dtype=torch.float64), torch.arange(8) % 4
    grids = [[(0, 0), (1, 1), (2, 2), (3, 3)], [(0, 4), (1, 5), (2, 6), (3, 7)]]
    grad = make_methods(model, ["Grad"], 12)["Grad"]

    class Stops(CoDA):
        def attribute_all_classes(self, inputs):
            raise KeyboardInterrupt                                  # the run is stopped here
    run = lambda entries, cells: score("localisation", entries, images, labels, grid_cells=cells,  # noqa: E731
                                       grid_size=2, progress=False, keep_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run({"Grad": (model, grad), "CoDA": (model, Stops(model))}, grids)
    assert [p.name.split("-")[:2] for p in tmp_path.iterdir()] == [["Grad", "2grids"]]

    refuses = make_methods(model, ["Grad"], 12)["Grad"]
    refuses.attribute = lambda *a, **k: pytest.fail("the kept result should have been used")
    again = run({"Grad": (model, refuses), "CoDA": (model, CoDA(model))}, grids)
    fresh = run({"Grad": (model, grad), "CoDA": (model, CoDA(model))}, grids[:1])   # other grids: measured
    alone = localisation(model, grad, images, labels, grid_size=2, progress=False, grid_cells=grids)
    assert again["Grad"]["grid_means"] == pytest.approx(alone["grid_means"])
    assert fresh["Grad"]["grid_means"] == pytest.approx(alone["grid_means"][:1])
    assert "difference_to_CoDA" in again["Grad"] and len(list(tmp_path.iterdir())) == 4


def test_a_method_stopped_mid_grids_resumes_from_its_journal(tmp_path):
    """`score(keep_dir=...)` journals every scored grid: stopped during grid 3 of 5 (and with its
    last line cut short by the kill), run again, it scores only grids 2-4, gives the uninterrupted
    result, and drops the journal once the method's result is kept."""
    from codanet.evaluate.runner import score
    model = tiny_model("coda_cpu").double()
    images, labels = torch.rand(8, 1, 6, 6, dtype=torch.float64), torch.arange(8) % 4
    grids = [[(c % 4, (c + k) % 8) for c in range(4)] for k in range(5)]
    calls = []

    class Counts(CoDA):
        def __init__(self, model, stop_at=None):
            super().__init__(model)
            self.stop_at = stop_at

        def attribute_all_classes(self, inputs):
            calls.append(1)
            if len(calls) == self.stop_at:
                raise KeyboardInterrupt                              # the run is stopped here
            return super().attribute_all_classes(inputs)
    run = lambda m: score("localisation", {"CoDA": (model, m)}, images, labels, grid_cells=grids,  # noqa: E731
                          grid_size=2, progress=False, keep_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run(Counts(model, stop_at=3))
    (journal,) = tmp_path.glob("CoDA-5grids-*.0.jsonl")
    assert [json.loads(line)["grid"] for line in journal.read_text().splitlines()] == [0, 1]
    with open(journal, "a") as f:
        f.write('{"grid": 1, "scores": [0.5, 0.')                   # a line the kill cut short
    calls.clear()
    again = run(Counts(model))
    assert len(calls) == 3                                          # grids 2, 3, 4 only
    alone = localisation(model, CoDA(model), images, labels, grid_size=2, progress=False, grid_cells=grids)
    assert again["CoDA"]["grid_means"] == pytest.approx(alone["grid_means"], abs=1e-12)
    assert again["CoDA"]["mean"] == pytest.approx(alone["mean"], abs=1e-12)
    assert [p.suffix for p in tmp_path.iterdir()] == [".json"]      # the kept result; no journal left


def test_pixel_removal_maps_resume_batch_by_batch(tmp_path):
    """`attribution_maps(path=...)` keeps finished batches in `path`.partial: stopped in the third
    batch, run again, it computes only the batches left and returns the uninterrupted maps."""
    from codanet.evaluate.pixel_removal import attribution_maps
    model = tiny_model("coda_cpu")
    x, y = torch.rand(7, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5, 6]) % 4
    path, batches = str(tmp_path / "CoDA-7images.pt"), []

    class Counts(CoDA):
        def attribute(self, inputs, target=None):
            batches.append(len(inputs))
            if len(batches) == 3 and self.stops:
                raise KeyboardInterrupt
            return super().attribute(inputs, target=target)
    stopping = Counts(model)
    stopping.stops = True
    with pytest.raises(KeyboardInterrupt):
        attribution_maps(stopping, x, y, batch_size=2, progress=False, path=path)
    assert len(torch.load(path + ".partial")) == 4 and not os.path.exists(path)
    batches.clear()
    going_on = Counts(model)
    going_on.stops = False
    maps = attribution_maps(going_on, x, y, batch_size=2, progress=False, path=path)
    assert batches == [2, 1]                                        # images 4-5 and 6 only
    assert torch.allclose(maps, CoDA(model).attribute(x, target=y), atol=1e-6)
    assert not os.path.exists(path + ".partial") and torch.equal(torch.load(path), maps)


def test_a_finished_part_of_a_study_is_read_back_not_measured_again(tmp_path):
    from codanet.utils.io import resume_json
    calls = []
    path = str(tmp_path / "part.json")
    measure = lambda: calls.append(1) or {"score": 0.5}              # noqa: E731
    assert resume_json(path, measure) == resume_json(path, measure) == {"score": 0.5}
    assert calls == [1]
    mine = tmp_path / "written_by_measure.json"                        # a measure that writes the file itself
    def writes_itself():
        mine.write_text('{"score": 0.25, "figure": "x.png"}')
        os.utime(mine, (1, 1))
        return {"score": 0.25, "figure": "x.png"}
    assert resume_json(str(mine), writes_itself)["score"] == 0.25
    assert mine.stat().st_mtime == 1                                    # not written a second time


def _script(name: str):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_removal_gap_reads_each_models_settings_and_paired_differences(tmp_path):
    """scripts/removal_gap.py: one row per weights folder with both orders, its T, epochs and accuracy
    read from the checkpoint and rival - CoDA as the evaluation recorded it; a folder with one order
    is left out; comparison.py names a checkpoint path's folder after the path."""
    import json

    from codanet.evaluate.intervals import with_intervals
    gap, comparison = _script("removal_gap"), _script("comparison")
    assert comparison.weights_folder("runs/t4/T49/model.safetensors") == "runs-t4-T49-model"
    assert comparison.weights_folder("coda_cpu:mnist_5k") == "coda_cpu-mnist_5k"
    rng = torch.Generator().manual_seed(0)
    for folder, orders in (("a", gap.ORDERS), ("b", gap.ORDERS[:1])):
        (tmp_path / folder).mkdir()
        for order in orders:
            areas = {m: torch.rand(40, generator=rng).tolist() for m in ("CoDA", "Occ5")}
            results = {m: dict(area=sum(a) / 40, areas=a, **r) for (m, a), r in
                       zip(areas.items(), with_intervals(areas).values())}
            (tmp_path / folder / f"{order}.json").write_text(json.dumps(dict(
                checkpoint="coda_cpu:mnist_5k", sha256="ab" * 32, results=results)))
    rows = [r for d in ("a", "b") if (r := gap.model_row(str(tmp_path / d), "Occ5"))]
    assert len(rows) == 1 and rows[0]["T"] == 500 and rows[0]["epochs"] == 15 and rows[0]["images"] == 40
    recorded = json.loads((tmp_path / "a" / f"{gap.ORDERS[1]}.json").read_text())["results"]["Occ5"]
    assert rows[0]["diff"][1] == recorded["difference_to_CoDA"]
    text = gap.table(rows, "Occ5")
    assert "| T=500, 15 ep, crop_flip | 97.60 % | 40 |" in text
    assert gap.figure(rows, "Occ5", str(tmp_path / "gap.png")) and (tmp_path / "gap.png").stat().st_size > 0


def test_resnet_baseline_script_writes_figures_and_report_and_resumes(tmp_path, monkeypatch):
    """scripts/resnet_baseline.py end to end on a shipped MNIST-5k model and a ResNet-56 trained for
    two steps: each part's JSON, figure and the HTML report; run again, nothing is retrained or
    measured again."""
    import json
    import sys
    script = _script("resnet_baseline")
    argv = ["resnet_baseline", "--weights", "coda_cpu:mnist_5k", "--epochs", "1", "--max-train-images", "128",
            "--methods", "Grad", "--parts", "removal_least_first", "--images", "4", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    part = json.loads((tmp_path / "removal_least_first.json").read_text())
    assert set(part["results"]) == {"CoDA", "Grad"} and len(part["results"]["Grad"]["areas"]) == 4
    assert {m: c["evaluations_per_image"] for m, c in part["cost"].items()} == {"CoDA": 1, "Grad": 1}
    assert (tmp_path / "removal_least_first.png").stat().st_size > 0
    page = (tmp_path / "report.html").read_text()
    assert "least important first, 4 images" in page and "<td>Grad</td>" in page and "<h2>.</h2>" not in page
    def written() -> dict:
        return {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix in (".json", ".safetensors")}
    before = written()
    script.main()
    assert written() == before and "training.json" in before
    # --resnet loads trained weights instead of training; each part names them by sha256
    from codanet.models.pretrained import sha256_of
    weights, other = tmp_path / "resnet56.safetensors", tmp_path / "loaded"
    assert part["resnet_sha256"] == sha256_of(str(weights))
    monkeypatch.setattr(sys, "argv", argv[:-1] + [str(other), "--resnet", str(weights)])
    script.main()
    loaded = json.loads((other / "removal_least_first.json").read_text())
    assert loaded["resnet_sha256"] == part["resnet_sha256"] and not (other / "training.json").exists()
    assert loaded["results"]["Grad"]["areas"] == part["results"]["Grad"]["areas"]
    with pytest.raises(FileNotFoundError, match="no ResNet-56 weights"):
        script.load_resnet(str(tmp_path / "missing.safetensors"), None)


def test_shipped_resnet_baseline_is_the_one_the_docs_measured():
    """The ResNet-56 weights shipped for the baseline are the file whose sha256 the docs quote."""
    from codanet.models.pretrained import sha256_of
    path = _script("resnet_baseline").RESNET_FASHION_MNIST
    assert sha256_of(path).startswith("bbf329804582")
    card = open(path.replace(".safetensors", ".md")).read()
    assert sha256_of(path) in card


def test_rise_diagnosis_scores_grids_as_the_localisation_metric_does(monkeypatch):
    """scripts/rise_diagnosis.py: the share of each cell a mask keeps; on its CellReader (class c
    read from c's cell alone) the scores follow the kept share, and its RISE localisation equals
    the metric's (grid_scores, same masks), well above the uniform 1/9 and higher at p = 0.1
    than at 0.5 (RISE's map is positive wherever a mask keeps pixels)."""
    import pathlib

    from codanet.evaluate.localisation import grid_scores
    from codanet.explain.baselines import RISE
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parent.parent / "scripts"))
    diag = _script("rise_diagnosis")
    corner = torch.zeros(2, 6, 6)
    corner[0, :2, :2] = 1
    corner[1] = 0.5
    assert diag.kept_share(corner, 3).tolist() == [[1.0] + [0.0] * 8, [0.5] * 9]
    reader = diag.CellReader(10, 1)
    images = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    grid = [(9 - k, k) for k in range(9)]                    # class 9 - k in cell k
    rows = {p: diag.diagnose(reader, images, [grid], masks=60, p=p) for p in (0.1, 0.5)}
    metric = grid_scores(RISE(reader, masks=60, p=0.1), images, [grid], 3, progress=False)
    assert rows[0.1]["localisation"] == pytest.approx(sum(metric[0]) / 9, abs=1e-6)
    assert rows[0.1]["corr"] > 0.5 and rows[0.1]["spread"] > 0.5 and 0 <= rows[0.1]["below_001"] <= 1
    assert abs(rows[0.1]["corr_others"]) < 0.3            # it ignores the other cells
    assert rows[0.1]["localisation"] > 0.2 > rows[0.5]["localisation"] > 1 / 9


def test_comparison_so_far_pairs_the_grids_every_method_has_scored(tmp_path):
    """`scripts/comparison.py --so-far`: reads a finished method's kept result and another's journal
    (grids 0 and 1 of 3), and pairs them on the grids both have; a protocol nobody scored: 0 grids."""
    from codanet.evaluate.runner import run
    comparison = _script("comparison")
    kept = tmp_path / "coda_cpu-mnist_5k" / "kept"
    coda = run("localisation", "coda_cpu:mnist_5k", ["CoDA"], grids=3, progress=False, keep_dir=str(kept))
    (stem,) = [p.name.removesuffix(".json") for p in kept.glob("CoDA-3grids-*.json")]
    journal = kept / (stem.replace("CoDA", "Grad") + ".0.jsonl")
    journal.write_text("".join(json.dumps(dict(grid=i, scores=[0.1 * (i + 1)] * 9, seconds=2.0)) + "\n"
                               for i in range(2)))
    text = comparison.so_far("coda_cpu:mnist_5k", ["CoDA", "Grad"], 3, str(tmp_path))
    most, rand = text.split("## ")[1:]
    assert "2 of 3 grids" in most and "0 of 3 grids" in rand and "| Grad |" not in rand
    coda_two = sum(coda["results"]["CoDA"]["grid_means"][:2]) / 2
    assert f"| CoDA | {coda_two:.3f} [" in most
    assert f"| Grad | 0.150 [0.100, 0.200] | {0.15 - coda_two:+.3f} [" in most and "| 2.00 |" in most


def test_resnet_baseline_so_far_reads_the_grids_its_run_kept(tmp_path, monkeypatch, capsys):
    """`scripts/resnet_baseline.py --so-far` draws the grids its run drew (so it finds their kept
    files) and pairs CoDA's kept result with another method's journal on the grids both have
    scored (2 of 3); it writes nothing.  Both models' confident pools are computed once for both
    localisation tables, and not at all when a rerun finds the tables done."""
    import sys

    import numpy as np
    from safetensors.torch import save_file

    from codanet.evaluate.localisation import confident_images
    from codanet.evaluate.runner import load_for_evaluation
    script = _script("resnet_baseline")
    coda, images, labels, test = load_for_evaluation("coda_cpu:mnist_5k")
    pools, calls = confident_images(coda, images, labels), []
    monkeypatch.setattr(script, "confident_images",      # an untrained ResNet is sure of nothing
                        lambda *_: calls.append(1) or pools)
    weights = tmp_path / "resnet.safetensors"
    save_file(script.new_resnet(test).net.state_dict(), str(weights))
    argv = ["resnet_baseline", "--weights", "coda_cpu:mnist_5k", "--resnet", str(weights), "--methods", "Grad",
            "--parts", "localisation", "--grids", "3", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    assert len(calls) == 2                          # one pass per model, shared by the two tables
    script.main()
    assert len(calls) == 2                          # both tables done: nothing to draw
    coda = json.loads((tmp_path / "out" / "localisation_random.json").read_text())["results"]["CoDA"]["grid_means"]
    kept = tmp_path / "out" / "kept"
    (grid_hash,) = (p.stem.split("-")[-1] for p in kept.glob("CoDA-3grids-*.json")
                    if json.loads(p.read_text())["grid_means"] == coda)    # the random table's grids
    grad = kept / f"Grad-3grids-{grid_hash}.json"
    means = json.loads(grad.read_text())["grid_means"]
    grad.with_suffix(".0.jsonl").write_text("".join(json.dumps(dict(grid=i, scores=[means[i]] * 9, seconds=1.0))
                                                    + "\n" for i in range(2)))
    grad.unlink()                   # Grad as a stopped run left it: a journal of grids 0 and 1
    files = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", argv + ["--so-far"])
    script.main()
    text = capsys.readouterr().out
    assert len(calls) == 4
    heading = "## localisation random (CoDA: coda_cpu:mnist_5k; others: ResNet-56), 2 of 3 grids scored by CoDA, Grad"
    assert heading in text
    coda_two, grad_two = float(np.mean(coda[:2])), float(np.mean(means[:2]))
    assert f"| CoDA | {coda_two:.3f} [" in text and f"| Grad | {grad_two:.3f} [" in text
    assert f"| {grad_two - coda_two:+.3f} [" in text and "| 1.00 |" in text
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == files


def test_parts_name_groups_or_single_tables_and_a_typo_is_one_line_exit_2(monkeypatch, capsys):
    """`--parts` of both comparison scripts: a group stands for its tables, a table for itself, each
    once, in the order given; an unknown entry stops the script before any work (argparse: exit 2)
    with one line naming the entry and the choices."""
    import sys

    from codanet.evaluate.runner import select_parts
    chosen = select_parts("removal_most_first,localisation,localisation_random")
    assert [name for _, name, _ in chosen] == ["removal_most_first", "localisation_most_confident",
                                                "localisation_random"]
    assert chosen[0] == ("pixel-removal", "removal_most_first", dict(most_first=True))
    assert chosen[1] == ("localisation", "localisation_most_confident", dict(selection="most_confident"))
    with pytest.raises(ValueError, match="unknown part 'localisaton'.*localisation_random"):
        select_parts("localisaton")
    with pytest.raises(ValueError, match="unknown part 'sanity'; choose from localisation, .*removal_most_first$"):
        select_parts("sanity", groups=("localisation", "removal"))     # the ResNet script has no sanity part
    for script in ("comparison", "resnet_baseline"):
        monkeypatch.setattr(sys, "argv", [script, "--parts", "localisation_mostconfident", "--out", "/nonexistent"])
        with pytest.raises(SystemExit) as stop:
            _script(script).main()
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert stop.value.code == 2 and "unknown part 'localisation_mostconfident'" in err
