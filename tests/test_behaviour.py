"""Tests with teeth: each behaviour checked against an independent computation (a call counter of
our own, a closed form, a formula written out here), so that a planted bug that keeps the code
running still fails a test.

1. ``sample()`` and ``scoresde sample`` honour ``steps`` (NFE counted by our own wrapper/hook);
2. ``scoresde likelihood`` on an image run prints the bits/dim ``bits_per_dim`` gives directly;
3. the EMA after k steps is the closed-form weighted average of the recorded weights;
4. the learning rate the optimizer uses at every step follows the warmup + constant/cosine formula;
5. gradient clipping: the optimizer sees norm ``grad_clip`` when above it, the raw gradient below;
6. ``compare``'s NFE and quality numbers equal our own counts and metrics on re-run samples.
"""
import json
import math
import re

import numpy as np
import pytest
import torch

import scoresde
from scoresde import io, metrics
from scoresde.compare import Method, compare
from scoresde.config import from_dict
from scoresde.data import load_dataset
from scoresde.data.toys import on_checkerboard
from scoresde.sampling import SAMPLERS, sample
from scoresde.train import Trainer, train

from conftest import tiny_run, tiny_toy_run


class Calls:
    """Our own score-call counter (deliberately not scoresde's ``Counter``)."""

    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, x, t):
        self.n += 1
        return self.fn(x, t)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return tiny_toy_run(tmp_path_factory)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """digits_vp made tiny through --set: a 3-step run of a small U-Net on 64 digits."""
    from scoresde.cli import main
    workdir = tmp_path_factory.mktemp("digits") / "run"
    sets = ["train.steps=3", "train.batch_size=8", "train.warmup=1", "train.checkpoint_every=3",
            "train.log_every=3", "data.n_train=64", "model.channels=8", "model.channel_mults=[1,2]",
            "model.attn_resolutions=[]", "model.dropout=0.0", "train.device=cpu"]
    code = main(["train", "digits_vp", "--workdir", str(workdir), "--quiet"] + [a for s in sets for a in ("--set", s)])
    assert code == 0
    return str(workdir)


@pytest.fixture(scope="module")
def mix():
    return scoresde.GaussianMixture(weights=[0.3, 0.7], means=[[-1.5, 0.5], [1.0, -0.5]],
                                    covs=[[[0.1, 0.02], [0.02, 0.2]], [[0.15, 0.0], [0.0, 0.1]]])


# ---- 1. steps reach the sampler ----------------------------------------------------------------

#: (sampler, options, score evaluations per step) for fixed-step samplers; denoising adds one
FIXED_STEP = [("euler_maruyama", {}, 1), ("ddim", {}, 1), ("ancestral", {}, 1),
              ("probability_flow", {"method": "euler"}, 1), ("predictor_corrector", {}, 2), ("heun", {}, 2)]


@pytest.mark.parametrize("name,options,per_step", FIXED_STEP, ids=[f"{n}{o.get('method', '')}" for n, o, _ in FIXED_STEP])
def test_sample_nfe_follows_steps(mix, name, options, per_step):
    sde = scoresde.VPSDE()
    for steps in (3, 7):
        for denoise in (True, False):
            counted = Calls(mix.score_fn(sde))
            x = sample(name, counted, sde, (8, 2), steps=steps, generator=torch.Generator().manual_seed(0),
                       denoise=denoise, **options)
            assert x.shape == (8, 2)
            assert counted.n == per_step * steps + int(denoise), (name, steps, denoise)


def test_cli_sample_honours_steps(toy_run, tmp_path, monkeypatch, capsys):
    """``scoresde sample --sampler ddim --steps 3`` makes 3 + 1 network calls (not the run's
    sample.steps = 5) and writes exactly what the API gives for 3 steps with the same seed."""
    from scoresde import run as run_module
    from scoresde.cli import main
    real_load, calls = run_module.load, []

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.net.register_forward_hook(lambda module, inputs, output: calls.append(1))
        return loaded

    monkeypatch.setattr(run_module, "load", counting_load)
    loaded = real_load(toy_run)
    assert loaded.config.sample.steps == 5
    for steps in (3, 8):
        calls.clear()
        out = tmp_path / f"s{steps}.npz"
        code = main(["sample", toy_run, "--sampler", "ddim", "--steps", str(steps), "--num", "16", "--seed", "4",
                     "--device", "cpu", "--out", str(out), "--quiet"])
        assert code == 0, capsys.readouterr().err
        assert len(calls) == steps + 1
        got = np.load(out)["samples"]
        with torch.no_grad():
            want = sample("ddim", loaded.score_fn, loaded.sde, (16, 2), steps=steps, eps=loaded.config.sample.eps,
                          generator=torch.Generator().manual_seed(4))
        np.testing.assert_array_equal(got, want.numpy())


# ---- 2. bits/dim from the command line -----------------------------------------------------------

def test_cli_likelihood_image_bits_per_dim(digits_run, capsys):
    """The image branch prints the bits/dim (mean ± s.e.), NLL and NFE that ``bits_per_dim`` gives
    on the same 4 test images (drawn with seed + 1), probes and dequantization from ``seed``."""
    from scoresde.cli import main
    seed, num = 7, 4
    code = main(["likelihood", digits_run, "--num", str(num), "--seed", str(seed), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    m = re.search(r"test: (\d+) images, bits/dim ([-\d.]+) ± ([\d.]+); NLL on the 0–255 scale ([-\d.]+) ± ([\d.]+) "
                  r"nats per image \(= bits/dim · D · ln 2, D = 64\); hutchinson trace, NFE (\d+)", out)
    assert m, out

    run = scoresde.load(digits_run, device="cpu")
    pixels = load_dataset("digits", "test", n=num, generator=torch.Generator().manual_seed(seed + 1)).pixels
    assert pixels.shape == (num, 1, 8, 8) and pixels.dtype == torch.uint8
    # image i draws its dequantization noise and probes from its own seed, seed + i
    from scoresde.sampling.generators import SampleGenerators
    res = scoresde.bits_per_dim(run.score_fn, run.sde, pixels, data_range=(-1.0, 1.0), estimator="hutchinson",
                                generator=SampleGenerators.range(seed, 0, num))
    bpd, nll = res.bpd.double(), -res.logp.double()
    nll_8bit = bpd * 64 * math.log(2)          # nats per image on the 0-255 scale
    assert int(m.group(1)) == num
    assert m.group(2) == f"{bpd.mean():.4f}"
    assert m.group(3) == f"{bpd.std() / math.sqrt(num):.4f}"
    assert m.group(4) == f"{nll_8bit.mean():.2f}" and m.group(5) == f"{nll_8bit.std() / math.sqrt(num):.2f}"
    assert int(m.group(6)) == res.nfe
    # the bits/dim is the NLL per dimension in bits with the 8-bit change of variables ([-1, 1]: +7)
    assert float(m.group(2)) == pytest.approx(float(nll.mean() / (64 * math.log(2)) + 7), abs=1e-3)


# ---- 3. EMA --------------------------------------------------------------------------------------

def ema_weights(k, decay, convention="trainer"):
    """Closed-form weights w_1..w_k of ema_k = sum_j w_j theta_j, theta_j the weights after step j.

    Convention pinned here (the trainer's): the update after step j runs while the trainer's step
    counter is s = j - 1 and uses decay_s = min(decay, (1 + s) / (10 + s)); the very first update
    (s = 0) copies theta_1 (torch's AveragedModel with nothing averaged yet), so decay_0 = 0.1 is
    never used and theta_0 has weight 0. Thus ema_1 = theta_1 and, for j >= 2,
    ema_j = d_{j-1} ema_{j-1} + (1 - d_{j-1}) theta_j.

    The other conventions only serve to show the test can tell them apart: "swapped" (decay and
    1 - decay exchanged) and "shifted" (s counted from 1, as score_sde's num_updates).
    """
    shift = 1 if convention == "shifted" else 0
    d = [min(decay, (1 + s + shift) / (10 + s + shift)) for s in range(k)]
    if convention == "swapped":
        d = [1 - v for v in d]
    w = []
    for j in range(1, k + 1):
        new = 1.0 if j == 1 else 1.0 - d[j - 1]
        w.append(new * math.prod(d[i] for i in range(j, k)))
    assert abs(sum(w) - 1) < 1e-12
    return w


@pytest.mark.parametrize("decay", [0.999, 0.4])  # 0.4: the cap min(decay, .) binds from s = 5 on
def test_ema_is_the_closed_form_weighted_average(tmp_path, decay):
    k = 8
    cfg = from_dict(tiny_run(steps=k, checkpoint_every=1, keep_checkpoints=k + 1, log_every=k, warmup=0, lr=1e-2,
                             ema_decay=decay))
    train(cfg, str(tmp_path), progress=False)
    thetas, emas = [], []
    for j in range(1, k + 1):
        meta, tensors = io.load_checkpoint(str(tmp_path / "checkpoints" / f"ckpt_{j:08d}"))
        assert meta["step"] == j
        thetas.append({n: v.double() for n, v in tensors["model"].items()})
        emas.append({n: v.double() for n, v in tensors["ema"].items()})
    names = [n for n, v in thetas[0].items() if v.is_floating_point()]
    moved = max((thetas[-1][n] - thetas[0][n]).abs().max().item() for n in names)
    assert moved > 1e-2  # the weights moved enough for the weighting to matter

    def matches(convention):
        for j in range(1, k + 1):
            w = ema_weights(j, decay, convention)
            for n in names:
                want = sum(wi * thetas[i][n] for i, wi in enumerate(w))
                if not torch.allclose(emas[j - 1][n], want, rtol=1e-5, atol=1e-6):
                    return f"ema after step {j}: {n} differs by {(emas[j - 1][n] - want).abs().max().item():.2e}"
        return None

    assert matches("trainer") is None, matches("trainer")
    assert matches("swapped") is not None and matches("shifted") is not None


# ---- 4. learning-rate schedule -----------------------------------------------------------------

def expected_lr(n, lr, warmup, steps, schedule):
    """The learning rate of the n-th optimizer update (n = 1..steps), written out from the config:
    ramps linearly, reaching ``lr`` exactly at update ``warmup``; then constant, or a half cosine
    that starts at ``lr`` on the first update after warmup and would reach 0 at update steps + 1
    (i.e. the rate left after the last step is 0)."""
    if n <= warmup:
        return lr * n / warmup
    if schedule == "constant":
        return lr
    progress = (n - 1 - warmup) / (steps - warmup)
    return lr * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_learning_rate_follows_the_schedule(tmp_path, schedule):
    steps, warmup, lr = 12, 4, 2e-3
    cfg = from_dict(tiny_run(steps=steps, warmup=warmup, lr=lr, lr_schedule=schedule, log_every=1,
                             checkpoint_every=steps))
    trainer = Trainer(cfg, str(tmp_path), progress=False)
    used = []  # the rate each optimizer update applies, read as it starts
    trainer.opt.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.fit()
    want = [expected_lr(n, lr, warmup, steps, schedule) for n in range(1, steps + 1)]
    assert used == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert used[warmup - 1] == pytest.approx(lr) and used[0] == pytest.approx(lr / warmup)
    # metrics.jsonl logs, after step n, the rate the next update will use (0 after the last, for cosine)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    logged = [r["lr"] for r in records]
    assert logged == pytest.approx([expected_lr(n + 1, lr, warmup, steps, schedule) for n in range(1, steps + 1)],
                                   rel=1e-12, abs=1e-15)
    if schedule == "cosine":
        assert logged[-1] == pytest.approx(0.0, abs=1e-15)


# ---- 5. gradient clipping ----------------------------------------------------------------------

@pytest.mark.parametrize("clip", [1e-3, 1e6])  # every step clipped / none
def test_gradient_clipping_as_the_optimizer_sees_it(tmp_path, clip):
    cfg = from_dict(tiny_run(steps=6, grad_clip=clip, log_every=6, checkpoint_every=6))
    trainer = Trainer(cfg, str(tmp_path), progress=False)
    params = [p for p in trainer.net.parameters() if p.requires_grad]
    raw, seen = [], []

    def after_backward(p):  # the gradient backward left, before anything touches it
        raw[-1][id(p)] = p.grad.detach().clone()

    for p in params:
        p.register_post_accumulate_grad_hook(after_backward)
    real_zero = trainer.opt.zero_grad

    def zero_grad(*args, **kwargs):
        raw.append({})
        return real_zero(*args, **kwargs)

    def before_step(opt, args, kwargs):  # the gradient the update is about to apply
        seen.append({id(p): p.grad.detach().clone() for p in params if p.grad is not None})

    trainer.opt.zero_grad = zero_grad
    trainer.opt.register_step_pre_hook(before_step)
    trainer.fit()
    assert len(raw) == len(seen) == 6
    for r, s in zip(raw, seen):
        assert r.keys() == s.keys() and len(r) == len(params)
        raw_norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in r.values()))
        seen_norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in s.values()))
        if clip < 1:
            assert raw_norm > 10 * clip
            assert seen_norm == pytest.approx(clip, rel=1e-5)
            for key in r:  # same direction: the whole gradient scaled by one factor
                torch.testing.assert_close(s[key].double(), r[key].double() * (clip / raw_norm), rtol=1e-5, atol=1e-12)
        else:
            assert raw_norm < clip
            for key in r:
                assert torch.equal(s[key], r[key])


# ---- 6. compare ----------------------------------------------------------------------------------

def test_compare_rows_match_our_own_counts_and_metrics(mix):
    sde = scoresde.VPSDE()
    exact = mix.score_fn(sde)
    reference = mix.sample(150, torch.Generator().manual_seed(11))
    methods = [Method("ddim", "ddim", {}), Method("euler_maruyama", "euler_maruyama", {}),
               Method("heun:edm", "heun", {}),
               Method("pf_ode:dopri5", "probability_flow", {"method": "dopri5"}, adaptive="ode")]
    num, seed, eps, steps, tols = 120, 5, 1e-3, (3, 6), (1e-3,)
    total = Calls(exact)
    rows = compare(total, sde, reference, num=num, steps=steps, tolerances=tols, methods=methods, eps=eps,
                   seed=seed, on_target=on_checkerboard)
    assert [(r["sampler"], r["setting"]) for r in rows] == [(m.label, s) for m in methods
                                                             for s in (tols if m.adaptive else steps)]
    assert total.n == sum(r["nfe"] for r in rows)

    x_T = sde.prior_sampling((num, 2), generator=torch.Generator().manual_seed(seed))
    by_label = {m.label: m for m in methods}
    for row in rows:
        m = by_label[row["sampler"]]
        options = dict(m.options)
        options.update(dict(rtol=row["setting"], atol=row["setting"]) if m.adaptive else dict(steps=row["setting"]))
        counted = Calls(exact)
        with torch.no_grad():
            x = SAMPLERS[m.sampler](counted, sde, x_T.clone(), eps=eps, generator=torch.Generator().manual_seed(seed),
                                    **options)
        assert row["nfe"] == counted.n, row
        if m.sampler in ("ddim", "euler_maruyama"):
            assert row["nfe"] == row["steps"] + 1
        if m.sampler == "heun":
            assert row["nfe"] == 2 * row["steps"] + 1
        flat, ref = x.double(), reference.double()
        assert row["energy_distance"] == pytest.approx(metrics.energy_distance(flat, ref), rel=1e-9, abs=1e-12)
        assert row["sliced_wasserstein"] == pytest.approx(
            metrics.sliced_wasserstein(flat, ref, generator=torch.Generator().manual_seed(seed)), rel=1e-9, abs=1e-12)
        on_board = sum(bool(v) for v in on_checkerboard(x)) / num
        assert row["on_target"] == pytest.approx(on_board, abs=1e-6)  # float32 mean; one point is 1/120
    # the rows differ from each other (x_T and the sampler matter), so the comparisons above have power
    assert len({round(r["energy_distance"], 12) for r in rows}) == len(rows)
