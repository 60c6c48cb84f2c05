"""scoresde.pretrained.from_diffusers: a diffusers UNet2DModel + its scheduler config -> a scoresde run.

Tiny random UNet2DModels saved by diffusers' own pipelines are imported, and the imported score and
samplers are compared with diffusers' schedulers driving the same UNet:

* the score is the UNet's output converted by hand with diffusers' own alphas_cumprod
  (epsilon: -out / s, sample: (a out - x) / s^2, v_prediction: -(s x + a out) / s) or, for
  ScoreSdeVe, the output itself at the pipeline's sigma;
* ``ddim(..., timesteps=DDIMScheduler.timesteps, eta=0)`` is DDIMScheduler's loop (eta 0,
  clip_sample False). Its last step: set_alpha_to_one=True goes to alphā = 1, i.e. returns x̂0
  from the last timestep, which is our denoising step (denoise=True); set_alpha_to_one=False goes
  to alphā_0, which from timestep 0 leaves x unchanged and from timestep j > 0 is a DDIM step to
  index 0: our timesteps + [0] with denoise=False;
* ``ancestral(..., timesteps=DDPMScheduler.timesteps)`` is DDPMScheduler's loop with the same
  noise draws (variance_type fixed_small = our "posterior", fixed_large = our "beta").

The score at chain index 0 is evaluated at t = max(0, eps): these runs pass the imported run's own
``sample.eps`` (1e-8) so that the UNet sees timestep ~0 there as diffusers does (the samplers'
default eps=1e-3 would show it timestep 0.999).
"""
import json
import os
import sys

import diffusers  # in the test extra: never skipped
import pytest
import torch

import scoresde as sd
from scoresde.pretrained.diffusers import from_diffusers

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

TINY = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
N = 1000


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(**dict(TINY, **kw)).eval()


def ddpm_scheduler(**kw):
    base = dict(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    return diffusers.DDPMScheduler(**dict(base, **kw))


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def save_ddpm(path, unet, **sched):
    scheduler = ddpm_scheduler(**sched)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(path))
    return scheduler


@pytest.fixture(scope="module", params=["epsilon", "sample", "v_prediction"])
def imported(request, unet, tmp_path_factory):
    """(prediction_type, the DDPMScheduler, the imported run)."""
    path = tmp_path_factory.mktemp(request.param)
    scheduler = save_ddpm(path, unet, prediction_type=request.param)
    return request.param, scheduler, from_diffusers(str(path))


def x_T(seed=1):
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_mapping(imported):
    prediction, _, run = imported
    assert isinstance(run.sde, sd.VPSDE)
    assert (run.sde.beta_min, run.sde.beta_max, run.sde.N) == pytest.approx((1e-4 * N, 0.02 * N, N))
    m = run.config.model
    assert (m["name"], m["parameterization"], m["conditioning"], m["prediction_type"]) == \
        ("diffusers_unet2d", "score", "time_index", prediction)
    assert run.data_shape == (3, 8, 8) and run.data_range == (-1.0, 1.0) and run.step == 0
    assert not run.net.training
    # the VP SDE's discrete chain is diffusers' schedule
    ours = run.sde.alphas_cumprod.float()
    theirs = diffusers.DDPMScheduler(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02).alphas_cumprod
    assert torch.allclose(ours, theirs, rtol=1e-5)


@torch.no_grad()
def test_score_is_the_output_converted_by_hand(imported, unet):
    prediction, scheduler, run = imported
    x = x_T(2)
    # diffusers' alphā from its betas, in float64: its float32 alphas_cumprod leaves 1 - alphā_0 = 1e-4
    # with a relative error of 6e-4
    alphas_cumprod = torch.cumprod(1 - scheduler.betas.double(), 0)
    for i in (0, 1, 10, 500, 999):
        out = unet(x, torch.tensor(i)).sample
        ab = alphas_cumprod[i]
        a, s = ab.sqrt().float(), (1 - ab).sqrt().float()
        by_hand = {"epsilon": -out / s, "sample": (a * out - x) / s ** 2, "v_prediction": -(s * x + a * out) / s}
        ours = run.score_fn(x, torch.full((2,), i / (N - 1)))
        assert rel(ours, by_hand[prediction]) < 1e-4, (prediction, i)


@torch.no_grad()
def diffusers_ddim(unet, scheduler, steps, x, **config):
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config, clip_sample=False, **config)
    ddim.set_timesteps(steps)
    for t in ddim.timesteps:
        x = ddim.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return x, ddim.timesteps.tolist()


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_equals_diffusers(imported, unet, steps):
    _, scheduler, run = imported
    theirs, timesteps = diffusers_ddim(unet, scheduler, steps, x_T(), set_alpha_to_one=True, steps_offset=0)
    assert timesteps[-1] == 0
    ours = sd.sampling.ddim(run.score_fn, run.sde, x_T(), timesteps=timesteps, eta=0.0, eps=run.config.sample.eps)
    assert rel(ours, theirs) < 1e-4


@pytest.mark.parametrize("set_alpha_to_one, steps_offset", [(False, 0), (True, 1), (False, 1)])
def test_ddim_final_step_conventions(imported, unet, set_alpha_to_one, steps_offset):
    _, scheduler, run = imported
    theirs, timesteps = diffusers_ddim(unet, scheduler, 10, x_T(), set_alpha_to_one=set_alpha_to_one,
                                       steps_offset=steps_offset)
    if not set_alpha_to_one and timesteps[-1] != 0:
        timesteps = timesteps + [0]
    ours = sd.sampling.ddim(run.score_fn, run.sde, x_T(), timesteps=timesteps, eta=0.0, eps=run.config.sample.eps,
                            denoise=set_alpha_to_one)
    assert rel(ours, theirs) < 1e-4


@torch.no_grad()
def diffusers_ddpm(unet, scheduler, steps, x, seed, **config):
    ddpm = diffusers.DDPMScheduler.from_config(scheduler.config, **config)
    ddpm.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    for t in ddpm.timesteps:
        x = ddpm.step(unet(x, t).sample, t, x, generator=g).prev_sample
    return x, ddpm.timesteps.tolist()


@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "posterior"), ("fixed_large", "beta")])
def test_ancestral_equals_diffusers_ddpm(imported, unet, variance_type, variance):
    """Same noise: diffusers draws one randn(shape) per step but the last, from the generator, as we do."""
    _, scheduler, run = imported
    theirs, timesteps = diffusers_ddpm(unet, scheduler, 10, x_T(), 5, variance_type=variance_type)
    ours = sd.sampling.ancestral(run.score_fn, run.sde, x_T(), timesteps=timesteps, variance=variance, eps=run.config.sample.eps,
                                 generator=torch.Generator().manual_seed(5))
    assert rel(ours, theirs) < 1e-4


def test_ancestral_full_chain_is_ddpm(unet, tmp_path):
    """All N indices of a short chain: DDPM's Algorithm 2 itself."""
    scheduler = save_ddpm(tmp_path, unet, num_train_timesteps=50, beta_start=1e-3, beta_end=0.2)
    run = from_diffusers(str(tmp_path))
    assert run.sde.N == 50 and run.sde.beta_max == pytest.approx(10.0)
    theirs, timesteps = diffusers_ddpm(unet, scheduler, 50, x_T(), 7)
    assert timesteps == list(range(49, -1, -1))
    ours = sd.sampling.ancestral(run.score_fn, run.sde, x_T(), timesteps=timesteps, variance="posterior", eps=run.config.sample.eps,
                                 generator=torch.Generator().manual_seed(7))
    assert rel(ours, theirs) < 1e-4


@torch.no_grad()
def test_score_sde_ve(tmp_path):
    """ScoreSdeVe: the pipeline calls the UNet with sigma(t) and uses its output as the score (a
    fourier-embedding UNet2DModel divides by that sigma itself)."""
    unet = tiny_unet(3, time_embedding_type="fourier")
    scheduler = diffusers.ScoreSdeVeScheduler(num_train_timesteps=100, sigma_min=0.01, sigma_max=50.0)
    diffusers.ScoreSdeVePipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp_path))
    run = from_diffusers(str(tmp_path))
    assert isinstance(run.sde, sd.VESDE)
    assert (run.sde.sigma_min, run.sde.sigma_max, run.sde.N) == (0.01, 50.0, 100)
    assert (run.config.model["parameterization"], run.config.model["conditioning"]) == ("score", "sigma")
    assert run.data_range == (0.0, 1.0)
    # the pipeline's own (t, sigma) pairs
    scheduler.set_timesteps(5)
    scheduler.set_sigmas(5)
    x = 10 * x_T(4)
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas):
        theirs = unet(x, sigma * torch.ones(2)).sample
        assert rel(run.score_fn(x, t.expand(2)), theirs) < 1e-5


def test_model_folder_with_scheduler_next_to_it(imported, unet, tmp_path):
    """A model folder given directly: unet/ of a pipeline (../scheduler/), or config.json with
    scheduler_config.json beside it."""
    _, scheduler, run = imported
    save_ddpm(tmp_path / "pipe", unet, prediction_type=run.config.model["prediction_type"])
    model_dir = tmp_path / "model"
    unet.save_pretrained(str(model_dir))
    scheduler.save_config(str(model_dir))
    x, t = x_T(6), torch.full((2,), 0.3)
    with torch.no_grad():
        expected = run.score_fn(x, t)
        for folder in (tmp_path / "pipe" / "unet", model_dir):
            assert torch.equal(from_diffusers(str(folder)).score_fn(x, t), expected)


def test_workdir_is_a_run_directory(imported, unet, tmp_path):
    prediction, _, run = imported
    save_ddpm(tmp_path / "pipe", unet, prediction_type=prediction)
    workdir = str(tmp_path / "run")
    loaded = from_diffusers(str(tmp_path / "pipe"), workdir=workdir)
    assert os.path.isfile(os.path.join(workdir, "config.yaml"))
    again = sd.load(workdir)
    x, t = x_T(8), torch.full((2,), 0.5)
    with torch.no_grad():
        expected = run.score_fn(x, t)
        assert torch.equal(loaded.score_fn(x, t), expected) and torch.equal(again.score_fn(x, t), expected)
    assert again.config.to_dict() == run.config.to_dict()
    assert (again.data_shape, again.data_range, again.step) == ((3, 8, 8), (-1.0, 1.0), 0)
    with open(os.path.join(again.path, "meta.json"), encoding="utf-8") as f:
        assert json.load(f)["imported_from"]["format"] == "diffusers"
    with pytest.raises(ValueError, match="already holds a run"):
        from_diffusers(str(tmp_path / "pipe"), workdir=workdir)


# ---- refusals: one ValueError line each, naming what was wrong ---------------------------------

def one_line_error(folder, match):
    with pytest.raises(ValueError, match=match) as info:
        from_diffusers(str(folder))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_scheduler(unet, tmp_path):
    scheduler = diffusers.PNDMScheduler(num_train_timesteps=N)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp_path))
    one_line_error(tmp_path, "scheduler 'PNDMScheduler' is not supported")


@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_non_linear_beta_schedule(unet, tmp_path, schedule):
    save_ddpm(tmp_path, unet, beta_schedule=schedule)
    one_line_error(tmp_path, f"beta_schedule '{schedule}' is not supported")


def test_no_weights(unet, tmp_path):
    save_ddpm(tmp_path, unet)
    os.remove(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    one_line_error(tmp_path, "no weights")


def test_pickle_weights_refused(unet, tmp_path):
    diffusers.DDPMPipeline(unet=unet, scheduler=ddpm_scheduler()).save_pretrained(str(tmp_path),
                                                                                   safe_serialization=False)
    assert os.listdir(tmp_path / "unet") and not any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "unet"))
    one_line_error(tmp_path, r"pickle \(diffusion_pytorch_model.bin\).*must be safetensors")


def test_not_a_diffusers_folder(tmp_path):
    one_line_error(tmp_path / "missing", "no such folder")
    one_line_error(tmp_path, "no UNet2DModel config")


def test_without_diffusers(unet, tmp_path, monkeypatch):
    save_ddpm(tmp_path, unet)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    message = one_line_error(tmp_path, "scoresde\\[diffusers\\] is needed")
    assert message == "scoresde[diffusers] is needed: pip install 'scoresde[diffusers]'"
