"""The reference architectures (Song et al.'s score_sde_pytorch: ``ncsnpp`` = NCSN++ / DDPM++, ``ddpm``)
against checkpoints and scores made by the reference implementation itself (tests/data/refckpt, see
its README): the state-dict keys, the EMA parameter order, and the score to 1e-5 relative error.
Also: the options the checkpoints do not cover run forward and backward, and the FIR resampling
equals its definition computed directly."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scoresde as sd
from scoresde.nets import DDPM, NETS, NCSNpp, build_net, net_signature
from scoresde.nets import fir

DATA = Path(__file__).resolve().parent / "data" / "refckpt"
FOLDERS = ("vp_ddpmpp_continuous", "subvp_ddpmpp_continuous", "ve_ncsnpp_continuous", "vp_ddpm_continuous")
SDES = {"vpsde": sd.VPSDE, "subvpsde": sd.SubVPSDE, "vesde": sd.VESDE}


def load(folder):
    cfg = json.loads((DATA / folder / "config.json").read_text())
    ckpt = torch.load(DATA / folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    return cfg, ckpt, load_file(str(DATA / folder / "golden.safetensors"))


def build(cfg):
    return {"ncsnpp": NCSNpp, "ddpm": DDPM}[cfg["model"]["name"]].from_reference_config(cfg)


def load_ema(net, ckpt):
    """The reference's EMA.copy_to: shadow_params into the parameters that require grad, in order."""
    net.load_state_dict({k[len("module."):]: v for k, v in ckpt["model"].items()})
    params = [p for p in net.parameters() if p.requires_grad]
    shadow = ckpt["ema"]["shadow_params"]
    assert len(params) == len(shadow) and all(p.shape == s.shape for p, s in zip(params, shadow))
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s)
    return net.eval()


def reference_std(kind, t):
    """The reference's marginal std (sde_lib.marginal_prob), computed as it does, in t's dtype."""
    if kind == "vesde":
        return 0.01 * (50.0 / 0.01) ** t
    log_mean = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return torch.sqrt(1.0 - torch.exp(2.0 * log_mean)) if kind == "vpsde" else 1 - torch.exp(2.0 * log_mean)


def score_model(net, kind):
    """The reference's continuous-time labels: t (N - 1) for VP / sub-VP (an eps network), sigma(t) for VE."""
    if kind == "vesde":
        return sd.ScoreModel(net, sd.VESDE(), parameterization="score", conditioning="sigma")
    return sd.ScoreModel(net, SDES[kind](), parameterization="eps", conditioning="time_index")


def reference_score(net, kind, x, t):
    """get_score_fn(sde, model, continuous=True): VE score = net(x, sigma); VP / sub-VP score =
    -net(x, 999 t) / std(t), the net called through ScoreModel and std the reference's own formula."""
    model = score_model(net, kind)
    if kind == "vesde":
        return model(x, t)
    return -model(x, t, output="eps") / reference_std(kind, t)[:, None, None, None]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("folder", FOLDERS)
def test_state_dict_keys_and_ema_order_are_the_references(folder):
    cfg, ckpt, _ = load(folder)
    net = build(cfg)
    ref = {k[len("module."):]: v for k, v in ckpt["model"].items()}
    ours = net.state_dict()
    assert all(k.startswith("module.") for k in ckpt["model"])
    assert list(ours) == list(ref)
    assert all(ours[k].shape == v.shape and ours[k].dtype == v.dtype for k, v in ref.items())
    # our sigma table is the reference's buffer
    torch.testing.assert_close(ours["sigmas"], ref["sigmas"], rtol=1e-12, atol=0)
    # loading the raw weights by name works (strict) and loads them
    net.load_state_dict(ref)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())
    # the EMA list is in the order of our parameters that require grad (the Fourier W is not among them)
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    shadow = ckpt["ema"]["shadow_params"]
    assert len(trainable) == len(shadow)
    assert all(ref[name].shape == s.shape for name, s in zip(trainable, shadow))
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen == (["all_modules.0.W"] if cfg["model"].get("embedding_type") == "fourier"
                      and cfg["model"]["name"] == "ncsnpp" else [])


@pytest.mark.parametrize("folder", FOLDERS)
def test_score_matches_the_references_with_ema_weights(folder):
    cfg, ckpt, golden = load(folder)
    kind = cfg["training"]["sde"]
    net = load_ema(build(cfg), ckpt)
    x, t, target = golden["x"], golden["t"], golden["score"]
    with torch.no_grad():
        assert rel_err(reference_score(net, kind, x, t), target) < 1e-5
        ours = score_model(net, kind)(x, t)
    # ScoreModel alone: the same except where the reference's float32 std 1 - exp(-B) cancels
    # (t = 0.001: B ~ 1e-4, a relative error ~1e-4 in its std); ours is within 1e-7 of the float64 value.
    sde = SDES[kind]()
    std_ours, std_ref = sde.marginal_coeffs(t)[1], reference_std(kind, t)
    exact = reference_std(kind, t.double())
    assert ((std_ours.double() - exact).abs() / exact).max() < 1e-6
    assert rel_err(ours * (std_ours / std_ref)[:, None, None, None], target) < 1e-5
    far = t >= 0.1
    assert rel_err(ours[far], target[far]) < 1e-5


@pytest.mark.parametrize("folder", FOLDERS)
def test_raw_weights_do_not_match(folder):
    cfg, ckpt, golden = load(folder)
    net = build(cfg)
    net.load_state_dict({k[len("module."):]: v for k, v in ckpt["model"].items()})
    with torch.no_grad():
        got = reference_score(net.eval(), cfg["training"]["sde"], golden["x"], golden["t"])
    assert rel_err(got, golden["score"]) > 1e-2


@pytest.mark.parametrize("folder", FOLDERS)
def test_build_net_takes_the_reference_model_section(folder):
    cfg, _, _ = load(folder)
    name = cfg["model"]["name"]
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    kwargs["centered"] = cfg["data"]["centered"]
    assert set(kwargs) <= set(net_signature(name)) and NETS[name] in (NCSNpp, DDPM)
    net = build_net(name, (3, 32, 32), **kwargs)
    assert list(net.state_dict()) == list(build(cfg).state_dict())


def test_sde_std_is_the_references_marginal_std():
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)[1:]
    for kind, sde in (("vpsde", sd.VPSDE()), ("subvpsde", sd.SubVPSDE()), ("vesde", sd.VESDE())):
        torch.testing.assert_close(sde.marginal_coeffs(t)[1], reference_std(kind, t), rtol=1e-10, atol=0)


# ---- options the checkpoints do not cover: forward + backward at tiny size ---------------------------
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, num_channels=2, dropout=0.1)
OPTIONS = {
    "ddpm_blocks_fir_fourier": dict(resblock_type="ddpm", fir=True, embedding_type="fourier", scale_by_sigma=True),
    "ddpm_blocks_nofir": dict(resblock_type="ddpm", fir=False, resamp_with_conv=False, skip_rescale=False),
    "residual_inputskip_cat": dict(progressive="residual", progressive_input="input_skip", progressive_combine="cat",
                                   fir=True, embedding_type="fourier"),
    "outputskip_residual_in": dict(progressive="output_skip", progressive_input="residual", fir=True,
                                   embedding_type="fourier", centered=False),
    "residual_nofir_positional": dict(progressive="residual", progressive_input="residual", fir=False,
                                      scale_by_sigma=True, num_scales=10),
    "ddpm_blocks_inputskip_residual_out": dict(resblock_type="ddpm", progressive="residual",
                                               progressive_input="input_skip", fir=True, embedding_type="fourier"),
    "unconditional": dict(conditional=False, nonlinearity="elu", init_scale=0.1),
}


def _forward_backward(net, c):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, net.num_channels, net.image_size, net.image_size, generator=g)
    out = net.train()(x, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, p in net.named_parameters():
        if p.requires_grad and (net.conditional or "Dense_0" not in name):  # the reference keeps unused Dense_0s
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return out


@pytest.mark.parametrize("option", list(OPTIONS))
def test_ncsnpp_options_run_forward_and_backward(option):
    torch.manual_seed(0)
    kw = {**TINY, **OPTIONS[option]}
    net = NCSNpp(**kw)
    c = torch.tensor([0.5, 3.0, 40.0]) if kw.get("embedding_type") == "fourier" else torch.tensor([0.0, 4.0, 9.0])
    _forward_backward(net, c)
    assert all(k.startswith("all_modules.") or k == "sigmas" for k in net.state_dict())


def test_ddpm_options_run_forward_and_backward():
    torch.manual_seed(0)
    for kw in (dict(conditional=False), dict(scale_by_sigma=True, num_scales=10, resamp_with_conv=False, centered=False)):
        net = DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, num_channels=1, **kw)
        _forward_backward(net, torch.tensor([0.0, 4.0, 9.0]))


def test_reference_nets_reject_bad_options():
    with pytest.raises(ValueError, match="progressive"):
        NCSNpp(**TINY, progressive="skip")
    with pytest.raises(ValueError, match="multiple of 32"):
        DDPM(nf=16, image_size=8, ch_mult=(1,), num_channels=1)
    with pytest.raises(ValueError, match="x must"):
        NCSNpp(**TINY)(torch.zeros(2, 2, 6, 6), torch.zeros(2))


# ---- FIR resampling against its definition ----------------------------------------------------------
def upfirdn2d_direct(x, k, up, down, p0, p1):
    """Zero insertion (up), zero pad p0 / p1 (negative: crop), convolution with k, keep every down-th."""
    N, C, H, W = x.shape
    u = torch.zeros(N, C, H * up, W * up, dtype=x.dtype)
    u[:, :, ::up, ::up] = x
    size = (H * up + p0 + p1, W * up + p0 + p1)
    v = torch.zeros(N, C, *size, dtype=x.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            si, sj = i - p0, j - p0
            if 0 <= si < H * up and 0 <= sj < W * up:
                v[:, :, i, j] = u[:, :, si, sj]
    kh, kw = k.shape
    out_h, out_w = (size[0] - kh) // down + 1, (size[1] - kw) // down + 1
    out = torch.zeros(N, C, out_h, out_w, dtype=x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):  # convolution: the filter reversed against the input
                    out[:, :, i, j] += v[:, :, i * down + a, j * down + b] * k[kh - 1 - a, kw - 1 - b]
    return out


@pytest.mark.parametrize("up, down, p0, p1", [(1, 1, 0, 0), (2, 1, 2, 1), (1, 2, 1, 1), (2, 2, 1, 2), (3, 1, 1, -1),
                                              (1, 1, -1, 2)])
def test_upfirdn2d_is_its_definition(up, down, p0, p1):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    k = torch.rand(3, 4, generator=g, dtype=torch.float64)  # not symmetric: flips and axes matter
    torch.testing.assert_close(fir.upfirdn2d(x, k, up, down, (p0, p1)), upfirdn2d_direct(x, k, up, down, p0, p1))


def test_fir_up_and_downsampling_are_their_definitions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    k = fir.make_kernel([1, 3, 3, 1]).double()
    assert torch.allclose(k, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])).double() / 64)
    torch.testing.assert_close(fir.upsample_2d(x, k), upfirdn2d_direct(x, 4 * k, 2, 1, 2, 1))
    torch.testing.assert_close(fir.downsample_2d(x, k), upfirdn2d_direct(x, k, 1, 2, 1, 1))
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    # fused up + conv: zero insertion, full cross-correlation with w (pad 2), then the filter (gain 4)
    z = upfirdn2d_direct(x, torch.ones(1, 1, dtype=x.dtype), 2, 1, 0, -1)  # x at even pixels, 2H - 1 wide
    y = torch.nn.functional.conv2d(z, w, padding=2)
    torch.testing.assert_close(fir.upsample_conv_2d(x, w, k), upfirdn2d_direct(y, 4 * k, 1, 1, 1, 1))
    # ... and, away from the border, FIR upsampling followed by a 'same' convolution
    same = torch.nn.functional.conv2d(fir.upsample_2d(x, k), w, padding=1)
    torch.testing.assert_close(fir.upsample_conv_2d(x, w, k)[..., 3:-3, 3:-3], same[..., 3:-3, 3:-3])
    # fused conv + down: the filter (pad 2) then the stride-2 convolution
    torch.testing.assert_close(fir.conv_downsample_2d(x, w, k),
                               torch.nn.functional.conv2d(upfirdn2d_direct(x, k, 1, 1, 2, 2), w, stride=2))
    # a constant image stays constant inside under FIR up- and downsampling (the filter's gain)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fir.upsample_2d(ones, k)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64))
    torch.testing.assert_close(fir.downsample_2d(ones, k)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("name, net_cls, conditioning", [
    ("cifar10_ddpmpp_continuous_vp", NCSNpp, "time_index"), ("cifar10_ddpmpp_continuous_subvp", NCSNpp, "time_index"),
    ("cifar10_ncsnpp_continuous_ve", NCSNpp, "sigma"), ("cifar10_ddpm_continuous_vp", DDPM, "time_index")])
def test_bundled_reference_configs_build_their_network(name, net_cls, conditioning):
    from scoresde.config import load_config, resolve_config
    from scoresde.run import build_score_model, build_sde
    small = ["model.nf=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1"]
    cfg = load_config(resolve_config(name), overrides=small)
    model = build_score_model(cfg, build_sde(cfg), (3, 16, 16))
    assert type(model.net) is net_cls and model.net.nf == 32 and model.conditioning == conditioning
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16), torch.tensor([0.5, 0.1]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
