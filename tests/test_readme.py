"""The README's Python snippet runs as written and prints what the README says it prints."""
import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_snippet_runs_and_output_matches():
    text = README.read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)
    assert code, "README has no python snippet"
    printed = re.search(r"prints\n\n```\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code[0], "README.md", "exec"), {})
    assert out.getvalue() == printed
