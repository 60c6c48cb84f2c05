"""Sampling contenders of gpu_speed.py: DDIM and DPM-Solver++(2M) at --nfe score evaluations on a
batch of --sample-batch images, each variant mapped to a score function (precision_score in fp32 or
bf16, channels_last, compile_score); the Specs of its sampling section."""
from __future__ import annotations

import inspect
import os
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from _bench import parameter_count
from _flops import forward_flops
from _gpu_config import SAMPLING_IGNORES, VARIANTS, base_overrides, config_path, training_data, variant_options
from _gpu_runner import Runner, Spec, millions, model_tensors
from scoresde import precision as _precision
from scoresde.config import load_config
from scoresde.run import build_score_model, build_sde
from scoresde.sampling import ddim, dpm_solver
from scoresde.score import ScoreModel


class SampleRun:
    """One sampling run of ``sampler(score_fn, x_T)`` under inference_mode."""

    def __init__(self, sampler: Callable, score_fn: Callable, x_T: torch.Tensor, net: nn.Module):
        self.sampler, self.score_fn, self.x_T, self.net = sampler, score_fn, x_T, net

    def run(self, _units: int = 1) -> None:
        with torch.inference_mode():
            self.sampler(self.score_fn, self.x_T)

    def tensors(self) -> List[torch.Tensor]:
        return model_tensors(self.net, grads=False)


def sampling_options(overrides: Dict[str, object]) -> Optional[dict]:
    """(precision, channels_last, compile) for a variant, None for a training-only one."""
    keys = set(overrides) - set(SAMPLING_IGNORES)
    if keys - {"train.amp", "train.channels_last", "train.compile"}:
        return None
    o = variant_options(overrides)
    return {"precision": "bf16" if o["amp"] else "fp32", "channels_last": o["channels_last"], "compile": o["compile"]}


def sampling_label(o: dict) -> str:
    """The sampling setting in a row label: fp32 or bf16, then + channels_last, + compile."""
    return o["precision"] + (" + channels_last" if o["channels_last"] else "") + (" + compile" if o["compile"] else "")


def compiled_score(model: ScoreModel, o: dict):
    """scoresde.precision.compile_score on the variant's score function (None if there is none)."""
    compile_score = getattr(_precision, "compile_score", None)
    if compile_score is None:
        return None
    params = inspect.signature(compile_score).parameters
    if "precision" in params and (not o["channels_last"] or "channels_last" in params):
        kwargs = {"precision": o["precision"]}
        if o["channels_last"]:
            kwargs["channels_last"] = True
        return compile_score(model, **kwargs)
    return compile_score(_precision.precision_score(model, o["precision"], channels_last=o["channels_last"]))


def sampling_specs(runner: Runner, args, variants: List[str]) -> List[Spec]:
    """DDIM and DPM-Solver++(2M) contenders of the --config network, per variant with a sampling
    setting of its own (training-only variants and repeats of a setting are left out)."""
    device = runner.device
    cfg = load_config(config_path(args.config), base_overrides(args, args.batch_size))
    dataset, _ = training_data(cfg, 8, cfg.train.seed)
    shape = tuple(dataset.shape)
    sde = build_sde(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_score_model(cfg, sde, shape).to(device).eval()
    B, nfe = args.sample_batch, args.nfe
    x_T = sde.prior_sampling((B,) + shape, generator=torch.Generator(device=device).manual_seed(args.seed),
                             device=device)
    samplers = {
        "DDIM": lambda fn, x: ddim(fn, sde, x, steps=nfe, denoise=False),
        "DPM-Solver++(2M)": lambda fn, x: dpm_solver(fn, sde, x, steps=nfe, order=2, multistep=True, denoise=False),
    }
    # NFE counted on a batch of 2, and the forward FLOPs on the timed batch
    counts = {}
    for name, sampler in samplers.items():
        calls = [0]

        def counting(x, t, calls=calls):
            calls[0] += 1
            return model(x, t)
        with torch.inference_mode():
            sampler(counting, x_T[:2].clone())
        counts[name] = calls[0]
    t_mid = torch.full((B,), 0.5, device=device)
    fwd = forward_flops(lambda: model(x_T, t_mid))
    n_params = parameter_count(model)
    name = os.path.splitext(os.path.basename(config_path(args.config)))[0]
    print(f"sampling {name} ({millions(n_params)}), batch {B}: {fwd / B / 1e9:.4g} GFLOP per image and evaluation, "
          f"NFE {counts}", flush=True)
    specs, scores = [], {}
    for v in variants:
        o = sampling_options(VARIANTS[v])
        label = None if o is None else sampling_label(o)
        if o is None or label in scores:
            continue  # training-only, or the same sampling setting as an earlier variant

        def make(o=o):
            if not (o["channels_last"] or o["compile"]):
                return model, _precision.precision_score(model, o["precision"])
            torch.manual_seed(cfg.train.seed)
            own = build_score_model(cfg, sde, shape).to(device).eval()  # converted / compiled: its own copy
            if o["channels_last"]:
                _precision.to_channels_last(own.net)
            if o["compile"]:
                fn = compiled_score(own, o)
                if fn is None:
                    raise RuntimeError("scoresde.precision.compile_score is not there yet")
                return own, fn
            return own, _precision.precision_score(own, o["precision"], channels_last=o["channels_last"])

        if o["compile"] and getattr(_precision, "compile_score", None) is None:
            runner.skip(f"sampling {name}, {label}", "scoresde.precision.compile_score is not there yet")
            continue
        scores[label] = make
        shared = {}

        def build(sampler, make=make, shared=shared):
            if "fn" not in shared:  # both samplers of a variant share its score function (one compile)
                shared["net"], shared["fn"] = make()
            return SampleRun(sampler, shared["fn"], x_T, shared["net"])

        for j, (sname, sampler) in enumerate(samplers.items()):
            specs.append(Spec("sampling", f"sampling {name}, {sname} {counts[sname]} NFE, batch {B}: {label}",
                              sname, label, "images/s", B, 1, 1, lambda s=sampler, b=build: b(s), o["compile"],
                              fwd / B * counts[sname],
                              dict(config=name, parameters=n_params, batch_size=B, nfe=counts[sname], sampler=sname),
                              compiles=o["compile"] and j == 0))  # the samplers of a variant share one compile
    return specs
