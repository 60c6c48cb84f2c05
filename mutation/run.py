#!/usr/bin/env python
"""Mutation testing of the numerical core with mutmut 3.x, one module at a time.

    python mutation/run.py                    # every module with default = true in modules.toml
    python mutation/run.py -m sde -m losses   # chosen modules (make mutation MODULE="sde losses")
    python mutation/run.py --list             # the modules, their files and tests
    python mutation/run.py --estimate -m sampling   # mutant count and worst-case time, no mutant run
    python mutation/run.py --report           # re-apply equivalent.toml to stored results, rebuild the summary

For each module the driver builds a scratch workspace mutation/work/<module>/ (a copy of scoresde/
and tests/ plus a pyproject.toml whose [tool.mutmut] section names that module's file and test
files), runs ``mutmut run`` there, and reads mutmut's per-file results. Nothing under scoresde/ is
ever written: mutmut writes its mutated copies under the workspace's mutants/ folder.

Per module it prints and stores (mutation/results/<module>.json) the counts killed / timeout /
survived / not covered, the wall time, and the diff of every mutant that was not killed. Survivors
listed in mutation/equivalent.toml (with the mutated line and a reason) count as equivalent; an
entry whose mutant no longer exists, changed, or is now killed is reported as stale.
mutation/results/summary.md collects the latest result of every module.
"""
from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "results"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into what the report counts
KILLED = {"killed"}
TIMEOUT = {"timeout"}
SURVIVED = {"survived"}
NOT_COVERED = {"no tests"}


def load_modules() -> dict:
    with open(HERE / "modules.toml", "rb") as f:
        return tomllib.load(f)


def load_equivalents() -> dict:
    path = HERE / "equivalent.toml"
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {module: {e["mutant"]: e for e in entries} for module, entries in data.items()}


def toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i), ensure_ascii=False) for i in items) + "]"


def base_pyproject() -> tuple[str, dict]:
    """The repository's pyproject.toml without its [tool.mutmut] section, and that section."""
    text = (ROOT / "pyproject.toml").read_text()
    base = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    out, skipping = [], False
    for line in text.splitlines():
        if re.match(r"^\s*\[", line):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n", base


def strip_no_grad(package: Path) -> None:
    """Drop the ``@torch.no_grad()`` lines of the workspace's copy of the package. mutmut 3 does not
    mutate decorated functions at all (it cannot put its trampoline under a decorator), and every
    sampler and the likelihood carry this one. It only switches autograd off, which the selected
    tests, comparing values, do not observe (tests/test_no_grad.py checks it and is not selected)."""
    for path in package.rglob("*.py"):
        text = path.read_text()
        stripped = re.sub(r"^@torch\.no_grad\(\)\n", "", text, flags=re.M)
        if stripped != text:
            path.write_text(stripped)


def no_tqdm_monitor(conftest: Path) -> None:
    """Give tqdm, in the workspace's tests, no monitor thread and a per-process lock. mutmut forks each
    mutant's worker from a process that has already run the tests. tqdm's default lock includes a
    multiprocessing semaphore shared by every forked worker (one killed while holding it blocks the
    rest), and its monitor thread may hold the lock at the moment of a fork. Either way a worker's
    first progress bar waits forever: a sleeping process, which a CPU-time limit never times out."""
    with conftest.open("a") as f:
        f.write("\n\nimport threading  # added by mutation/run.py (no_tqdm_monitor)\n"
                "import tqdm.std\n"
                "tqdm.std.tqdm.monitor_interval = 0\n"
                "tqdm.std.tqdm.set_lock(threading.RLock())\n")


def prepare_workspace(name: str, spec: dict, fresh: bool, isolation: str | None = None) -> tuple[Path, list[str]]:
    ws = WORK / name
    if fresh and ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True, exist_ok=True)
    # a snapshot of the package and the tests: edits made to the repository while this runs do not leak in
    for sub in ("scoresde", "tests"):
        if (ws / sub).exists():
            shutil.rmtree(ws / sub)
        shutil.copytree(ROOT / sub, ws / sub, ignore=IGNORE)
    strip_no_grad(ws / "scoresde")
    no_tqdm_monitor(ws / "tests" / "conftest.py")
    tests = []
    extra = f"tests/test_mutants_{name}.py"  # the tests written to kill this module's survivors
    for t in spec["tests"] + ([extra] if extra not in spec["tests"] and (ROOT / extra).exists() else []):
        if (ROOT / t).exists():
            tests.append(t)
        else:
            print(f"  warning: {t} does not exist, left out of module {name}")
    if not tests:
        raise SystemExit(f"module {name}: none of its test files exists")
    text, base = base_pyproject()
    cfg = dict(base)
    cfg["source_paths"] = ["scoresde"]
    cfg["only_mutate"] = spec["mutate"]
    cfg["pytest_add_cli_args_test_selection"] = tests
    if isolation:
        cfg["process_isolation"] = isolation
    lines = ["", "[tool.mutmut]  # generated by mutation/run.py for module " + name]
    for k, v in cfg.items():
        if isinstance(v, list):
            lines.append(f"{k} = {toml_list(v)}")
        elif isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f"{k} = {json.dumps(str(v))}")
    (ws / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")
    return ws, tests


def source_files(spec: dict) -> list[Path]:
    files = sorted({p.relative_to(ROOT) for pat in spec["mutate"] for p in ROOT.glob(pat)})
    return [f for f in files if f.suffix == ".py"]


def generate_names(ws: Path, spec: dict) -> dict[str, str]:
    """Every mutant mutmut makes for the module's files (as copied to the workspace ws), with its diff."""
    import libcst as cst
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function
    from mutmut.mutation.file_mutation import mutate_file_contents
    from mutmut.utils.format_utils import get_mutant_name

    out = {}
    cwd = os.getcwd()
    os.chdir(ws)  # mutmut reads its configuration from the working directory's pyproject.toml
    reset_config()
    try:
        for path in source_files(spec):
            mutated = mutate_file_contents(str(path), path.read_text())
            module = cst.parse_module(mutated.code)
            for short in mutated.mutant_names:
                full = get_mutant_name(path, short)
                orig, mut = (cst.Module([fn]).code.strip().split("\n")
                             for fn in (read_original_function(module, full), read_mutant_function(module, full)))
                out[full] = "\n".join(difflib.unified_diff(orig, mut, str(path), str(path), lineterm=""))
    finally:
        os.chdir(cwd)
    return out


def changed_line(diff: str) -> str:
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    return " / ".join(plus) if plus else "(removed) " + " / ".join(minus)


def select(spec: dict, names: dict[str, str]) -> list[str] | None:
    """The mutants to run: None for all, else the names matching spec['functions'].

    A pattern ``FUNC:TEXT`` keeps only the mutants of FUNC whose mutated line contains TEXT
    (for one line of a long function, e.g. the clipping call inside Trainer.fit)."""
    patterns = spec.get("functions")
    if not patterns:
        return None
    chosen = []
    for full, diff in names.items():
        func = full.partition("__mutmut_")[0].rpartition(".")[2]
        changed = "\n".join(ln for ln in diff.splitlines()[2:] if ln[:1] in "+-")
        for pat in patterns:
            fpat, _, text = pat.partition(":")
            if fnmatch.fnmatchcase(func, fpat) and (not text or text in changed):
                chosen.append(full)
                break
    return sorted(chosen)


def read_results(ws: Path, spec: dict) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    statuses = {}
    for path in source_files(spec):
        meta = ws / "mutants" / (str(path) + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        for key, code in data["exit_code_by_key"].items():
            statuses[key] = status_by_exit_code[code]
    return statuses


def diffs_for(ws: Path, names: list[str], spec: dict) -> dict[str, str]:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    by_module = {".".join(p.with_suffix("").parts): p for p in source_files(spec)}
    out = {}
    from mutmut.configuration import reset_config

    cwd = os.getcwd()
    os.chdir(ws)
    reset_config()
    try:
        for n in names:
            mod = n.partition("__mutmut_")[0].rpartition(".")[0]
            out[n] = get_diff_for_mutant(n, path=by_module[mod])
    finally:
        os.chdir(cwd)
    return out


def classify(name: str, not_killed: dict[str, tuple[str, str]], statuses: dict[str, str]):
    """Split the mutants that were not killed into equivalent ones (equivalent.toml), ones only an
    accelerator can tell apart (entries with kind = "accelerator": a tensor made on or moved to the
    wrong device, which the CPU cannot see), and survivors."""
    eq_entries = load_equivalents().get(name, {})
    equivalent, accelerator, survivors, stale = {}, {}, {}, []
    for k, (status, diff) in sorted(not_killed.items()):
        e = eq_entries.get(k)
        line = changed_line(diff)
        if e is not None and e.get("line", "").strip() == line:
            target = accelerator if e.get("kind") == "accelerator" else equivalent
            target[k] = {"reason": e["reason"], "status": status, "diff": diff}
        else:
            if e is not None:
                stale.append(f"{k}: listed as equivalent with line {e.get('line')!r} but now mutates {line!r}")
            survivors[k] = {"status": status, "diff": diff}
    for k in eq_entries:
        if k not in not_killed:
            stale.append(f"{k}: listed as equivalent but {statuses.get(k, 'no longer generated')}")
    return equivalent, accelerator, survivors, stale


def reclassify(result: dict) -> dict:
    """Re-apply equivalent.toml to a stored result (after editing it), without running mutmut again."""
    everything = {**result["equivalents"], **result.get("accelerators", {}), **result["survivors"]}
    not_killed = {k: (v["status"], v["diff"]) for k, v in everything.items()}
    statuses = {k: v[0] for k, v in not_killed.items()}
    equivalent, accelerator, survivors, stale = classify(result["module"], not_killed, statuses)
    return dict(result, equivalent=len(equivalent), accelerator=len(accelerator), survived=len(survivors),
                equivalents=equivalent, accelerators=accelerator, survivors=survivors, stale_equivalents=stale)


def estimate_module(name: str, spec: dict, args) -> dict:
    """Generate the mutants and time the tests once (mutmut's stats run), without running any mutant:
    mutmut's worst-case estimate per mutant is the time of the tests that cover its function (what a
    survivor costs; a killed mutant stops at its first failing test under -x)."""
    print(f"== {name}: estimating ({', '.join(spec['mutate'])})")
    ws, tests = prepare_workspace(name, spec, fresh=not args.resume, isolation=args.isolation)
    print(f"   tests: {' '.join(tests)}")
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    t0 = time.time()
    with open(ws / "mutmut.log", "w") as f:
        # `run` with a pattern that matches nothing generates the mutants and collects the test timings,
        # then stops before the first mutant; print-time-estimates reads both back
        subprocess.run([mutmut, "run", "--max-children", str(args.jobs), "no-such-mutant-*"], cwd=ws, stdout=f,
                       stderr=subprocess.STDOUT, env=env)
        out = subprocess.run([mutmut, "print-time-estimates"], cwd=ws, capture_output=True, text=True, env=env).stdout
    if "failed to collect stats" in (ws / "mutmut.log").read_text():
        raise SystemExit(f"module {name}: the baseline test run failed (mutmut needs green tests); "
                         f"see {ws / 'mutmut.log'}")
    times, uncovered = [], 0
    for line in out.splitlines():
        head = line.split(" ", 1)[0]
        if head.endswith("ms") and head[:-2].isdigit():
            times.append(int(head[:-2]) / 1000)
        elif line.startswith("<no tests>"):
            uncovered += 1
    worst = sum(times) / args.jobs
    result = {"module": name, "mutants": len(times) + uncovered, "not_covered": uncovered,
              "worst_case_s": round(worst), "stats_s": round(time.time() - t0)}
    print(f"   {name}: {result['mutants']} mutants ({uncovered} not covered); every one surviving would take "
          f"{worst / 60:.0f} min on {args.jobs} workers (setup and test timing took {result['stats_s']} s)")
    return result


def run_module(name: str, spec: dict, args) -> dict:
    print(f"== {name}: mutating {', '.join(spec['mutate'])}")
    ws, tests = prepare_workspace(name, spec, fresh=not args.resume, isolation=args.isolation)
    print(f"   tests: {' '.join(tests)}")
    chosen = None
    if spec.get("functions"):
        names = generate_names(ws, spec)
        chosen = select(spec, names)
        print(f"   {len(chosen)} of {len(names)} mutants selected by {spec['functions']}")
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", "--max-children", str(args.jobs)] + (chosen or [])
    log = ws / "mutmut.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ws, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.time() - t0
    if rc != 0:
        print(log.read_text()[-4000:])
        raise SystemExit(f"module {name}: mutmut exited with {rc} (log: {log})")
    statuses = read_results(ws, spec)
    if chosen is not None:
        statuses = {k: v for k, v in statuses.items() if k in set(chosen)}
    not_killed = sorted(k for k, v in statuses.items() if v not in KILLED | TIMEOUT)
    diffs = diffs_for(ws, not_killed, spec)
    equivalent, accelerator, survivors, stale = classify(name, {k: (statuses[k], diffs[k]) for k in not_killed},
                                                         statuses)
    counts = {s: sum(v == s for v in statuses.values()) for s in sorted(set(statuses.values()))}
    result = {
        "module": name,
        "files": spec["mutate"],
        "tests": tests,
        "functions": spec.get("functions"),
        "mutants": len(statuses),
        "killed": sum(v in KILLED for v in statuses.values()),
        "timeout": sum(v in TIMEOUT for v in statuses.values()),
        "equivalent": len(equivalent),
        "accelerator": len(accelerator),
        "survived": len(survivors),
        "status_counts": counts,
        "wall_s": round(wall, 1),
        "jobs": args.jobs,
        "isolation": args.isolation or "pyproject.toml",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "equivalents": equivalent,
        "accelerators": accelerator,
        "survivors": survivors,
        "stale_equivalents": stale,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"   {name}: {result['mutants']} mutants, killed {result['killed']}, timeout {result['timeout']}, "
          f"equivalent {result['equivalent']}, GPU-only {result['accelerator']}, survived {result['survived']} "
          f"(of which not covered {sum(s['status'] in NOT_COVERED for s in survivors.values())}), "
          f"{score(result)}, {wall:.0f} s")
    for s in stale:
        print(f"   stale equivalent entry: {s}")
    for k, s in survivors.items():
        print(f"   survivor [{s['status']}] {k}\n" + "\n".join("      " + ln for ln in s["diff"].splitlines()[2:]))
    return result


def score(r: dict) -> str:
    """Killed / (mutants - equivalent - GPU-only): the share of the mutants a CPU test can observe."""
    live = r["mutants"] - r["equivalent"] - r.get("accelerator", 0)
    return f"score {100 * (r['killed'] + r['timeout']) / live:.1f}%" if live else "score n/a"


def write_summary(modules: dict) -> Path:
    rows = []
    for name in modules:
        p = RESULTS / f"{name}.json"
        if p.exists():
            rows.append(json.loads(p.read_text()))
    out = ["# Mutation testing: latest results", "",
           "Generated by `mutation/run.py` from mutation/results/*.json; killed includes timeouts.", "",
           "GPU-only: mutants that only change the device a tensor lives on (seen only with an accelerator);",
           "the score is killed / (mutants - equivalent - GPU-only).", "",
           "| module | mutants | killed | equivalent | GPU-only | survived | score | time | run |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['module']} | {r['mutants']} | {r['killed'] + r['timeout']} | {r['equivalent']} | "
                   f"{r.get('accelerator', 0)} | {r['survived']} | {score(r)[6:]} | {r['wall_s'] / 60:.1f} min | "
                   f"{r['finished']} |")
    for r, key, title in [(r, key, title) for r in rows for key, title in
                          (("equivalents", "equivalent mutants"), ("accelerators", "GPU-only mutants"))]:
        if r.get(key):
            out += ["", f"## {r['module']}: {title} (mutation/equivalent.toml)", ""]
            by_reason: dict[str, list[str]] = {}
            for k, e in r[key].items():
                by_reason.setdefault(e["reason"] if isinstance(e, dict) else e, []).append(k.rpartition(".")[2])
            for reason, names in by_reason.items():
                out.append(f"- {reason}: " + ", ".join(f"`{n}`" for n in names))
    for r in rows:
        if r["survivors"] or r["stale_equivalents"]:
            out += ["", f"## {r['module']}: survivors", ""]
            for s in r["stale_equivalents"]:
                out.append(f"- stale equivalent entry: {s}")
            for k, s in r["survivors"].items():
                out += [f"- `{k}` ({s['status']})", "", "```diff", s["diff"], "```"]
    path = RESULTS / "summary.md"
    RESULTS.mkdir(exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


def main(argv=None):
    modules = load_modules()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--module", action="append", default=[],
                    help="module(s) to run (space- or comma-separated; default: all with default = true)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2, help="parallel mutant workers")
    ap.add_argument("--resume", action="store_true",
                    help="keep the workspace and mutmut's cached verdicts (only new or changed mutants run)")
    ap.add_argument("--isolation", choices=["fork", "forkserver"],
                    help="mutmut's process_isolation (default: pyproject.toml's, fork): forkserver runs each mutant "
                         "in a process that ran no test, so no state from the baseline run leaks in (slower)")
    ap.add_argument("--estimate", action="store_true",
                    help="only generate the mutants and time the tests: print the worst-case run time per module")
    ap.add_argument("--list", action="store_true", help="list the modules and exit")
    ap.add_argument("--report", action="store_true",
                    help="re-apply equivalent.toml to the stored results and rebuild results/summary.md")
    args = ap.parse_args(argv)
    if args.list:
        for name, spec in modules.items():
            flag = "" if spec.get("default", True) else "  (not in the default run)"
            print(f"{name}: {' '.join(spec['mutate'])} <- {' '.join(spec['tests'])}{flag}")
        return 0
    if args.report:
        for name in modules:
            p = RESULTS / f"{name}.json"
            if p.exists():
                r = reclassify(json.loads(p.read_text()))
                p.write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")
                print(f"{name}: {r['mutants']} mutants, killed {r['killed'] + r['timeout']}, equivalent "
                      f"{r['equivalent']}, GPU-only {r['accelerator']}, survived {r['survived']}, {score(r)}")
                for st in r["stale_equivalents"]:
                    print(f"   stale equivalent entry: {st}")
        print(write_summary(modules))
        return 0
    chosen = [m for arg in args.module for m in re.split(r"[\s,]+", arg) if m]
    if not chosen:
        chosen = [n for n, s in modules.items() if s.get("default", True)]
    unknown = [m for m in chosen if m not in modules]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; known: {list(modules)}")
    if args.estimate:
        for m in chosen:
            estimate_module(m, modules[m], args)
        return 0
    t0 = time.time()
    results = [run_module(m, modules[m], args) for m in chosen]
    print("\nmodule              mutants  killed  timeout  equivalent  GPU-only  survived   time")
    for r in results:
        print(f"{r['module']:<19} {r['mutants']:>7} {r['killed']:>7} {r['timeout']:>8} {r['equivalent']:>11} "
              f"{r['accelerator']:>9} {r['survived']:>9} {r['wall_s'] / 60:>5.1f} min   {score(r)}")
    print(f"total {(time.time() - t0) / 60:.1f} min; summary: {write_summary(modules).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
