#!/usr/bin/env python
"""The planted-bug audit of issue 10, repeatable: each plausible bug below is written into a copy
of the package and the tests that should catch it are run there. A bug that no test catches is a
hole in the suite.

    python mutation/planted.py            # every bug; prints a table, writes mutation/results/planted.json
    python mutation/planted.py -b ema_swap -b lr_warmup

Each bug is one textual substitution (the original text must occur exactly once in its file, so
that a refactoring that moves it makes this script fail loudly rather than test nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name: (file, original, planted, pytest arguments, what it is)
BUGS = {
    "langevin_step": (
        "scoresde/sampling/stochastic.py", "delta = 2 * chain_alpha[k] * (snr * ratio) ** 2",
        "delta = 2 * chain_alpha[k] * snr * ratio ** 2",
        ["tests/test_sampler_distributions.py", "-k", "langevin"],
        "Langevin corrector step 2a(snr r)^2 written 2a snr r^2 (6.25x too large)"),
    "em_score_halved": (
        "scoresde/sampling/_loop.py", "return LinearSteps.from_tensors(1 - c * h, g2 * h, (g2 * h).sqrt())",
        "return LinearSteps.from_tensors(1 - c * h, 0.5 * g2 * h, (g2 * h).sqrt())",
        ["tests/test_sampler_distributions.py", "-k", "annealed"],
        "Euler-Maruyama's score coefficient halved (checked under the annealed-Langevin corrector)"),
    "sample_drops_steps": (
        "scoresde/sampling/__init__.py", 'options["steps"] = steps', "pass",
        ["tests/test_behaviour.py", "-k", "steps"],
        "sampling.sample() ignores steps (scoresde sample --steps silently ignored)"),
    "likelihood_cli_images": (
        "scoresde/cli/sample_commands.py", re.compile(r"^(    if res\.is_image:\n)", re.M),
        r"\1        raise NotImplementedError('planted')\n",
        ["tests/test_behaviour.py", "-k", "likelihood"],
        "the image (bits/dim) branch of scoresde likelihood replaced by an exception"),
    "ema_swap": (
        "scoresde/train_fast.py", "torch._foreach_lerp_(avg, cur, 1.0 - decay)",
        "torch._foreach_lerp_(avg, cur, decay)",
        ["tests/test_behaviour.py", "-k", "ema"], "EMA with decay and 1 - decay swapped"),
    "lr_warmup": (
        "scoresde/train.py", "return (step + 1) / t.warmup", "return step / t.warmup",
        ["tests/test_behaviour.py", "-k", "lr or schedule"], "warmup off by one step"),
    "lr_cosine": (
        "scoresde/train.py", "return 0.5 * (1 + math.cos(", "return 0.5 * (1 - math.cos(",
        ["tests/test_behaviour.py", "-k", "lr or schedule"], "cosine decay with the wrong sign"),
    "grad_clip": (
        "scoresde/train.py", "clip_grad_norm_(params, t.grad_clip)",
        "clip_grad_norm_(params, 2 * t.grad_clip)",
        ["tests/test_behaviour.py", "-k", "clip"], "gradients clipped to twice grad_clip"),
    "compare_nfe": (
        "scoresde/compare.py", re.compile(r"counted\.nfe(?!\w)"), "(counted.nfe + 1)",
        ["tests/test_behaviour.py", "-k", "compare"], "compare reports one NFE too many"),
    "hutchinson_scale": (
        "scoresde/likelihood.py", "total = total + (vjp * v).reshape(x.shape[0], -1).sum(1)",
        "total = total + 1.15 * (vjp * v).reshape(x.shape[0], -1).sum(1)",
        ["tests/test_likelihood.py", "-k", "hutchinson or image"], "Hutchinson's estimate scaled by 1.15"),
}


def plant(tree: Path, file: str, original, planted: str) -> None:
    path = tree / file
    text = path.read_text()
    if isinstance(original, re.Pattern):
        new, n = original.subn(planted, text, count=1)
    else:
        n = text.count(original)
        new = text.replace(original, planted)
    if n != 1:
        raise SystemExit(f"{file}: the text to plant into occurs {n} times (expected once): {original!r}")
    path.write_text(new)


def run_bug(name: str) -> dict:
    file, original, planted, selection, what = BUGS[name]
    with tempfile.TemporaryDirectory(prefix=f"planted-{name}-") as tmp:
        tree = Path(tmp)
        for sub in ("scoresde", "tests"):
            shutil.copytree(ROOT / sub, tree / sub, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
        plant(tree, file, original, planted)
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                              *selection], cwd=tree, env=env, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out.stdout, re.M)))
    summary = (out.stdout.strip().splitlines() or [""])[-1]
    return {"bug": name, "what": what, "file": file, "tests": " ".join(selection), "caught": out.returncode == 1,
            "returncode": out.returncode, "failed": failed, "summary": summary, "seconds": round(time.time() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-b", "--bug", action="append", choices=sorted(BUGS), help="only these bugs (repeatable)")
    args = ap.parse_args()
    rows = []
    for name in args.bug or BUGS:
        row = run_bug(name)
        rows.append(row)
        first = row["failed"][0] if row["failed"] else "-"
        print(f"{'caught' if row['caught'] else 'MISSED':6s} {name:22s} {len(row['failed']):3d} failing, e.g. {first} "
              f"({row['summary']}, {row['seconds']} s)", flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "planted.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| bug | planted | caught by |\n|---|---|---|")
    for r in rows:
        print(f"| {r['bug']} | {r['what']} | " + (f"{len(r['failed'])} tests, e.g. `{r['failed'][0]}`" if r["failed"]
                                                  else f"**missed** ({r['summary']})") + " |")
    sys.exit(0 if all(r["caught"] for r in rows) else 1)


if __name__ == "__main__":
    main()
