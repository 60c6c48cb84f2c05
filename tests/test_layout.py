"""The package's layout: no import circles between scoresde's modules (counting imports inside
functions too, which hide a circle until the function runs), and the public names of the modules
that were split or moved still import from where users find them."""
import ast
import importlib
from pathlib import Path

import pytest

import scoresde

ROOT = Path(scoresde.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["scoresde"] + list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module) -> str:
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph():
    """module -> set of scoresde modules it imports (a ``from pkg import name`` where ``name`` is a
    submodule counts as an import of that submodule, as Python resolves it)."""
    files = {(_module_name(p)): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_circle():
    graph = import_graph()
    assert "scoresde.demo" in graph["scoresde.cli.train_commands"]   # cli -> cli.train_commands -> demo
    graph["scoresde.demo"] = graph["scoresde.demo"] | {"scoresde.cli"}    # the circle this layout removed
    cycle = find_cycle(graph)
    assert cycle is not None and "scoresde.cli" in cycle and "scoresde.demo" in cycle


def test_function_level_imports_count():
    graph = import_graph()
    assert "scoresde.run" in graph["scoresde.cli"]          # cli imports run inside its commands


@pytest.mark.parametrize("module, names", [
    ("scoresde.data", ["load_dataset", "Dataset", "BatchStream", "batches", "sample_toy", "toy_mixture",
                       "on_checkerboard", "checkerboard_log_prob", "scale", "unscale", "dequantize",
                       "read_digits", "read_mnist", "read_cifar10", "read_image_folder", "read_idx", "TOYS"]),
    ("scoresde.run", ["build_sde", "build_score_model", "load_data", "load", "LoadedRun", "resolve_device"]),
    ("scoresde.config", ["resolve_config", "load_config", "bundled_configs"]),
    ("scoresde.train", ["train", "Trainer", "TrainingError"]),
    ("scoresde", ["load", "run", "train", "data"]),
    ("scoresde.evaluate", ["evaluate", "report_lines", "as_pixels", "image_source", "extract_features",
                           "inception_feature_net", "digits_feature_net", "load_stats", "save_stats",
                           "fingerprint", "split_stats", "kid", "inception_score", "precision_recall",
                           "feature_statistics", "fd_min_samples", "_metric_list", "_split_key"]),
    ("scoresde.cli", ["main", "build_parser", "_HelpFormatter"]),
])
def test_public_names(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, missing


def test_train_is_the_training_loop_alone():
    import scoresde.train as train
    for moved in ("build_sde", "build_score_model", "load", "LoadedRun"):
        assert train.__dict__.get(moved) is None or train.__dict__[moved].__module__ == "scoresde.run", moved
    assert not hasattr(train, "LoadedRun") and not hasattr(train, "load")
