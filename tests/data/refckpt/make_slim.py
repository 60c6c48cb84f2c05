"""Make the test fixtures in this folder from the full reference checkpoints (default: ../shared/refckpt
next to the repository, or the folder given as the first argument).

For each of the four folders it copies ``config.json`` and ``golden.safetensors`` byte for byte and
writes ``checkpoint.pth`` in the reference's own format (``torch.save`` of a dict with ``optimizer``,
``model``, ``ema``, ``step``), with the optimizer reduced to its ``param_groups`` and an empty
``state``: the network weights (``model``, keys prefixed ``module.``) and the EMA (``decay``,
``num_updates``, ``shadow_params``) are kept unchanged, since the tests need both.

    python tests/data/refckpt/make_slim.py [SOURCE_DIR]
"""
import shutil
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NAMES = ("vp_ddpmpp_continuous", "subvp_ddpmpp_continuous", "ve_ncsnpp_continuous", "vp_ddpm_continuous")


def slim(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "golden.safetensors"):
        shutil.copyfile(src / name, dst / name)
    ckpt = torch.load(src / "checkpoint.pth", map_location="cpu", weights_only=True)
    out = {
        "optimizer": {"state": {}, "param_groups": ckpt["optimizer"]["param_groups"]},
        "model": ckpt["model"],
        "ema": {"decay": ckpt["ema"]["decay"], "num_updates": ckpt["ema"]["num_updates"],
                "shadow_params": list(ckpt["ema"]["shadow_params"])},
        "step": ckpt["step"],
    }
    torch.save(out, dst / "checkpoint.pth")


def main(argv) -> None:
    source = Path(argv[1]) if len(argv) > 1 else HERE.parents[2].parent / "shared" / "refckpt"
    for name in NAMES:
        slim(source / name, HERE / name)
        size = sum(f.stat().st_size for f in (HERE / name).iterdir())
        print(f"{name}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(sys.argv)
