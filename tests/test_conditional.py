"""Class-conditional score networks, label dropout, the time-dependent (noisy) classifier, and guided
sampling from the command line (``scoresde sample RUN --class K --guidance S [--classifier CLF]``)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde import guidance, sampling
from scoresde.config import from_dict
from scoresde.losses import drop_labels, dsm_loss, noisy_classifier_loss
from scoresde.nets import MLP, UNet, MLPClassifier, UNetClassifier, build_net
from scoresde.score import NoisyClassifier, ScoreModel
from scoresde.train import Trainer, train

from conftest import tiny_digits_run
from test_cli import assert_one_line_error, run_cli
from test_train import assert_same_checkpoint


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` with every parameter redrawn: the zero-initialised output layers and class table would
    otherwise make every output (and its dependence on y) exactly zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def tiny_net(which, num_classes):
    """A small MLP (which 0) or U-Net (which 1); 2 GroupNorm groups, so the embeddings' per-channel
    shifts survive the normalisation that follows them."""
    if which == 0:
        return MLP(4, hidden=16, depth=2, embed_dim=8, num_classes=num_classes)
    return UNet(in_channels=1, channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                dropout=0.0, image_size=8, num_groups=2, num_classes=num_classes)


def inputs(net, batch=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4) if isinstance(net, MLP) else (batch, 1, 8, 8)
    return torch.randn(shape, generator=g), torch.rand(batch, generator=g)


# ---- networks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "unet"])
def test_conditional_net_with_y_none_is_the_null_class_and_each_row_sees_its_own_label(which):
    net = randomized(tiny_net(which, 3))
    x, c = inputs(net)
    null = torch.full((5,), 3, dtype=torch.long)
    y = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        assert torch.equal(net(x, c), net(x, c, null))
        out = net(x, c, y)
        for k in range(4):  # row i of a mixed batch is row i of the batch all of class y_i
            rows = y == k
            assert torch.allclose(out[rows], net(x, c, torch.full((5,), k))[rows], atol=1e-6)
        # the label matters: every pair of classes gives another output
        outs = [net(x, c, torch.full((5,), k)) for k in range(4)]
        assert all((outs[i] - outs[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))


@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "unet"])
def test_unconditional_nets_keep_their_parameters_and_refuse_labels(which):
    torch.manual_seed(0)
    plain = tiny_net(which, 0)
    torch.manual_seed(0)
    cond = tiny_net(which, 5)
    # the class table is the only new tensor, and it is drawn last: same seed, same other weights
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"class_embed.embedding.weight"}
    assert all(torch.equal(v, cond.state_dict()[k]) for k, v in plain.state_dict().items())
    # a fresh conditional network (zero class table) is the unconditional one, whatever the label
    x, c = inputs(plain)
    with torch.no_grad():
        assert torch.equal(cond(x, c, torch.arange(5) % 5), plain(x, c))
    with pytest.raises(ValueError, match="y.*unconditional"):
        plain(x, c, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        cond(x, c, torch.zeros(5))


def test_unconditional_state_dict_keys_are_those_of_existing_checkpoints():
    """The keys an MLP checkpoint written before conditional networks existed holds, unchanged."""
    keys = ["embed.W", "time_mlp.0.weight", "time_mlp.0.bias", "time_mlp.2.weight", "time_mlp.2.bias",
            "inp.weight", "inp.bias", "blocks.0.lin1.weight", "blocks.0.lin1.bias", "blocks.0.temb.weight",
            "blocks.0.temb.bias", "blocks.0.lin2.weight", "blocks.0.lin2.bias", "out.weight", "out.bias"]
    assert list(build_net("mlp", (2,), hidden=8, depth=1, embed_dim=4).state_dict()) == keys
    assert list(build_net("mlp", (2,), hidden=8, depth=1, embed_dim=4, num_classes=0).state_dict()) == keys


def test_score_model_passes_y_and_cond_score_fn_is_the_conditional_score():
    sde = sd.VPSDE()
    net = randomized(tiny_net(0, 3))
    model = ScoreModel(net, sde)
    x, _ = inputs(net)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    y = torch.tensor([0, 1, 2, 0, 1])
    alpha, sigma = (v[:, None] for v in sde.marginal_coeffs(t, x))
    with torch.no_grad():
        assert torch.allclose(model.cond_score_fn(x, t, y), -net(x, t, y) / sigma)
        assert torch.equal(model.cond_score_fn(x, t, None), model(x, t))
        assert torch.equal(model(x, t, y=2), model(x, t, y=torch.full((5,), 2)))
        assert torch.allclose(model.x0(x, t, y=y), (x - sigma * net(x, t, y)) / alpha)
    assert model.num_classes == 3
    with pytest.raises(ValueError, match="y must be a class in 0..2"):
        model(x, t, y=4)
    plain = ScoreModel(tiny_net(0, 0), sde)
    with pytest.raises(ValueError, match="^y: .*unconditional"):
        plain(x, t, y=y)
    with pytest.raises(ValueError, match="^y: .*unconditional"):
        plain.cond_score_fn(x, t, 1)


# ---- losses ----------------------------------------------------------------------------------------

def test_dsm_loss_with_labels_equals_its_formula_on_the_documented_draws():
    """Draws: B uniforms for t, then z like x0; the labels reach the model."""
    sde, eps = sd.VPSDE(), 1e-3
    net = randomized(tiny_net(0, 3))
    model = ScoreModel(net, sde)
    x0, _ = inputs(net, batch=8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss = dsm_loss(model, sde, x0, eps=eps, generator=torch.Generator().manual_seed(4), y=y)
    g = torch.Generator().manual_seed(4)
    t = eps + (1 - eps) * torch.rand(8, generator=g)
    z = torch.randn(x0.shape, generator=g)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None] * z
    s = -net(xt, t, y) / std[:, None]
    expected = ((std[:, None] * s + z) ** 2).mean(1).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    other = dsm_loss(model, sde, x0, eps=eps, generator=torch.Generator().manual_seed(4), y=(y + 1) % 4)
    assert not torch.allclose(loss, other)
    with pytest.raises(ValueError, match="y must be an integer tensor of shape \\(8,\\)"):
        dsm_loss(model, sde, x0, y=y[:3])


def test_noisy_classifier_loss_is_the_cross_entropy_at_x_t():
    sde, eps = sd.VESDE(), 1e-5
    net = randomized(MLPClassifier(4, hidden=16, depth=1, embed_dim=8, num_classes=3))
    clf = NoisyClassifier(net, sde)
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    loss = noisy_classifier_loss(clf, sde, x0, y, eps=eps, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = eps + (1 - eps) * torch.rand(6, generator=g)
    z = torch.randn(x0.shape, generator=g)
    std = sde.marginal_prob(x0, t)[1]
    logits = net(x0 + std[:, None] * z, torch.log(std))    # VE: the classifier sees log sigma(t)
    expected = -torch.log_softmax(logits, 1)[torch.arange(6), y].mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(clf.classifier_logp(x0, 0.5).exp().sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        noisy_classifier_loss(clf, sde, x0, y.float())


def test_unet_classifier_gives_one_row_of_logits_per_image():
    net = randomized(UNetClassifier(in_channels=1, channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                    attn_resolutions=(4,), dropout=0.0, image_size=8, num_classes=10))
    x, c = inputs(net, batch=3)
    with torch.no_grad():
        logits = net(x, c)
        assert logits.shape == (3, 10)
        assert torch.allclose(net(x[1:2], c[1:2]), logits[1:2], atol=1e-5)  # no batch statistics
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        MLPClassifier(2, num_classes=1)


def test_label_dropout_rate_is_p_within_binomial_error():
    n, k = 200_000, 10
    y = torch.randint(k, (n,), generator=torch.Generator().manual_seed(0))
    for p in (0.1, 0.5):
        dropped = drop_labels(y, p, k, torch.Generator().manual_seed(1))
        null = dropped == k
        assert abs(null.double().mean().item() - p) < 4.5 * math.sqrt(p * (1 - p) / n), p
        assert torch.equal(dropped[~null], y[~null])            # the others keep their label
    assert torch.equal(drop_labels(y, 0.0, k, torch.Generator()), y)
    assert torch.equal(drop_labels(y, 0.3, k, torch.Generator().manual_seed(5)),
                       drop_labels(y, 0.3, k, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="p must be a number in \\[0, 1\\)"):
        drop_labels(y, 1.0, k)


# ---- training --------------------------------------------------------------------------------------

def conditional_raw(**train):
    raw = {"sde": {"type": "vp"}, "data": {"name": "digits"},
           "model": {"name": "unet", "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                     "attn_resolutions": [], "dropout": 0.0, "num_groups": 2, "num_classes": 10},
           "train": {"steps": 4, "batch_size": 16, "lr": 0.01, "checkpoint_every": 2, "log_every": 1, "warmup": 1,
                     "label_dropout": 0.25, "keep_checkpoints": 5},
           "sample": {"steps": 4, "sampler": "ddim"}}
    raw["train"].update(train)
    return raw


def classifier_raw(**train):
    raw = conditional_raw(label_dropout=0.0, objective="classifier", **train)
    raw["model"]["attn_resolutions"] = [4]
    return raw


def test_trainer_drops_labels_at_rate_p_from_the_stream_labels(tmp_path):
    p, steps, batch = 0.3, 12, 64
    trainer = Trainer(from_dict(conditional_raw(label_dropout=p, steps=steps, batch_size=batch, checkpoint_every=100)),
                      str(tmp_path / "run"), progress=False)
    seen, loss_fn = [], trainer.loss_fn

    def recording(*args, y=None, **kwargs):
        seen.append(y.clone())
        return loss_fn(*args, y=y, **kwargs)

    trainer.loss_fn = recording
    trainer.fit()
    # the labels the stream gave, in order (the same seed and data as the trainer's stream)
    stream = sd.data.BatchStream(trainer.dataset, batch, seed=0, labels=True)
    truth = torch.cat([next(stream)[1] for _ in range(steps)])
    got = torch.cat(seen)
    null = got == 10
    n = steps * batch
    assert abs(null.double().mean().item() - p) < 4.5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(got[~null], truth[~null])


@pytest.mark.parametrize("raw", [conditional_raw, classifier_raw], ids=["conditional", "classifier"])
def test_resume_is_bit_identical_with_labels(tmp_path, raw):
    """Label dropout and the classifier's draws come from the step's seeded generator: a run stopped
    after 2 steps and resumed equals the uninterrupted one."""
    train(from_dict(raw()), str(tmp_path / "full"), progress=False)
    train(from_dict(raw(steps=2)), str(tmp_path / "parts"), progress=False)
    train(from_dict(raw()), str(tmp_path / "parts"), resume=True, progress=False)
    assert_same_checkpoint(tmp_path / "full" / "checkpoints" / "ckpt_00000004",
                           tmp_path / "parts" / "checkpoints" / "ckpt_00000004")


def test_resume_refuses_another_objective(tmp_path):
    from scoresde.io import CheckpointError
    train(from_dict(conditional_raw(steps=2)), str(tmp_path / "run"), progress=False)
    with pytest.raises(CheckpointError, match="train.objective 'score', this run's is 'classifier'"):
        train(from_dict(conditional_raw(label_dropout=0.0, objective="classifier")), str(tmp_path / "run"),
              resume=True, progress=False)


def test_noisy_classifier_learns_the_exact_class_posterior_of_a_gaussian_mixture():
    """A noisy classifier trained on a 2-D two-component mixture (labels: the component) approaches the
    exact p_t(k | x_t) of ``GaussianMixture.class_log_prob``, measured by the mean total variation
    E_{x_t ~ p_t} TV(p_model(. | x_t), p_t(. | x_t)) at four times, each on 4000 fresh points.

    Tolerance 0.06 at every t. Measured: 0.003-0.03 after these 1500 steps (the largest at t = 0.4,
    where the classes overlap most and the posterior varies fastest). The controls, computed here, sit
    far above it: the untrained (uniform) classifier and the class prior alone (the best classifier
    that ignores x) reach 0.17-0.49 at t <= 0.4, and the trained classifier asked about a wrong time
    (3t) 0.15-0.25 at t = 0.2 and 0.4, so a classifier that ignores x, or t, fails."""
    torch.manual_seed(0)
    gm = sd.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [1.0, -0.5]],
                            covs=[[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]])
    sde = sd.VPSDE()
    clf = NoisyClassifier(MLPClassifier(2, hidden=64, depth=2, embed_dim=32, fourier_scale=4.0), sde)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(1500):
        x, k = gm.sample(512, g, return_components=True)
        loss = noisy_classifier_loss(clf, sde, x.float(), k, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def tv(logp, times=(0.05, 0.2, 0.4, 0.7)):
        gt, out = torch.Generator().manual_seed(7), []
        for t in times:
            x0 = gm.sample(4000, gt).float()
            mean, std = sde.marginal_prob(x0, torch.full((4000,), t))
            xt = mean + std[:, None] * torch.randn(x0.shape, generator=gt)
            with torch.no_grad():
                p = logp(xt, t).exp()
            q = gm.class_log_prob(xt.double(), t, sde).exp().float()
            out.append((0.5 * (p - q).abs().sum(1)).mean().item())
        return out

    trained = tv(clf.classifier_logp)
    assert max(trained) < 0.06, trained
    prior = tv(lambda x, t: gm.weights.float().log().expand(len(x), 2))
    wrong_time = tv(lambda x, t: clf.classifier_logp(x, min(3 * t, 1.0)))
    assert max(prior[:3]) > 0.15 and max(wrong_time) > 0.15, (prior, wrong_time)


# ---- configs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,override,needle", [
    ("toy_vp", "model.num_classes=3", "no class labels"),
    ("digits_vp", "train.label_dropout=0.1", "train.label_dropout"),
    ("digits_vp_conditional", "train.label_dropout=1", "train.label_dropout"),
    ("digits_vp_conditional", "model.num_classes=5", "model.num_classes"),
    ("digits_vp_conditional", "model.num_classes=-1", "model.num_classes"),
    ("digits_vp", "train.objective=classifier", "model.num_classes"),
    ("digits_vp", "train.objective=nonsense", "train.objective"),
    ("digits_vp_noisy_classifier", "train.snapshot_every=10", "train.snapshot_every"),
    ("cifar10_ddpmpp_continuous_vp", "model.num_classes=10", "model.num_classes"),   # NCSN++: no class input
])
def test_bad_conditional_configs_are_one_line(capsys, tmp_path, config, override, needle):
    workdir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", config, "--workdir", workdir, "--set", override, "--quiet")
    assert_one_line_error(code, err, needle)
    assert not workdir.exists()


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional digits run, a tiny noisy classifier of digits and an unconditional run."""
    root = tmp_path_factory.mktemp("conditional")
    train(from_dict(conditional_raw()), str(root / "cond"), progress=False)
    train(from_dict(classifier_raw(steps=2)), str(root / "clf"), progress=False)
    return {"cond": str(root / "cond"), "clf": str(root / "clf"), "plain": tiny_digits_run(tmp_path_factory)}


def api_samples(score_fn, run, n, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = sampling.sample("ddim", score_fn, run.sde, (n,) + run.data_shape, steps=4, eps=run.config.sample.eps,
                            generator=g, device=torch.device("cpu"))
    return x.clamp(*run.data_range).numpy()


def cli_samples(capsys, tmp_path, run_dir, *flags, name="s.npz"):
    out = tmp_path / name
    code, stdout, err = run_cli(capsys, "sample", run_dir, "--sampler", "ddim", "--steps", "4", "--num", "6",
                                "--seed", "5", "--device", "cpu", "--out", out, "--quiet", *flags)
    assert code == 0, err
    return np.load(out)["samples"], stdout


def spy(monkeypatch, name):
    """Record the (labels, scale) each call of scoresde.guidance.<name> receives from the command."""
    calls, original = [], getattr(guidance, name)

    def recording(*args):
        calls.append((torch.as_tensor(args[-2]).tolist(), args[-1]))
        return original(*args)

    monkeypatch.setattr(guidance, name, recording)
    return calls


def test_sample_class_and_guidance_are_classifier_free_guidance(capsys, tmp_path, runs, monkeypatch):
    run = sd.load(runs["cond"])
    assert run.num_classes == 10 and run.cond_score_fn is not None
    # the trained class table reaches the score (a 4-step model's samples are clipped, so this is
    # checked on the score itself)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (run.cond_score_fn(x, 0.5, 3) - run.cond_score_fn(x, 0.5, 4)).abs().max() > 1e-6
    calls = spy(monkeypatch, "classifier_free")
    x3, out = cli_samples(capsys, tmp_path, runs["cond"], "--class", "3", "--guidance", "2")
    assert "classifier-free guidance, class 3, scale 2" in out and calls == [([3] * 6, 2.0)]
    expected = api_samples(guidance.classifier_free(run.cond_score_fn, 3, 2.0), run, 6, 5)
    assert np.allclose(x3, expected, atol=1e-6)
    # a list is taken cyclically; the default scale, 1, is the plain conditional score s(x, t, y)
    x_plain, _ = cli_samples(capsys, tmp_path, runs["cond"], "--class", "3,5", name="s35.npz")
    assert calls[-1] == ([3, 5, 3, 5, 3, 5], 1.0)
    y = torch.tensor([3, 5, 3, 5, 3, 5])
    assert np.allclose(x_plain, api_samples(lambda x, t: run.cond_score_fn(x, t, y), run, 6, 5), atol=1e-6)


def test_sample_with_classifier_is_classifier_guidance(capsys, tmp_path, runs, monkeypatch):
    run, clf = sd.load(runs["plain"]), sd.load(runs["clf"])
    assert clf.score_fn is None and clf.num_classes == 10 and clf.objective == "classifier"
    calls = spy(monkeypatch, "classifier")
    x, out = cli_samples(capsys, tmp_path, runs["plain"], "--class", "7", "--guidance", "3",
                         "--classifier", runs["clf"])
    assert "classifier guidance, class 7, scale 3" in out and calls == [([7] * 6, 3.0)]
    expected = api_samples(guidance.classifier(run.score_fn, clf.classifier_logp, 7, 3.0), run, 6, 5)
    assert np.allclose(x, expected, atol=1e-6)


def test_sharded_sampling_with_guidance_records_the_classes(capsys, tmp_path, runs):
    import json
    from scoresde.generate import load_samples
    out = tmp_path / "shards"
    args = ["sample", runs["cond"], "--sampler", "ddim", "--steps", "4", "--num-samples", "6", "--batch-size", "4",
            "--shard-size", "3", "--device", "cpu", "--out", out, "--quiet"]
    code, _, err = run_cli(capsys, *args, "--class", "1,2", "--guidance", "2")
    assert code == 0, err
    assert load_samples(str(out)).shape == (6, 8, 8, 1)
    meta = json.loads((out / "generate.json").read_text())
    assert meta["classes"] == [1, 2] and meta["guidance_scale"] == 2.0 and meta["guidance"] == "classifier-free"
    code, _, err = run_cli(capsys, *args, "--class", "5", "--guidance", "2")
    assert_one_line_error(code, err, "other settings", "classes")


def test_bad_guidance_combinations_are_one_line_errors(capsys, tmp_path, runs):
    cond, clf, plain = runs["cond"], runs["clf"], runs["plain"]
    out = tmp_path / "never.png"
    cases = [
        ((plain, "--class", "3"), ("--class", "unconditional")),
        ((cond, "--class", "10"), ("--class 10", "0..9")),
        ((cond, "--class", "-1"), ("--class -1",)),
        ((cond, "--class", "three"), ("--class",)),
        ((cond, "--guidance", "2"), ("--guidance", "only with --class")),
        ((cond, "--classifier", clf), ("--classifier", "only with --class")),
        ((cond, "--class", "3", "--guidance", "-1"), ("--guidance",)),
        ((cond, "--class", "3", "--guidance", "inf"), ("--guidance",)),
        ((plain, "--class", "3", "--classifier", cond), ("--classifier", "noisy classifier")),
        ((plain, "--class", "3", "--classifier", tmp_path / "missing"), ("--classifier", "missing")),
        ((plain, "--class", "12", "--classifier", clf), ("--class 12",)),
        ((clf,), ("noisy-classifier run",)),
    ]
    for argv, needles in cases:
        code, _, err = run_cli(capsys, "sample", *argv, "--out", out, "--quiet", "--device", "cpu")
        assert_one_line_error(code, err, *needles)
        assert not out.exists()
    code, _, err = run_cli(capsys, "likelihood", clf, "--device", "cpu")
    assert_one_line_error(code, err, "noisy-classifier run")
