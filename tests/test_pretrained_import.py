"""Official score_sde_pytorch checkpoints imported as runs (scoresde.pretrained.from_score_sde and
``scoresde import score-sde``): against the reference implementation's own outputs on slim copies
of its four CIFAR-10 architectures (tests/data/refckpt/<name>/: checkpoint.pth in the reference's
format, config.json, golden.safetensors with the reference's score of x at t); the imported run
through sample, likelihood and compare; and every refusal (a pickle payload, a truncated file, a
checkpoint of another architecture, an unknown config): one line, exit status 2, nothing written.
"""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import scoresde
from scoresde import io
from scoresde.cli import main
from test_cli import run_cli
from scoresde.pretrained import from_score_sde
from scoresde.pretrained.score_sde import REFERENCE_CONFIGS, reference_config, run_config

REF = Path(__file__).resolve().parent / "data" / "refckpt"
FOLDERS = sorted(d.name for d in REF.iterdir() if (d / "checkpoint.pth").is_file()) if REF.is_dir() else []
#: how the slim reference checkpoints were made from the official configs (see their README)
SMALL = ["--set", "nf=32", "--set", "ch_mult=[1,2]", "--set", "num_res_blocks=2"]
needs_ref = pytest.mark.skipif(not FOLDERS, reason="tests/data/refckpt/ not present")


def one_line_error(code, out, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, (code, out, err)
    assert lines[0].startswith("scoresde: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def reference_name(folder):
    return json.loads((REF / folder / "config.json").read_text())["reference_config"]


def import_cli(capsys, folder, workdir, *extra):
    return run_cli(capsys, "import", "score-sde", REF / folder / "checkpoint.pth", "--config", reference_name(folder),
                   *SMALL, "--workdir", workdir, *extra)


def std_ratio(sde_type, t):
    """The reference's float32 marginal std (sde_lib: sqrt(1 - exp(2 m)) for VP, 1 - exp(2 m) for
    sub-VP, m = log mean coefficient) over the exact one (float64, expm1): 1 but for cancellation
    near t = 0 (1.2e-4 for VP, 2.4e-4 for sub-VP at t = 0.001), which scoresde's SDEs avoid."""
    if sde_type == "ve":
        return torch.ones_like(t)
    m32 = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
    m64 = -0.25 * t.double() ** 2 * (20.0 - 0.1) - 0.5 * t.double() * 0.1
    if sde_type == "vp":
        return (torch.sqrt(1.0 - torch.exp(2.0 * m32)).double() / torch.sqrt(-torch.expm1(2.0 * m64))).float()
    return ((1.0 - torch.exp(2.0 * m32)).double() / -torch.expm1(2.0 * m64)).float()


def relative_errors(run, folder):
    """max|score - golden| / max|golden|: (as is, with the golden's std cancellation undone).

    The golden VP / sub-VP scores are -net / std with the reference's float32 std, whose
    cancellation at t = 0.001 is a relative error of 1.2e-4 (VP) and 2.4e-4 (sub-VP); scoresde's
    std is exact to float32 there. Undoing it (golden * std_ref / std_exact) leaves what the import
    decides: the network, its weights, the conditioning and the parameterization."""
    golden = load_file(str(REF / folder / "golden.safetensors"))
    with torch.no_grad():
        score = run.score_fn(golden["x"], golden["t"])
    g = golden["score"]
    corrected = g * std_ratio(run.config.sde.type, golden["t"])[:, None, None, None]
    scale = g.abs().max()
    return ((score - g).abs().max() / scale).item(), ((score - corrected).abs().max() / scale).item()


def relative_error(run, folder):
    return relative_errors(run, folder)[1]


def make_cifar(folder: Path, n=6, seed=0):
    """CIFAR-10's binary version: records of one label byte and 3x32x32 pixel bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.randint(0, 10, size=n).astype(np.uint8)
        pixels = rng.randint(0, 256, size=(n, 3 * 32 * 32)).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
    return folder


# ---- the reference's scores, through the command line ---------------------------------------------

@needs_ref
@pytest.mark.parametrize("folder", FOLDERS)
def test_cli_import_reproduces_the_reference_score(capsys, tmp_path, folder):
    workdir = tmp_path / "run"
    code, out, err = import_cli(capsys, folder, workdir)
    assert code == 0, err
    assert out.startswith(f"{workdir}: imported score_sde_pytorch checkpoint") and err == "", (out, err)
    run = scoresde.load(str(workdir))
    raw, rel = relative_errors(run, folder)
    print(f"{folder}: max|diff| / max|golden| = {raw:.2e} as is, {rel:.2e} with the golden's std cancellation undone")
    assert rel < 1e-5, (folder, rel)
    # as is: the difference is the reference's float32 std at t = 0.001 and nothing else
    assert raw < (1e-5 if run.config.sde.type == "ve" else 3e-4), (folder, raw)
    golden = load_file(str(REF / folder / "golden.safetensors"))
    with torch.no_grad():
        early = run.score_fn(golden["x"][:3], golden["t"][:3])  # t = 0.9, 0.5, 0.1: no cancellation
    assert ((early - golden["score"][:3]).abs().max() / golden["score"][:3].abs().max()).item() < 1e-5
    # a normal run: config.yaml, one checkpoint in the trainer's format (EMA only), provenance in meta.json
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.yaml"]
    [(step, ckpt)] = io.list_checkpoints(str(workdir / "checkpoints"))
    meta, tensors = io.load_checkpoint(ckpt)
    assert step == run.step == torch.load(REF / folder / "checkpoint.pth", weights_only=True)["step"]
    assert meta["imported_from"] == {
        "format": "score_sde_pytorch", "checkpoint": str(REF / folder / "checkpoint.pth"),
        "reference_config": reference_name(folder), "overrides": ["nf=32", "ch_mult=[1,2]", "num_res_blocks=2"],
        "weights": "ema", "ema_rate": REFERENCE_CONFIGS[reference_name(folder)]["model"]["ema_rate"], "step": step}
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved == meta["config"] == run.config.to_dict()
    assert saved["data"]["root"] is None and saved["data"]["name"] == "cifar10"
    vp = saved["sde"]["type"] in ("vp", "subvp")
    assert (saved["model"]["parameterization"], saved["model"]["conditioning"]) == \
        (("eps", "time_index") if vp else ("score", "sigma"))
    assert run.data_range == ((-1.0, 1.0) if vp else (0.0, 1.0)) and run.data_shape == (3, 32, 32)


@needs_ref
def test_api_without_workdir_returns_the_same_run(tmp_path):
    folder = FOLDERS[0]
    run = from_score_sde(str(REF / folder / "checkpoint.pth"), reference_name(folder),
                         overrides=["nf=32", "ch_mult=[1, 2]", "model.num_res_blocks=2"])
    assert relative_error(run, folder) < 1e-5
    assert not run.net.training and run.config.model["nf"] == 32 and list(tmp_path.iterdir()) == []


# ---- the imported run through the other commands -------------------------------------------------

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """One imported run (the VP DDPM++ copy, else the first), with a tiny CIFAR-10 as its data.root."""
    if not FOLDERS:
        pytest.skip("tests/data/refckpt/ not present")
    folder = "vp_ddpmpp_continuous" if "vp_ddpmpp_continuous" in FOLDERS else FOLDERS[0]
    base = tmp_path_factory.mktemp("imported")
    cifar = make_cifar(base / "cifar-10-batches-bin")
    workdir = base / "run"
    code = main(["import", "score-sde", str(REF / folder / "checkpoint.pth"), "--config", reference_name(folder),
                 *SMALL, "--workdir", str(workdir), "--data-root", str(cifar)])
    assert code == 0
    return workdir


def loose_likelihood(monkeypatch):
    """The likelihood command as it is, with a loose ODE tolerance: these untrained weights make the
    PF-ODE stiff (500-1000 score evaluations at the default rtol = atol = 1e-5: half a minute)."""
    import functools
    from scoresde import likelihood
    monkeypatch.setattr(likelihood, "bits_per_dim", functools.partial(likelihood.bits_per_dim, rtol=1e-2, atol=1e-2))


@needs_ref
def test_sample_likelihood_and_compare_run_on_an_imported_run(capsys, imported, tmp_path, monkeypatch):
    loose_likelihood(monkeypatch)
    out_file = tmp_path / "x.npz"
    code, out, err = run_cli(capsys, "sample", imported, "--sampler", "ddim", "--steps", "2", "--num-samples", "2",
                             "--out", out_file, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert np.load(out_file)["samples"].shape == (2, 3, 32, 32)
    code, out, err = run_cli(capsys, "likelihood", imported, "--num-samples", "2", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "test: 2 images, bits/dim" in out
    # without the [eval] extra an image run's default FID is one line naming it; --feature-net pixels
    # scores the flattened images like the toys, offline
    code, out, err = run_cli(capsys, "compare", imported, "--sampler", "ddim", "--steps", "2", "--num-samples", "3",
                             "--out", tmp_path / "cmp", "--device", "cpu", "--quiet", "--feature-net", "pixels")
    assert code == 0, err
    assert (tmp_path / "cmp" / "compare.json").is_file() and "energy dist." in out


@needs_ref
def test_data_root_is_asked_for_only_where_data_is_read(capsys, tmp_path, monkeypatch):
    loose_likelihood(monkeypatch)
    folder = FOLDERS[0]
    workdir = tmp_path / "run"
    assert import_cli(capsys, folder, workdir)[0] == 0
    code, out, err = run_cli(capsys, "sample", workdir, "--sampler", "ddim", "--steps", "1", "--num-samples", "1",
                             "--out", tmp_path / "x.npz", "--device", "cpu", "--quiet")
    assert code == 0, err
    code, out, err = run_cli(capsys, "likelihood", workdir, "--num-samples", "1", "--device", "cpu", "--quiet")
    one_line_error(code, out, err, "data.root: required", "config.yaml", "--data-root")
    # set it in the run's config.yaml, as the message says: read where the data is read
    cifar = make_cifar(tmp_path / "cifar")
    text = (workdir / "config.yaml").read_text()
    (workdir / "config.yaml").write_text(text.replace("root: null", f"root: {cifar}"))
    assert scoresde.load(str(workdir)).config.data.root == str(cifar)
    code, out, err = run_cli(capsys, "likelihood", workdir, "--num-samples", "1", "--device", "cpu", "--quiet",
                             "--estimator", "hutchinson")
    assert code == 0, err


# ---- refusals: one line, exit 2, nothing written ---------------------------------------------------

class _Payload:
    """Unpickling this creates the file ``path`` (what an arbitrary pickle may do, and worse)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _assert_refused(capsys, tmp_path, checkpoint, config, *needles, sets=SMALL):
    workdir = tmp_path / "run"
    code, out, err = run_cli(capsys, "import", "score-sde", checkpoint, "--config", config, *sets,
                             "--workdir", workdir)
    line = one_line_error(code, out, err, *needles)
    assert not workdir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no temporary left
    return line


@pytest.mark.parametrize("form", ["torch.save", "pickle"])
def test_a_pickle_payload_is_refused_and_never_runs(capsys, tmp_path, form):
    # the payload is real: unpickled, it creates its file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.pth"
    if form == "torch.save":
        torch.save({"model": {}, "ema": _Payload(marker), "step": 1}, bad)
    else:
        bad.write_bytes(pickle.dumps({"model": {}, "ema": _Payload(marker), "step": 1}, protocol=2))
    _assert_refused(capsys, tmp_path, bad, "vp/cifar10_ddpmpp_continuous", "checkpoint.pth: refused", "weights_only")
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused"):
        from_score_sde(str(bad), "vp/cifar10_ddpmpp_continuous")
    assert not marker.exists()


@needs_ref
def test_a_truncated_checkpoint_is_one_line(capsys, tmp_path):
    data = (REF / FOLDERS[0] / "checkpoint.pth").read_bytes()
    bad = tmp_path / "checkpoint.pth"
    bad.write_bytes(data[: len(data) // 2])
    _assert_refused(capsys, tmp_path, bad, reference_name(FOLDERS[0]), "not a readable PyTorch checkpoint",
                    "truncated")


def test_a_checkpoint_without_ema_or_model_is_one_line(capsys, tmp_path):
    bad = tmp_path / "checkpoint.pth"
    torch.save({"model": {"module.x": torch.zeros(1)}, "step": 3}, bad)
    _assert_refused(capsys, tmp_path, bad, "vp/cifar10_ddpmpp_continuous", "no 'ema' entry")
    torch.save({"ema": {"shadow_params": [torch.zeros(1)]}, "step": 3}, bad)
    _assert_refused(capsys, tmp_path, bad, "vp/cifar10_ddpmpp_continuous", "no 'model' entry")
    torch.save([torch.zeros(1)], bad)
    _assert_refused(capsys, tmp_path, bad, "vp/cifar10_ddpmpp_continuous", "holds a list")


@needs_ref
@pytest.mark.skipif("ve_ncsnpp_continuous" not in FOLDERS, reason="no VE reference copy")
def test_a_checkpoint_of_another_architecture_names_the_first_tensor_that_does_not_fit(capsys, tmp_path):
    ckpt = REF / "ve_ncsnpp_continuous" / "checkpoint.pth"
    line = _assert_refused(capsys, tmp_path, ckpt, "vp/ddpm/cifar10_continuous", "does not fit vp/ddpm/cifar10_continuous")
    assert "has shape" in line or "EMA tensors" in line
    # the right architecture at the wrong width: the message says which --set fixes it
    _assert_refused(capsys, tmp_path, ckpt, "ve/cifar10_ncsnpp_continuous", "try --set nf=32",
                    sets=["--set", "ch_mult=[1,2]", "--set", "num_res_blocks=2"])


def test_unknown_config_names_and_bad_set_items_are_one_line(capsys, tmp_path):
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"model": {}, "ema": {"shadow_params": []}, "step": 0}, ckpt)
    _assert_refused(capsys, tmp_path, ckpt, "vp/cifar10_ddpmpp_continous", "not a known score_sde_pytorch config",
                    "did you mean vp/cifar10_ddpmpp_continuous")
    _assert_refused(capsys, tmp_path, ckpt, "vp/cifar10_ddpmpp_continuous", "--set nff=32: unknown key 'nff'",
                    "did you mean nf?", sets=["--set", "nff=32"])
    _assert_refused(capsys, tmp_path, ckpt, "vp/cifar10_ddpmpp_continuous", "--set nf=big: model.nf: expected an integer",
                    sets=["--set", "nf=big"])
    _assert_refused(capsys, tmp_path, ckpt, "vp/cifar10_ddpmpp_continuous", "--set nf=0", "model.nf",
                    sets=["--set", "nf=0"])
    _assert_refused(capsys, tmp_path, tmp_path / "nowhere.pth", "vp/cifar10_ddpmpp_continuous", "no such checkpoint file")


@needs_ref
def test_a_workdir_that_holds_a_run_is_refused_and_left_alone(capsys, tmp_path):
    workdir = tmp_path / "run"
    assert import_cli(capsys, FOLDERS[0], workdir)[0] == 0
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    code, out, err = import_cli(capsys, FOLDERS[0], workdir)
    one_line_error(code, out, err, "already holds a run")
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    # an empty folder is fine (the run is renamed onto it)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_cli(capsys, FOLDERS[0], empty)[0] == 0
    assert sorted(os.listdir(empty)) == ["checkpoints", "config.yaml"]


# ---- the config table --------------------------------------------------------------------------

def test_the_table_holds_every_cifar10_continuous_config_with_its_sde_and_data():
    for name in ("vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
                 "subvp/cifar10_ddpmpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous",
                 "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous", "vp/cifar10_ncsnpp_continuous",
                 "subvp/cifar10_ncsnpp_continuous", "vp/ddpm/cifar10_continuous"):
        ref = reference_config(name)
        assert ref["data"]["dataset"] == "CIFAR10" and ref["model"]["num_scales"] == 1000
        assert ref["model"]["num_res_blocks"] == (8 if "deep" in name else 2 if "ddpm/" in name else 4)
        assert ref["data"]["centered"] == (not name.startswith("ve/"))
    assert reference_config("configs/ve/cifar10_ncsnpp_continuous.py") == reference_config("ve/cifar10_ncsnpp_continuous")
    assert REFERENCE_CONFIGS["ve/celebahq_256_ncsnpp_continuous"]["model"]["sigma_max"] == 348
    assert REFERENCE_CONFIGS["ve/ffhq_ncsnpp_continuous"]["model"]["sigma_max"] == 1348
    assert REFERENCE_CONFIGS["ve/bedroom_ncsnpp_continuous"]["model"]["sigma_max"] == 378


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_every_reference_config_validates_and_builds_its_network_at_tiny_size(name):
    from scoresde.config import from_dict
    from scoresde.nets import NETS
    ref = reference_config(name)
    if ref["model"]["name"] not in NETS:
        pytest.skip(f"network {ref['model']['name']!r} not available")
    ref["model"].update(nf=32, ch_mult=[1, 2], num_res_blocks=1)
    ref["data"]["image_size"] = 16
    raw = run_config(ref)
    cfg = from_dict(raw, source=name, data_root=False)
    sde = scoresde.run.build_sde(cfg)
    model = scoresde.run.build_score_model(cfg, sde, (3, 16, 16))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 16, 16), torch.tensor([0.5, 0.1]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    assert cfg.sde.type == {"vpsde": "vp", "subvpsde": "subvp", "vesde": "ve"}[ref["training"]["sde"]]
    assert cfg.sde.N == ref["model"]["num_scales"] and cfg.train.ema_decay == ref["model"]["ema_rate"]


# ---- the config package: what imported runs and the reference networks need ---------------------

def test_model_names_follow_the_registered_networks_and_the_new_conditionings_validate():
    from scoresde.config import ConfigError, from_dict
    from scoresde.nets import NETS
    import scoresde.config as C
    assert set(C.MODEL_NAMES) == set(NETS) >= {"mlp", "unet", "ncsnpp", "ddpm"}
    raw = {"sde": {"type": "vp"}, "model": {"name": "ncsnpp", "conditioning": "time_index", "ch_mult": [1, 2],
                                             "fir_kernel": [1, 3, 3, 1], "attn_resolutions": []},
           "data": {"name": "digits"}}
    cfg = from_dict(raw)
    assert cfg.model["ch_mult"] == [1, 2] and cfg.model["attn_resolutions"] == []
    raw["model"]["conditioning"] = "sigma"
    assert from_dict(raw).model["conditioning"] == "sigma"
    with pytest.raises(ConfigError, match=r"model.name: expected one of .*ncsnpp.* \(did you mean ncsnpp\?\)"):
        from_dict({"model": {"name": "ncsnp"}})
    with pytest.raises(ConfigError, match="--set model.ch_mult=abc: model.ch_mult: expected a list of integers"):
        from_dict(raw, overrides=["model.ch_mult=abc"])
    with pytest.raises(ConfigError, match="model.conditioning: expected one of"):
        from_dict(dict(raw, model=dict(raw["model"], conditioning="index")))


def test_a_reference_network_must_be_told_the_data_range():
    from scoresde.config import ConfigError, from_dict
    raw = {"sde": {"type": "ve"}, "model": {"name": "ncsnpp", "centered": True}, "data": {"name": "digits"}}
    assert from_dict(raw).model["centered"] is True
    with pytest.raises(ConfigError, match=r"--set data.centered=false: model.centered: expected the value of "
                                          r"data.centered, False"):
        from_dict(raw, overrides=["data.centered=false"])


def test_data_root_is_required_to_read_data_not_to_load_a_config():
    from scoresde.config import ConfigError, from_dict
    from scoresde.run import load_data
    raw = {"model": {"name": "unet"}, "data": {"name": "cifar10"}}
    with pytest.raises(ConfigError, match=r"data.root: required for data.name 'cifar10'.*--set data.root="):
        from_dict(raw)  # a config to train with
    cfg = from_dict(raw, data_root=False)  # a run to sample from
    with pytest.raises(ConfigError, match=r"data.root: required to read the data of data.name 'cifar10'.*config.yaml"
                                          r".*--data-root DIR"):
        load_data(cfg, "test")


def test_every_bundled_config_loads():
    from scoresde.config import bundled_configs, load_config, resolve_config
    names = bundled_configs()
    assert {"cifar10_ddpmpp_continuous_vp", "cifar10_ncsnpp_continuous_ve", "cifar10_ddpm_continuous_vp"} <= set(names)
    for name in names:
        load_config(resolve_config(name))
