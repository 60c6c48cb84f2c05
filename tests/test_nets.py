"""Networks (shapes, embeddings, state_dict, gradients, eval determinism, build_net) and ScoreModel
(each parameterization is exactly its formula, and an exact "network" reproduces the exact score)."""
import math

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.nets import MLP, GaussianFourierProjection, SinusoidalEmbedding, UNet, build_net, net_signature
from scoresde.score import ScoreModel

TINY_UNETS = {
    "digits8": dict(in_channels=1, image_size=8, channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "mnist28": dict(in_channels=1, image_size=28, channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "cifar32": dict(in_channels=3, image_size=32, channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,)),
}


def randomize_(net, generator):
    """Overwrite every parameter with noise, so zero-initialised layers no longer hide anything."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return net


# ---- embeddings --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [GaussianFourierProjection, SinusoidalEmbedding])
def test_embedding_shape_range_and_sensitivity(cls):
    torch.manual_seed(0)
    emb = cls(32)
    c = torch.tensor([0.0, 0.1, 0.5, 1.0])
    e = emb(c)
    assert e.shape == (4, 32)
    # sin^2 + cos^2 = 1 pairwise: the two halves are the sine and cosine of the same arguments
    torch.testing.assert_close(e[:, :16] ** 2 + e[:, 16:] ** 2, torch.ones(4, 16))
    # distinct conditioning values give clearly distinct embeddings
    dist = torch.cdist(e, e) + torch.eye(4) * 1e9
    assert dist.min() > 0.1


def test_sinusoidal_embedding_is_the_ddpm_formula():
    emb = SinusoidalEmbedding(8, scale=1000.0, max_period=10000)
    c = torch.tensor([0.25], dtype=torch.float64)
    k = torch.arange(4, dtype=torch.float64)
    arg = 250.0 * 10000.0 ** (-k / 4)
    torch.testing.assert_close(emb(c)[0], torch.cat([arg.sin(), arg.cos()]), rtol=1e-6, atol=1e-6)


def test_fourier_frequencies_are_a_saved_fixed_buffer():
    torch.manual_seed(0)
    a = GaussianFourierProjection(256, scale=16.0)
    assert "W" in a.state_dict() and not any(True for _ in a.parameters())
    # W ~ N(0, 16^2): the sample std of 128 draws lies within ~5 standard errors (sd/sqrt(2n)) of 16
    assert abs(a.W.std().item() - 16.0) < 5 * 16.0 / math.sqrt(2 * 128)
    torch.manual_seed(1)
    b = GaussianFourierProjection(256, scale=16.0)
    c = torch.linspace(-1, 1, 5)
    assert not torch.allclose(a(c), b(c))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(c), b(c), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, 7, -2, 2.0, True])
def test_embedding_rejects_bad_dim(bad):
    with pytest.raises(ValueError, match="embed_dim"):
        GaussianFourierProjection(bad)
    with pytest.raises(ValueError, match="embed_dim"):
        SinusoidalEmbedding(bad)


# ---- MLP and U-Net -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2,), (3,), (2, 3)])
@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_mlp_output_shape(shape, embedding):
    net = build_net("mlp", shape, hidden=16, depth=2, embed_dim=8, embedding=embedding)
    x = torch.randn(5, *shape)
    assert net(x, torch.rand(5)).shape == x.shape


@pytest.mark.parametrize("name", list(TINY_UNETS))
def test_unet_output_shape(name):
    kw = TINY_UNETS[name]
    net = UNet(**kw)
    x = torch.randn(2, kw["in_channels"], kw["image_size"], kw["image_size"])
    assert net(x, torch.rand(2)).shape == x.shape


def test_unet_has_attention_only_at_requested_resolutions():
    n_attn = lambda net: sum(type(m).__name__ == "AttnBlock" for m in net.modules())  # noqa: E731
    kw = dict(TINY_UNETS["mnist28"])
    # attention at 7 (1 down + 2 up blocks at num_res_blocks=1), plus the one in the middle
    assert n_attn(UNet(**kw)) == 1 + 2 + 1
    assert n_attn(UNet(**{**kw, "attn_resolutions": ()})) == 1


def test_build_net_unet_takes_shape_from_data():
    net = build_net("unet", (1, 28, 28), channels=8, channel_mults=(1, 2, 2), num_res_blocks=1)
    assert isinstance(net, UNet) and net.in_channels == 1 and net.image_size == 28


@pytest.mark.parametrize("make", [
    lambda: MLP(2, hidden=16, depth=2, embed_dim=8),
    lambda: UNet(**TINY_UNETS["digits8"]),
], ids=["mlp", "unet"])
def test_gradients_reach_every_parameter(make):
    g = torch.Generator().manual_seed(0)
    net = randomize_(make(), g)
    shape = (2,) if isinstance(net, MLP) else (1, 8, 8)
    x = torch.randn(3, *shape, generator=g)
    net(x, torch.rand(3, generator=g)).pow(2).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not bool((p.grad != 0).any())]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("make", [
    lambda: MLP(2, hidden=16, depth=2, embed_dim=8),
    lambda: UNet(**{**TINY_UNETS["digits8"], "dropout": 0.5}),
], ids=["mlp", "unet"])
def test_state_dict_round_trip(make):
    g = torch.Generator().manual_seed(1)
    a = randomize_(make(), g).eval()
    b = make().eval()
    shape = (2,) if isinstance(a, MLP) else (1, 8, 8)
    x, c = torch.randn(4, *shape, generator=g), torch.rand(4, generator=g)
    assert "embed.W" in a.state_dict()
    assert not torch.allclose(a(x, c), b(x, c))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x, c), b(x, c), rtol=0, atol=0)


def test_unet_dropout_only_in_training_mode():
    g = torch.Generator().manual_seed(2)
    net = randomize_(UNet(**{**TINY_UNETS["digits8"], "dropout": 0.5}), g)
    x, c = torch.randn(2, 1, 8, 8, generator=g), torch.rand(2, generator=g)
    net.train()
    assert not torch.allclose(net(x, c), net(x, c))
    net.eval()
    torch.testing.assert_close(net(x, c), net(x, c), rtol=0, atol=0)


def test_nets_start_as_the_zero_function():
    x, c = torch.randn(3, 2), torch.rand(3)
    assert MLP(2, hidden=16, depth=2, embed_dim=8)(x, c).abs().max() == 0
    xi = torch.randn(3, 1, 8, 8)
    assert UNet(**TINY_UNETS["digits8"])(xi, c).abs().max() == 0


def test_groupnorm_groups_fit_small_channel_counts():
    net = UNet(in_channels=1, image_size=8, channels=12, channel_mults=(1, 2), num_res_blocks=1,
               attn_resolutions=(), num_groups=32)
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.num_groups <= 32
    assert net(torch.randn(1, 1, 8, 8), torch.rand(1)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("call, word", [
    (lambda: build_net("transformer", (2,)), "name"),
    (lambda: build_net("mlp", (2,), width=3), "width"),
    (lambda: build_net("unet", (1, 8, 8), image_size=8), "image_size"),
    (lambda: build_net("unet", (8, 8)), "data_shape"),
    (lambda: build_net("unet", (1, 8, 6)), "data_shape"),
    (lambda: build_net("mlp", (0,)), "data_shape"),
    (lambda: build_net("unet", (1, 30, 30), channel_mults=(1, 2, 2)), "image_size"),
    (lambda: UNet(image_size=28, channel_mults=(1, 2, 2, 2)), "image_size"),
    (lambda: UNet(dropout=1.0), "dropout"),
    (lambda: UNet(channel_mults=()), "channel_mults"),
    (lambda: MLP(2, embedding="learned"), "embedding"),
    (lambda: MLP(0), "dim"),
    (lambda: MLP(2, hidden=16, depth=1)(torch.randn(3, 3), torch.rand(3)), "x"),
    (lambda: MLP(2, hidden=16, depth=1)(torch.randn(3, 2), torch.rand(2)), "c"),
    (lambda: UNet(**TINY_UNETS["digits8"])(torch.randn(3, 1, 6, 6), torch.rand(3)), "x"),
])
def test_bad_input_raises_value_error_naming_it(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_net_signature_lists_build_net_keywords_with_defaults():
    assert net_signature("mlp") == dict(hidden=256, depth=3, embed_dim=128, embedding="fourier", fourier_scale=16.0,
                                         num_classes=0)
    unet = net_signature("unet")
    assert "in_channels" not in unet and "image_size" not in unet
    assert unet["channel_mults"] == (1, 2, 2) and unet["attn_resolutions"] == (16,) and unet["skip_rescale"] is True
    with pytest.raises(ValueError, match="name"):
        net_signature("resnet")


def test_build_net_lists_accepted_keywords():
    with pytest.raises(ValueError) as info:
        build_net("mlp", (2,), width=3)
    assert all(k in str(info.value) for k in ("hidden", "depth", "embed_dim", "embedding", "fourier_scale"))


# ---- ScoreModel ----------------------------------------------------------------------------------
class StubNet(nn.Module):
    """A "network" with a known output: out = x * 2 + c (broadcast), recording the c it was given."""

    def forward(self, x, c):
        self.last_c = c
        return 2 * x + sd.sde.batch_broadcast(c, x)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("parameterization", ["eps", "score", "x0"])
def test_score_model_applies_the_formula(sde, parameterization):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    model = ScoreModel(StubNet(), sde, parameterization=parameterization, conditioning="time")
    alpha, sigma = (c[:, None] for c in sde.marginal_coeffs(t, x))
    out = 2 * x + t[:, None]
    expected = {"eps": -out / sigma, "score": out, "x0": (alpha * out - x) / sigma ** 2}[parameterization]
    torch.testing.assert_close(model(x, t), expected, rtol=1e-12, atol=0)
    assert model.score_fn(x, t) is not None and torch.equal(model.score_fn(x, t), model(x, t))
    # the helpers are the same quantity in other units: eps = -sigma s, x0 = (x + sigma^2 s) / alpha
    s = model(x, t)
    torch.testing.assert_close(model.eps(x, t), -sigma * s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.x0(x, t), (x + sigma ** 2 * s) / alpha, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["eps", "score", "x0"])
def test_score_model_output_argument(parameterization):
    sde = sd.SubVPSDE()
    model = ScoreModel(StubNet(), sde, parameterization=parameterization)
    x, t = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    torch.testing.assert_close(model(x, t, output=parameterization), StubNet()(x, t), rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, output="eps"), model.eps(x, t), rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, output="x0"), model.x0(x, t), rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, output="score"), model(x, t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="output"):
        model(x, t, output="v")


def test_score_model_denoiser_is_finite_where_sigma_is_zero():
    """At t = 0 under VP (sigma = 0) an eps network's E[x_0 | x_0] = x, not inf - inf."""
    model = ScoreModel(StubNet(), sd.VPSDE(), parameterization="eps")
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(model.x0(x, 0.0), x, rtol=0, atol=0)


@pytest.mark.parametrize("sde, conditioning, expected", [
    (sd.VPSDE(), None, "time"), (sd.SubVPSDE(), None, "time"), (sd.VESDE(), None, "log_sigma"),
    (sd.VPSDE(), "log_sigma", "log_sigma"), (sd.VESDE(), "time", "time"),
], ids=["vp-default", "subvp-default", "ve-default", "vp-logsigma", "ve-time"])
def test_score_model_conditioning(sde, conditioning, expected):
    stub = StubNet()
    model = ScoreModel(stub, sde, conditioning=conditioning)
    assert model.conditioning == expected
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    model(x, t)
    want = t if expected == "time" else sde.marginal_coeffs(t, x)[1].log()
    torch.testing.assert_close(stub.last_c, want, rtol=1e-14, atol=0)
    model(x, 0.5)  # a float time is broadcast over the batch
    assert stub.last_c.shape == (3,)


class ExactNet(nn.Module):
    """The exact eps or x0 of a Gaussian mixture as a function of (x, c), for either conditioning."""

    def __init__(self, mixture, sde, target, conditioning):
        super().__init__()
        self.mixture, self.sde, self.target, self.conditioning = mixture, sde, target, conditioning

    def forward(self, x, c):
        if self.conditioning == "time":
            t = c
        else:  # invert log sigma(t) = log sigma_min + t log(sigma_max / sigma_min) of the VE SDE
            t = (c - math.log(self.sde.sigma_min)) / math.log(self.sde.sigma_max / self.sde.sigma_min)
        alpha, sigma = (v[:, None] for v in self.sde.marginal_coeffs(t, x))
        score = self.mixture.score(x, t, self.sde)
        return -sigma * score if self.target == "eps" else (x + sigma ** 2 * score) / alpha


@pytest.mark.parametrize("target", ["eps", "x0"])
def test_score_model_reproduces_the_exact_score(mixture, sde, target):
    conditioning = "log_sigma" if isinstance(sde, sd.VESDE) else "time"
    model = ScoreModel(ExactNet(mixture, sde, target, conditioning), sde, parameterization=target)
    g = torch.Generator().manual_seed(4)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.99 + 0.01
    alpha, sigma = sde.marginal_coeffs(t, t)
    noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
    x = alpha[:, None] * mixture.sample(64, g, dtype=torch.float64) + sigma[:, None] * noise
    torch.testing.assert_close(model(x, t), mixture.score(x, t, sde), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs, word", [
    (dict(parameterization="v"), "parameterization"),
    (dict(conditioning="sigma_t"), "conditioning"),
    (dict(sde="vp"), "sde"),
])
def test_score_model_bad_input(kwargs, word):
    args = dict(net=StubNet(), sde=sd.VPSDE())
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        ScoreModel(**args)


def test_score_model_rejects_misshaped_net_output():
    model = ScoreModel(lambda x, c: x[:, :1], sd.VPSDE())
    with pytest.raises(ValueError, match="net"):
        model(torch.randn(3, 2), 0.5)


class ConditioningProbe(torch.nn.Module):
    """Returns the conditioning value it was given, broadcast to x's shape."""

    def forward(self, x, c):
        return c.reshape(-1, *([1] * (x.dim() - 1))).expand_as(x).clone()


@pytest.mark.parametrize("conditioning", ["time", "log_sigma", "time_index", "sigma"])
def test_score_model_conditioning_values(sde, conditioning):
    """What the network sees: t, log sigma(t), t (N - 1) (the reference's t * 999 for N = 1000) or sigma(t)."""
    t = torch.tensor([0.001, 0.3, 1.0], dtype=torch.float64)
    x = torch.zeros(3, 2, dtype=torch.float64)
    model = ScoreModel(ConditioningProbe(), sde, parameterization="score", conditioning=conditioning)
    sigma = sde.marginal_coeffs(t, x)[1]
    expected = {"time": t, "log_sigma": sigma.log(), "time_index": t * 999, "sigma": sigma}[conditioning]
    assert sde.N == 1000
    torch.testing.assert_close(model(x, t)[:, 0], expected, rtol=1e-12, atol=0)


# ---- attention: softmax(q k^T / sqrt(C)) v over the H W positions, through a fused SDPA kernel ------

def _attention_blocks():
    from scoresde.nets import refblocks, unet
    torch.manual_seed(0)
    ours = unet.AttnBlock(16, skip_rescale=True, num_groups=4)
    ref = refblocks.AttnBlock(16, skip_rescale=True, init_scale=0.1)
    for block in (ours, ref):
        with torch.no_grad():  # the output projections start at zero: give them weights
            for p in block.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return {"unet": (ours, lambda h: ours.qkv(h).chunk(3, dim=1), ours.norm, ours.proj, ours.scale),
            "refblocks": (ref, lambda h: (ref.NIN_0(h), ref.NIN_1(h), ref.NIN_2(h)), ref.GroupNorm_0, ref.NIN_3,
                          1 / math.sqrt(2))}


@pytest.mark.parametrize("name", ["unet", "refblocks"])
def test_attention_is_single_head_softmax_attention(name):
    """The block against the formula written out in float64 from its own layers:
    out = (x + proj(softmax(q^T k / sqrt(C)) v)) * scale, q, k, v of shape (C, HW) per image."""
    block, qkv, norm, proj, scale = _attention_blocks()[name]
    x = torch.randn(3, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q, k, v = (a.double().flatten(2) for a in qkv(norm(x)))  # (B, C, HW)
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(16), dim=-1)  # (B, HW, HW)
        h = (v @ w.transpose(1, 2)).reshape(x.shape).float()
        want = (x + proj(h)) * scale
        torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(block(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["unet", "refblocks"])
def test_attention_runs_a_fused_kernel(name):
    """With one head dimension (4-D inputs) SDPA dispatches to a fused kernel (on the CPU its flash
    kernel); 3-D inputs would take the unfused fallback, a bmm / softmax / bmm (the starting profile's
    GPU attention)."""
    from torch.profiler import profile
    block = _attention_blocks()[name][0]
    x = torch.randn(2, 16, 4, 4)
    with profile() as prof, torch.no_grad():
        block(x)
    names = {e.name for e in prof.events()}
    assert "aten::scaled_dot_product_attention" in names
    assert "aten::_scaled_dot_product_attention_math" not in names and "aten::bmm" not in names, sorted(names)
    assert any(n.startswith("aten::_scaled_dot_product_") for n in names)
