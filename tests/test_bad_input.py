"""Property-based tests (hypothesis) of bad configs and command-line arguments: whatever is wrong,
the command exits with status 2 and one line naming the problem, never a traceback, and never
leaves a run directory behind."""
import dataclasses
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoresde import config as C
from scoresde.cli import main
from scoresde.nets import net_signature

# no deadline and no too_slow health check: both are wall-clock limits, which a busy machine trips
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

KNOWN = [f"{section}.{f.name}" for section, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)]
KNOWN += [f"model.{k}" for k in ("name", "parameterization", "conditioning", *net_signature("mlp"))]
NUMERIC = [k for k in KNOWN if k.split(".")[0] in ("sde", "train", "sample", "data")
           and any(f.name == k.split(".")[1] and any(w in str(f.type) for w in ("int", "float"))
                   for f in dataclasses.fields(C.SECTIONS[k.split(".")[0]]))]
NUMERIC += [f"model.{k}" for k, v in net_signature("mlp").items() if isinstance(v, (int, float)) and not isinstance(v, bool)]

# values as they would be typed after --set key=...: YAML text, including the nasty ones
NASTY = ["nan", ".nan", "-.inf", ".inf", "1e400", "-1", "0", "-0.0", "1e12", "99999999999999999999", "abc", "[1, 2]",
         "{a: 1}", "null", "true", "''", "'3'", "0x10", "1_000", "~", "!!binary aGVsbG8=", "&a [*a]", "{", "]", "\t"]
values = st.one_of(st.sampled_from(NASTY), st.text(max_size=12),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(min_value=-10 ** 30, max_value=10 ** 30).map(str))
keys = st.one_of(st.sampled_from(KNOWN), st.text(min_size=0, max_size=15),
                 st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(["sde", "train", "data", "sample", "model", "x"]),
                           st.text(max_size=8)))


def _one_line(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, (argv, code, out.err[-500:])
    assert len(lines) == 1 and "Traceback" not in out.err, (argv, out.err[-2000:])
    return lines[0]


@SETTINGS
@given(overrides=st.lists(st.tuples(keys, values), max_size=4))
def test_any_overrides_followed_by_an_invalid_one_fail_cleanly(tmp_path_factory, capsys, overrides):
    """Random --set overrides, then one certainly invalid: one line, status 2, nothing written."""
    workdir = tmp_path_factory.mktemp("w") / "run"
    argv = ["train", "toy_vp", "--workdir", str(workdir), "--quiet"]
    for k, v in overrides:
        argv += ["--set", f"{k}={v}"]
    argv += ["--set", "train.steps=0"]
    _one_line(capsys, argv)
    assert not workdir.exists()


@SETTINGS
@given(key=st.sampled_from(NUMERIC), value=st.sampled_from(["nan", ".inf", "-.inf", "-1", "abc", "[1]", "1e400",
                                                            "99999999999999999999"]))
def test_a_bad_number_is_named(tmp_path_factory, capsys, key, value):
    """NaN, infinite, negative, huge, non-numeric values of numeric keys: the error names the key,
    and no run directory appears."""
    if value == "-1" and key in ("train.seed", "train.warmup", "train.snapshot_every"):
        value = "-7"  # still invalid for these (>= 0)
    workdir = tmp_path_factory.mktemp("w") / "run"
    line = _one_line(capsys, ["train", "toy_vp", "--workdir", str(workdir), "--quiet", "--set", f"{key}={value}"])
    assert key.split(".")[1] in line or key in line, (key, value, line)
    assert not workdir.exists()


@SETTINGS
@given(sub=st.sampled_from(["sample", "likelihood", "compare"]),
       flag=st.sampled_from(["--num", "--steps", "--seed", "--device", "--sampler", "--out", "--split", "--estimator"]),
       value=st.one_of(st.sampled_from(["-1", "0", "nan", "abc", "1e400", "", "cuda:99", "10,x", "-5,3"]),
                       st.text(max_size=8)))
def test_bad_arguments_of_the_other_commands(tmp_path_factory, capsys, sub, flag, value):
    """Bad or unknown arguments (or a missing run directory): one line, status 2, no output file."""
    tmp = tmp_path_factory.mktemp("a")
    out = tmp / "samples.png"
    argv = [sub, str(tmp / "no_such_run")]
    if sub == "sample":
        argv += ["--out", str(out)]
    argv += [flag, value]
    _one_line(capsys, argv)
    assert not out.exists() and sorted(os.listdir(tmp)) == []


def test_missing_data_folder_and_unwritable_workdir_are_named(tmp_path, capsys):
    line = _one_line(capsys, ["train", "mnist_vp", "--workdir", str(tmp_path / "run"), "--quiet",
                              "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert "nowhere" in line and not (tmp_path / "run").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line(capsys, ["train", "toy_vp", "--workdir", str(blocker / "run"), "--quiet"])
    assert "workdir" in line
