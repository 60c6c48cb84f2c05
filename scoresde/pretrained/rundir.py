"""Writing an imported model as a normal run directory (config.yaml + one checkpoint), atomically,
and refusing a workdir that already holds a run. Shared by the importers."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

def _holds_run(workdir: str) -> bool:
    from .. import io
    return os.path.isfile(os.path.join(workdir, "config.yaml")) or \
        bool(io.list_checkpoints(os.path.join(workdir, "checkpoints")))


def _check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir}: exists and is not a directory")
    if os.path.isdir(workdir) and _holds_run(workdir):
        raise ValueError(f"--workdir {workdir}: already holds a run (config.yaml or checkpoints/); "
                         f"choose another --workdir")
    parent = os.path.abspath(workdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir {workdir}: {parent} is not a writable directory")


def _write_run(workdir: str, cfg, step: int, tensors: dict, meta: dict, io, header: Optional[str] = None) -> None:
    """Publish the run atomically: assembled in a temporary directory next to ``workdir`` and renamed
    into place (onto an empty ``workdir`` too); into an existing non-empty folder, the checkpoint
    (one rename) and then config.yaml (one rename). ``header``: comment lines atop config.yaml."""
    import yaml
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    workdir = os.path.abspath(workdir)
    empty = not os.path.exists(workdir) or (os.path.isdir(workdir) and not os.listdir(workdir))
    if not empty:
        io.save_checkpoint(os.path.join(workdir, "checkpoints"), step, tensors, meta)
        io.atomic_write_text(os.path.join(workdir, "config.yaml"), text)
        return
    parent = os.path.dirname(workdir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(workdir)}.", suffix=".import.tmp")
    try:
        io.save_checkpoint(os.path.join(tmp, "checkpoints"), step, tensors, meta)
        io.atomic_write_text(os.path.join(tmp, "config.yaml"), text)
        os.chmod(tmp, io._umask_mode(0o777))
        os.rename(tmp, workdir)  # replaces an empty directory; fails if one appeared with files meanwhile
        io._fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
