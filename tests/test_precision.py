"""--precision bf16 / --channels-last for sampling (scoresde.precision): the network runs under bf16
autocast, the sampler's own arithmetic stays float32.

Tolerance of the bf16-vs-fp32 sample comparison (ddim, 20 steps, VP, 256 samples, the nets below
with seeds 0/1, CPU): measured relative difference ||x_bf16 - x_fp32|| / ||x_fp32|| of 8.7e-4
(MLP), 4.6e-4 (U-Net), 1.85e-3 (exact mixture, whose score has autocast-eligible ops); with the
whole sampler in bf16 (x and its updates in bf16, the planted fault) it is 1.21e-2 (MLP) and
9.8e-3 (U-Net). REL_TOL = 3e-3 sits 1.6x above the largest agreement and 3x below the smallest
planted fault; the test asserts both sides.
"""
import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import sampling
from scoresde.nets import build_net
from scoresde.precision import autocast_score, precision_score, to_channels_last

from test_api import SyncGuard, _untouched
from conftest import tiny_digits_run

REL_TOL = 3e-3
NETS = [("mlp", (2,), dict(hidden=64, depth=2)),
        ("unet", (1, 8, 8), dict(channels=8, channel_mults=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                 dropout=0.0))]


def _model(name, shape, kw, sde):
    torch.manual_seed(0)
    net = build_net(name, shape, **kw)
    with torch.no_grad():  # the output layer starts at zero: give it weights, so the net's output counts
        for p in net.parameters():
            if p.dim() > 1 and (p == 0).all():
                torch.nn.init.normal_(p, std=0.02)
    return sd.ScoreModel(net, sde).eval()


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_exact_mixture_under_bf16_agrees_and_stays_float32():
    """A ScoreModel around the exact mixture's eps: float32 samples at bf16-level agreement."""
    gm = sd.GaussianMixture(weights=[0.3, 0.7], means=[[-2.0, 0.0], [2.0, 0.0]], covs=[0.1, 0.2])
    sde = sd.VPSDE()
    exact = gm.score_fn(sde)

    class ExactEps(torch.nn.Module):
        def forward(self, x, c):  # c = t ("time" conditioning); eps = -sigma * score, 
            return -sde.marginal_coeffs(c, x)[1][:, None] * exact(x, c)

    model = sd.ScoreModel(ExactEps(), sde)
    x_T = sde.prior_sampling((500, 2), generator=torch.Generator().manual_seed(0))
    ref = sampling.ddim(model, sde, x_T, steps=20)
    bf = sampling.ddim(autocast_score(model, "bf16"), sde, x_T, steps=20)
    # the mixture's score itself has autocast-eligible ops (so not bit-identical): bf16-level agreement
    assert bf.dtype == torch.float32 and 0 < _rel(bf, ref) < REL_TOL


@pytest.mark.parametrize("name,shape,kw", NETS, ids=[n[0] for n in NETS])
def test_bf16_network_samples_agree_with_fp32(name, shape, kw):
    sde = sd.VPSDE()
    model = _model(name, shape, kw, sde)
    x_T = sde.prior_sampling((256,) + shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = torch.full((256,), 0.5)
        s32, s16 = model(x_T, t), autocast_score(model)(x_T, t)
        ref = sampling.ddim(model, sde, x_T, steps=20)
        bf = sampling.ddim(autocast_score(model), sde, x_T, steps=20)
        whole = sampling.ddim(autocast_score(model), sde, x_T.bfloat16(), steps=20)  # the planted fault
    assert s16.dtype == torch.float32 and 0 < _rel(s16, s32) < 2e-2  # autocast did act, at bf16's precision
    assert bf.dtype == torch.float32 and torch.isfinite(bf).all()
    assert _rel(bf, ref) < REL_TOL, _rel(bf, ref)
    # the test has teeth: the sampler's arithmetic in bf16 is caught
    assert _rel(whole.float(), ref) > REL_TOL, _rel(whole.float(), ref)


def test_wrapper_returns_x_dtype_and_layout():
    sde = sd.VPSDE()
    model = _model(*NETS[1], sde)
    to_channels_last(model.net)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            s = precision_score(model.double() if dtype == torch.float64 else model.float(), "bf16",
                                channels_last=True)(x.to(dtype), torch.full((3,), 0.5, dtype=dtype))
            assert s.dtype == dtype and s.is_contiguous()
    f = lambda x, t: x  # noqa: E731
    assert precision_score(f, "fp32") is f
    with pytest.raises(ValueError, match="precision"):
        precision_score(f, "fp16")


def test_no_host_sync_with_bf16_network():
    sde = sd.VPSDE()
    model = _model(*NETS[0], sde)
    wrapped = autocast_score(model)
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0))
    calls = []
    # exempt: the SDE's CPU-only time-range check (a bool read, skipped on a GPU)
    with SyncGuard(exempt=lambda t: t.dtype == torch.bool and t.device.type == "cpu") as guard:
        def score(x, t):
            guard.arm()
            calls.append(1)
            return wrapped(x, t)  # the wrapper and the network run under the guard
        with torch.no_grad():
            out = sampling.ddim(score, sde, x_T, steps=4, denoise=False)
    assert _untouched() and len(calls) >= 2 and out.dtype == torch.float32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A 2-step U-Net run on 8x8 digits (1 x 8 x 8 images on [-1, 1])."""
    return tiny_digits_run(tmp_path_factory)


def test_cli_bf16_and_channels_last(digits, tmp_path):
    from scoresde.cli import main
    outs = {}
    for label, extra in (("fp32", []), ("bf16", ["--precision", "bf16"]),
                         ("bf16cl", ["--precision", "bf16", "--channels-last"])):
        out = tmp_path / f"{label}.npz"
        assert main(["sample", digits, "--sampler", "ddim", "--steps", "5", "--num-samples", "8", "--quiet",
                     "--device", "cpu", "--out", str(out), *extra]) == 0
        with np.load(out) as z:
            outs[label] = torch.from_numpy(z["samples"])
    assert outs["bf16"].dtype == torch.float32
    for label in ("bf16", "bf16cl"):
        assert _rel(outs[label], outs["fp32"]) < REL_TOL, (label, _rel(outs[label], outs["fp32"]))
    # shards: the precision is recorded, a resume with another precision is refused
    folder = str(tmp_path / "shards")
    assert main(["sample", digits, "--sampler", "ddim", "--steps", "3", "--num-samples", "4", "--quiet",
                 "--device", "cpu", "--out", folder, "--precision", "bf16", "--channels-last"]) == 0
    with pytest.raises(ValueError, match="precision"):
        from scoresde.generate import generate
        from scoresde.run import load
        generate(load(digits, device="cpu"), 4, folder, sampler="ddim", steps=3, progress=False, log=None)
