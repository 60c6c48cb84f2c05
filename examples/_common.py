"""Small helpers shared by the example scripts (paths, training that reuses a finished run, outputs)."""
import json
import os
import signal
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
    result = train(cfg, workdir, resume=True, progress=progress)
    # The trainer turns Ctrl-C (SIGINT) and SIGTERM into "finish this step, write a checkpoint,
    # return". An example must then stop, not go on to sample a half-trained model.
    status = result.get("status", "")
    if status.startswith("stopped by"):
        where = f"training stopped at step {result['step']}, checkpoint written in {workdir}; run again to continue"
        if "SIGTERM" in status:
            print(f"terminated: {where}", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        raise KeyboardInterrupt(where)  # run_main prints it on its one line
    return result


def run_main(main, argv=None) -> None:
    """Run an example's ``main(argv)``; Ctrl-C ends it with one line, "interrupted", on stderr and
    exit status 130 (128 + SIGINT, as a shell reports it), never a traceback.

    Use as ``if __name__ == "__main__": run_main(main)``. A second Ctrl-C while the first is
    unwinding (finally blocks, closing progress bars, interpreter shutdown) exits at once with the
    same status: the first one installs the handler for it before it raises, so no
    KeyboardInterrupt can escape from a cleanup and print a traceback.
    """
    said = []

    def interrupted(flush: bool, detail: str = "") -> None:
        if said:
            return
        said.append(True)
        if flush:  # not from a signal handler: it may have interrupted a write to sys.stderr
            try:
                sys.stderr.flush()
            except (OSError, ValueError, RuntimeError):
                pass
        os.write(2, ("interrupted" + (f": {detail}" if detail else "") + "\n").encode())

    def second(signum, frame):
        interrupted(flush=False)
        os._exit(130)

    def first(signum, frame):
        _set_sigint(second)
        raise KeyboardInterrupt

    _set_sigint(first)
    try:
        main(argv)
    except KeyboardInterrupt as e:
        _set_sigint(second)  # also when the KeyboardInterrupt came from elsewhere (train_or_reuse)
        interrupted(flush=True, detail=" ".join(str(e).split()))
        sys.exit(130)


def _set_sigint(handler) -> None:
    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: only the main thread receives signals anyway
        pass


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


__all__ = ["ROOT", "config_path", "default_workdir", "train_or_reuse", "run_main", "write_json", "write_text",
           "markdown"]
