"""The README's Python snippets run, in order, as a new user would run them."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 2


def test_readme_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for index, code in enumerate(_snippets()):
        try:
            exec(compile(code, f"README.md snippet {index + 1}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README snippet {index + 1} failed: {error!r}\n{code}")
