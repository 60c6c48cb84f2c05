"""The README's Python snippets run as written; the first prints exactly what the README says."""
import contextlib
import io
import os
import pathlib
import re

from scoresde.cli import main

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_snippet_runs_and_output_matches():
    text = README.read_text()
    assert SNIPPETS, "README has no python snippet"
    printed = re.search(r"prints\n\n```\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(SNIPPETS[0], "README.md", "exec"), {})
    assert out.getvalue() == printed


def test_readme_run_snippet_runs_on_a_trained_run(tmp_path, monkeypatch, capsys):
    """The snippet that loads runs/toy and samples from it, including x.numpy(), on a tiny toy run
    trained where the README's commands put it."""
    assert len(SNIPPETS) >= 2 and 'scoresde.load("runs/toy")' in SNIPPETS[1]
    monkeypatch.chdir(tmp_path)
    tiny = ["train.steps=4", "train.checkpoint_every=4", "train.log_every=2", "train.batch_size=32",
            "data.n_train=200", "model.hidden=16", "model.depth=1", "model.embed_dim=8"]
    argv = ["train", "toy_vp", "--workdir", os.path.join("runs", "toy"), "--quiet"]
    for item in tiny:
        argv += ["--set", item]
    assert main(argv) == 0
    capsys.readouterr()
    scope = {}
    exec(compile(SNIPPETS[1], "README.md", "exec"), scope)
    assert tuple(scope["x"].shape) == (1000, 2) and not scope["x"].requires_grad
    assert len(capsys.readouterr().out.split()) >= 2
