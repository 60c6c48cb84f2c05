"""Small helpers shared by the example scripts (paths, training that reuses a finished run, outputs)."""
import json
import os
import sys

from scoresde import io
from scoresde.config import load_config
from scoresde.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
    """configs/<name>.yaml of this repository."""
    return os.path.join(ROOT, "configs", name + ".yaml")


def default_workdir(name: str) -> str:
    return os.path.join("runs", "examples", name)


def train_or_reuse(cfg, workdir: str, progress: bool = True) -> dict:
    """Train ``cfg`` in ``workdir``, or continue / reuse the run already there if it has the same
    config (the number of steps may differ). A different run in ``workdir`` is an error."""
    saved = os.path.join(workdir, "config.yaml")
    if os.path.exists(saved) and io.list_checkpoints(os.path.join(workdir, "checkpoints")):
        old, new = load_config(saved).to_dict(), cfg.to_dict()
        for d in (old, new):
            d["train"].pop("steps")
        if old != new:
            sys.exit(f"error: {workdir} holds a run with a different config; choose another --workdir")
    return train(cfg, workdir, resume=True, progress=progress)


def write_json(path: str, obj) -> str:
    io.atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
    return path


def write_text(path: str, text: str) -> str:
    io.atomic_write_text(path, text)
    return path


def markdown(header, rows) -> str:
    """A markdown table from a header tuple and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["ROOT", "config_path", "default_workdir", "train_or_reuse", "write_json", "write_text", "markdown"]
