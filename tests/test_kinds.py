"""The classification behind the README's count of exact and interface tests names real tests."""
import ast
from pathlib import Path

import pytest

from kinds import ALL, EXACT, kind

HERE = Path(__file__).resolve().parent


def _test_functions(module: str):
    tree = ast.parse((HERE / f"{module}.py").read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


@pytest.mark.parametrize("module", sorted(EXACT))
def test_every_listed_exact_test_exists(module):
    assert (HERE / f"{module}.py").is_file(), module
    names = EXACT[module]
    if names != ALL:
        missing = sorted(set(names) - _test_functions(module))
        assert not missing, f"{module}: no such tests {missing} (renamed? update tests/kinds.py)"


def test_kind_of_a_test():
    assert kind("test_sde", "test_closed_forms_tensor_t") == "exact"
    assert kind("test_sde", "test_bad_betas") == "interface"
    assert kind("test_convergence", "anything") == "exact"
    assert kind("test_cli", "test_help") == "interface"


def test_collected_tests_carry_their_kind(request):
    marks = {m.name for m in request.node.iter_markers()}
    assert "interface" in marks and "exact" not in marks
