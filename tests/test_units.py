"""DAU maths: efficient layers against the literal, materialised eq. 1 (float64)."""
import pytest
import torch
import torch.nn.functional as F

from codanet import DAU, DAUConv2d, DAULinear, explanation_mode
from codanet.nn import rescale
from codanet.nn.reference import dau_conv2d_reference, dau_reference, layer_matrix


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _randomise_bias(layer):
    with torch.no_grad():
        layer.b.normal_()


@pytest.mark.parametrize("nonlinearity", ["sq", "l2"])
@pytest.mark.parametrize("k,stride,padding,rank,bias", [
    (3, 1, None, 4, True), (3, 2, 1, 2, True), (1, 1, 0, 5, True), (5, 2, 0, 3, True),
    (2, 1, 1, 1, True), (3, 3, 2, 6, False), (4, 2, 3, 3, True),
])
def test_conv_layer_matches_materialised_reference(nonlinearity, k, stride, padding, rank, bias):
    layer = DAUConv2d(3, 5, k, rank=rank, stride=stride, padding=padding, nonlinearity=nonlinearity,
                      bias=bias).double()
    if bias:
        _randomise_bias(layer)
    x = torch.rand(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    params = [layer.A_T, layer.B] + ([layer.b] if bias else [])
    out = layer(x)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x] + params, g)

    # the literal formula on the same parameters, in the paper's notation
    A = layer.A_T.detach().clone().requires_grad_()
    B = layer.B.detach().clone().requires_grad_()
    b = (layer.b if bias else torch.zeros(5, 3, k, k, dtype=torch.float64)).detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    ref = dau_conv2d_reference(xr, A.flatten(2).transpose(1, 2), B.flatten(1), b.flatten(1), k,
                               stride, layer.padding, nonlinearity)
    ref_grads = torch.autograd.grad(ref, [xr, A, B] + ([b] if bias else []), g)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-9
    for got, want in zip(grads, ref_grads):
        assert _rel(got, want) <= 1e-9


@pytest.mark.parametrize("nonlinearity", ["sq", "l2"])
def test_linear_layer_and_single_unit_match_reference(nonlinearity):
    layer = DAULinear(7, 4, rank=3, nonlinearity=nonlinearity).double()
    _randomise_bias(layer)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    A, B, b = layer.paper_matrices()
    ref = dau_reference(x, A, B, b, nonlinearity)
    out = layer(x)
    assert _rel(out, ref) <= 1e-9
    gx = torch.autograd.grad(out.sum(), x)[0]
    gref = torch.autograd.grad(ref.sum(), x)[0]
    assert _rel(gx, gref) <= 1e-9
    # the materialised weights w_j(x) reproduce the outputs
    w = layer.linear_weights(x)
    assert _rel((w * x[:, None]).sum(-1), out) <= 1e-9
    unit = DAU(7, rank=2, nonlinearity=nonlinearity).double()
    assert unit(x).shape == (5,)


def test_paper_matrices_shapes_and_unfold_order():
    layer = DAUConv2d(3, 4, 3, rank=2, bias=True).double()
    A, B, b = layer.paper_matrices()
    assert A.shape == (4, 27, 2) and B.shape == (2, 27) and b.shape == (4, 27)
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    patches = F.unfold(x, 3, padding=1)                      # (1, 27, 25)
    z = B @ patches[0]                                       # (2, 25)
    assert torch.allclose(z.t().reshape(5, 5, 2).permute(2, 0, 1),
                          F.conv2d(x, layer.B, padding=1)[0])


@pytest.mark.parametrize("nonlinearity", ["sq", "l2"])
def test_output_bounded_by_input_norm(nonlinearity):
    """eq. 3: |DAU(x)| <= ||x|| for every unit, every position."""
    for seed in range(5):
        torch.manual_seed(seed)
        layer = DAUConv2d(4, 6, 3, rank=5, nonlinearity=nonlinearity).double()
        with torch.no_grad():
            layer.A_T.mul_(10 ** (seed - 2))
            layer.b.normal_(0, 10 ** (seed - 2))
        x = torch.randn(3, 4, 6, 6, dtype=torch.float64) * 10 ** (seed - 2)
        out = layer(x)
        norms = F.unfold(x, 3, padding=1).norm(dim=1).view(3, 1, 6, 6)
        assert (out.abs() <= norms * (1 + 1e-12)).all()
        lin = DAULinear(8, 3, rank=2, nonlinearity=nonlinearity).double()
        v = torch.randn(10, 8, dtype=torch.float64) * 10 ** (seed - 2)
        assert (lin(v).abs() <= v.norm(dim=1, keepdim=True) * (1 + 1e-12)).all()


@pytest.mark.parametrize("nonlinearity", ["sq", "l2"])
def test_zero_vector_gives_finite_values_and_gradients(nonlinearity):
    u = torch.zeros(3, 5, requires_grad=True)
    g = rescale(u, nonlinearity)
    g.sum().backward()
    assert torch.isfinite(g).all() and torch.isfinite(u.grad).all()
    layer = DAUConv2d(2, 3, 3, rank=2, nonlinearity=nonlinearity, bias=False)
    x = torch.zeros(1, 2, 4, 4, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.A_T.grad).all() and torch.isfinite(layer.B.grad).all()


def test_explanation_gradient_equals_product_of_layer_matrices():
    """eq. 7: the explanation-mode gradient of a 3-layer net is the product W_3 W_2 W_1."""
    torch.manual_seed(1)
    layers = torch.nn.Sequential(
        DAUConv2d(2, 3, 3, rank=2), DAUConv2d(3, 4, 3, rank=3, stride=2), DAUConv2d(4, 2, 1, rank=2)).double()
    for layer in layers:
        _randomise_bias(layer)
    x = torch.rand(2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        a1 = layers[0](x[None])[0]
        a2 = layers[1](a1[None])[0]
    W = layer_matrix(layers[2], a2) @ layer_matrix(layers[1], a1) @ layer_matrix(layers[0], x)
    with torch.no_grad():
        out = layers(x[None])[0].flatten()
    assert _rel(W @ x.flatten(), out) <= 1e-10               # eq. 6: a_L = W_{0->L}(x) x

    xg = x[None].clone().requires_grad_()
    with explanation_mode(layers):
        out_e = layers(xg).flatten()
        rows = torch.stack([torch.autograd.grad(out_e[i], xg, retain_graph=True)[0].flatten()
                            for i in range(out_e.numel())])
    assert _rel(rows, W) <= 1e-10
    # outside explanation mode the gradient differs (the dynamic weights also depend on x)
    xg2 = x[None].clone().requires_grad_()
    g_normal = torch.autograd.grad(layers(xg2).flatten()[0], xg2)[0].flatten()
    assert not torch.allclose(g_normal, W[0])


@pytest.mark.parametrize("shape", [(2, 6, 5), (3, 1, 5), (7, 5), (2, 3, 4, 5)])
def test_matmul_rows_equals_matmul(shape):
    """The 1x1-convolution route for the layer's skinny matmuls (oneDNN) == x @ W^T, and its weight
    gradient == sum_m g_m x_m^T, with and without positions."""
    from codanet.nn.kernels import matmul_rows, matmul_rows_weight_grad
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    w = torch.randn(8, shape[-1], dtype=torch.float64)
    g = torch.randn(*shape[:-1], 8, dtype=torch.float64)
    assert _rel(matmul_rows(x, w), x @ w.t()) <= 1e-13
    assert _rel(matmul_rows_weight_grad(x, g), g.reshape(-1, 8).t() @ x.reshape(-1, shape[-1])) <= 1e-13


def test_gram_form_values_and_gradients():
    """The symmetric-Gram quadratic form (custom backward) against autograd of z^T G_j z."""
    from codanet.nn.kernels import gram_form
    torch.manual_seed(0)
    A = torch.randn(4, 5, 7, dtype=torch.float64)
    gram = (A @ A.transpose(1, 2)).requires_grad_()              # symmetric, as in the layer
    z = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    q = gram_form(z, gram)
    ref = torch.einsum("...s,jst,...t->...j", z, gram, z)
    assert q.shape == (3, 2, 4) and _rel(q, ref) <= 1e-12
    g = torch.randn_like(q)
    assert all(_rel(a, b) <= 1e-12 for a, b in zip(torch.autograd.grad(q, [z, gram], g),
                                                  torch.autograd.grad(ref, [z, gram], g)))
    assert torch.autograd.gradcheck(gram_form, (z, gram))


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (4, 2, 3), (1, 1, 0), (5, 3, 0)])
def test_backproject_equals_autograd_for_many_outputs(k, stride, padding):
    """DAUConv2d.backproject (K cotangents through the materialised weights) == K explanation-mode
    backward passes, for kernels, strides and paddings where the patches overlap or leave pixels out."""
    torch.manual_seed(0)
    layer = DAUConv2d(3, 4, k, rank=2, stride=stride, padding=padding).double()
    _randomise_bias(layer)
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    with explanation_mode(layer):
        out = layer(x)
    K = 3
    grads = torch.randn(2, K, *out.shape[1:], dtype=torch.float64)      # (N, K, out, H', W')
    want = torch.stack([torch.autograd.grad(out, x, grads[:, i], retain_graph=True)[0]
                        for i in range(K)], 1)                          # (N, K, C_in, H, W)
    with torch.no_grad():
        z, alpha = layer.dynamic_weights(x)
        got = layer.backproject(grads.permute(0, 3, 4, 1, 2), layer.weights_per_position(z), x.shape, alpha)
    assert got.shape == (2, 9, 7, K, 3)
    assert _rel(got.permute(0, 3, 4, 1, 2), want) <= 1e-12


def test_explanation_mode_restores_flags_after_exception():
    net = torch.nn.Sequential(DAUConv2d(2, 2, 3, rank=2), DAUConv2d(2, 2, 3, rank=2))
    with pytest.raises(RuntimeError):
        with explanation_mode(net):
            assert all(m.explanation_mode for m in net)
            raise RuntimeError("boom")
    assert not any(m.explanation_mode for m in net)


def test_layer_attributes_like_conv2d():
    layer = DAUConv2d(3, 8, 5, rank=4, stride=2)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.nonlinearity) == (5, 2, 2, "sq")
    assert layer.in_channels == 3 and layer.out_channels == 8 and layer.rank == 4
    with pytest.raises(ValueError, match="nonlinearity"):
        DAUConv2d(3, 8, 3, rank=4, nonlinearity="relu")
    with pytest.raises(ValueError, match="shape"):
        layer(torch.rand(1, 4, 8, 8))


def test_torch_compile_gives_the_same_outputs_and_gradients():
    """`compile=true` in training: the model under torch.compile (inductor, CPU) == eager."""
    from codanet.models import CoDANet
    torch.manual_seed(0)
    model = CoDANet(in_channels=1, num_classes=3, kernel_sizes=[3, 3, 1], strides=[1, 2, 1], paddings=[1, 1, 0],
                    channels=[4, 4, 3], ranks=[2, 3, 2], temperature=5.0)
    x = torch.rand(3, 1, 8, 8)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    names = [n for n, _ in model.named_parameters()]
    model.compile()
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert [n for n, _ in model.named_parameters()] == names          # checkpoints keep their keys
    assert torch.allclose(out, eager_out, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, eager_grads))


class _ScaledByMean(torch.nn.Module):
    """A user's own dynamic-linear layer y = W(x) x with W(x) = mean(x) (a scalar), following the
    explanation-mode protocol."""

    def __init__(self):
        super().__init__()
        self.explanation_mode = False

    def set_explanation_mode(self, on: bool) -> None:
        self.explanation_mode = on

    def forward(self, x):
        w = x.mean(dim=1, keepdim=True)
        return (w.detach() if self.explanation_mode else w) * x


def test_explanation_mode_protocol_includes_users_layers_and_restores_on_error():
    from codanet.nn import ExplainableLayer, explainable_layers
    net = torch.nn.Sequential(DAULinear(4, 4, rank=2).double(), _ScaledByMean())
    assert len(explainable_layers(net)) == 2 and isinstance(net[1], ExplainableLayer)
    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    with explanation_mode(net):
        y = net(x)
        (g,) = torch.autograd.grad(y[:, 1].sum(), x)
    # in explanation mode the whole net is linear in x: gradient . x == output, exactly
    assert torch.allclose((g * x).sum(1), y[:, 1], atol=1e-12, rtol=0)
    net[1].explanation_mode = True                      # a layer already in the mode stays in it
    with pytest.raises(RuntimeError, match="boom"):
        with explanation_mode(net):
            raise RuntimeError("boom")
    assert net[1].explanation_mode is True and net[0].explanation_mode is False
