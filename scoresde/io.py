"""Files that are never half-written and never run code when read.

Checkpoints are directories ``ckpt_<step>/`` holding tensors in safetensors files and everything
else in ``meta.json``. A checkpoint is assembled in a temporary directory next to its final place,
every file is fsynced, and one ``rename`` publishes it: a crash at any moment leaves either the
old set of checkpoints or the new one, never a torn file. Nothing here uses pickle.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8,})$")
# what interrupted writes leave: assembly directories, and checkpoints retired from their names
SWAPPED_PATTERN = re.compile(r"^(ckpt_\d{8,})\.stale-\d+$")
LEFTOVER_PATTERN = re.compile(r"^(\.ckpt_.*\.tmp|ckpt_\d{8,}\.(stale|deleting)-\d+)$")
FORMAT_VERSION = 1
TENSOR_FILES = ("model", "ema", "optimizer", "state")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode(mode: int) -> int:
    """``mode`` as the process umask would leave it (mkstemp/mkdtemp create 0600/0700 entries)."""
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:08d}"


def list_checkpoints(directory: str) -> List[Tuple[int, str]]:
    """(step, path) of the checkpoint directories in ``directory``, newest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = CKPT_PATTERN.match(name)
        if m and os.path.isdir(os.path.join(directory, name)):
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found, reverse=True)


def save_checkpoint(directory: str, step: int, tensors: Dict[str, Dict[str, torch.Tensor]], meta: dict,
                    keep: Optional[int] = None) -> str:
    """Publish ``directory/ckpt_<step>/`` atomically: one safetensors file per entry of ``tensors``
    plus ``meta.json``. Older checkpoints beyond the newest ``keep`` are removed afterwards."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, checkpoint_name(step))
    tmp = tempfile.mkdtemp(dir=directory, prefix=f".{checkpoint_name(step)}.", suffix=".tmp")
    try:
        for name, group in tensors.items():
            path = os.path.join(tmp, f"{name}.safetensors")
            save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        meta = dict(meta, format_version=FORMAT_VERSION, step=step, files=sorted(tensors))
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), _umask_mode(0o666))
        os.chmod(tmp, _umask_mode(0o777))
        _fsync_dir(tmp)
        if os.path.exists(final):  # the same step written again (e.g. a final save): swap it out
            stale = _stale_name(final)
            os.rename(final, stale)
            os.rename(tmp, final)
            _fsync_dir(directory)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(tmp, final)
            _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for _, old in list_checkpoints(directory)[keep:]:
            _retire(old)
    return final


def _stale_name(path: str, kind: str = "stale") -> str:
    return path + f".{kind}-{os.getpid()}"


def _retire(path: str) -> None:
    """Delete a published checkpoint. ``rmtree`` removes files one by one, so a kill part-way would
    leave a ``ckpt_*`` directory with files missing; renaming it out of the published namespace
    first makes its disappearance one atomic step."""
    doomed = _stale_name(path, "deleting")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:  # already gone: someone else removed it
        return
    _fsync_dir(os.path.dirname(path))
    shutil.rmtree(doomed, ignore_errors=True)


def remove_temporaries(directory: str) -> List[str]:
    """Delete what interrupted writes left in ``directory`` (``.ckpt_*.tmp`` assembly directories
    and ``ckpt_*.stale-*`` / ``ckpt_*.deleting-*`` retired ones): never a published checkpoint.
    Returns their names.

    One case is put back instead: a kill between the two renames that replace ``ckpt_<step>``
    (written again at the same step) leaves only ``ckpt_<step>.stale-*``, which is complete (its
    deletion starts only after the replacement is in place); it is renamed back so that the step
    is not lost. ``.deleting-*`` directories may be half-deleted and are never put back."""
    if not os.path.isdir(directory):
        return []
    leftovers = []
    for name in sorted(os.listdir(directory)):
        swapped = SWAPPED_PATTERN.match(name)
        if swapped and not os.path.exists(os.path.join(directory, swapped.group(1))):
            os.rename(os.path.join(directory, name), os.path.join(directory, swapped.group(1)))
            _fsync_dir(directory)
        elif LEFTOVER_PATTERN.match(name):
            leftovers.append(name)
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return leftovers


def load_checkpoint(path: str) -> Tuple[dict, Dict[str, Dict[str, torch.Tensor]]]:
    """Read a checkpoint directory: (meta, {file: tensors}). Any problem is a CheckpointError."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a checkpoint directory")
    meta_path = os.path.join(path, "meta.json")
    try:
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({_short(e)})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{meta_path}: not a scoresde checkpoint (format_version {FORMAT_VERSION} and an integer step expected)")
    files = meta.get("files")
    if not isinstance(files, list) or not all(isinstance(n, str) and n in TENSOR_FILES for n in files):
        raise CheckpointError(f"{meta_path}: 'files' must list tensor files among {TENSOR_FILES}")
    tensors = {}
    for name in files:
        fpath = os.path.join(path, f"{name}.safetensors")
        try:
            tensors[name] = load_file(fpath)
        except FileNotFoundError:
            raise CheckpointError(f"{fpath}: missing") from None
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{fpath}: not a readable safetensors file ({_short(e)})") from None
    return meta, tensors


def newest_checkpoint(directory: str, skipped: Optional[List[str]] = None
                      ) -> Optional[Tuple[dict, Dict[str, Dict[str, torch.Tensor]], str]]:
    """The newest checkpoint in ``directory`` that reads cleanly, skipping damaged ones (their
    errors are appended to ``skipped``); None if there is none."""
    for _, path in list_checkpoints(directory):
        try:
            meta, tensors = load_checkpoint(path)
        except CheckpointError as e:
            if skipped is not None:
                skipped.append(str(e))
            continue
        return meta, tensors, path
    return None


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]
