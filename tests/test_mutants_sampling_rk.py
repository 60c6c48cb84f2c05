"""Exact tests of sampling/runge_kutta.py written for mutation testing (mutation/REPORT.md), next to
the tableau tests of test_mutants_sampling_ode.py (each fixed-step method against its scheme
written out by hand): the loop's contract on its inputs and on the times it hands ``rhs``."""
import torch

from scoresde.sampling.runge_kutta import STAGES, TABLEAUX, fixed_grid_odeint, stage_times


def test_a_stage_at_c_1_takes_the_next_grid_time_itself():
    """t_k + 1 * (t_{k+1} - t_k) is not always t_{k+1} in floating point; the c = 1 stage (rk4's last,
    heun's second) is evaluated at the grid time exactly, as torchdiffeq does (it passes t1)."""
    grid = torch.linspace(1.0, 1e-3, 41, dtype=torch.float64) ** 1.7
    for name in ("rk4", "heun"):
        times = stage_times(grid, TABLEAUX[name])
        assert torch.equal(times[:, -1], grid[1:])
    assert not torch.equal(grid[:-1] + (grid[1:] - grid[:-1]), grid[1:])  # so the test can tell


def test_rhs_gets_times_in_ys_dtype_and_stage_order():
    """``rhs`` receives 0-dim tensors in y's dtype (float32 here, from the float64 table), stage by stage."""
    seen = []

    def rhs(t, y):
        seen.append((t.dtype, t.dim(), float(t)))
        return -y
    grid = torch.tensor([1.0, 0.6, 0.2], dtype=torch.float64)
    fixed_grid_odeint(rhs, torch.ones(3, 2), grid, "rk4")
    assert len(seen) == 2 * STAGES["rk4"]
    assert all(dtype == torch.float32 and dim == 0 for dtype, dim, _ in seen)
    want = stage_times(grid, TABLEAUX["rk4"]).flatten().float().tolist()
    assert [t for _, _, t in seen] == want


def test_a_float32_grid_is_stepped_in_float64():
    """The step sizes and stage times come from the grid in float64 whatever its dtype: a float32
    grid gives exactly what the same values in float64 give."""
    grid32 = torch.linspace(1.0, 1e-3, 7, dtype=torch.float32) ** 2

    def rhs(t, y):
        return torch.sin(3 * y) * t
    y0 = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    a = fixed_grid_odeint(rhs, y0, grid32, "heun3")
    b = fixed_grid_odeint(rhs, y0, grid32.double(), "heun3")
    assert torch.equal(a, b)
