"""The README and the docs pages, read as a new user reads them.

Every ```python block runs, the blocks of one page in order in one namespace
(a block whose info string says `notest` documents an API that is not there
yet and is skipped). Every result file a page cites exists, and the numbers
of a table marked `<!-- numbers: FILE -->` appear in that file.
"""

import json
import math
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", flags=re.S | re.M)
RESULT_FILE = re.compile(r"benchmarks/results/[\w./*-]+\.json")
NUMBERS_MARK = re.compile(r"^<!-- numbers: (\S+) -->\n((?:\|.*\n)+)", flags=re.M)
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def _name(page):
    return str(page.relative_to(ROOT))


def python_blocks(text):
    """The code of every ```python block, without those marked `notest`."""
    blocks = []
    for info, code in FENCE.findall(text):
        words = info.split()
        if words[:1] == ["python"] and "notest" not in words[1:]:
            blocks.append(code)
    return blocks


def test_python_blocks_are_found_and_notest_ones_skipped():
    text = "```python\na = 1\n```\n```python notest\nb = 2\n```\n```py\nc = 3\n```\n"
    assert python_blocks(text) == ["a = 1\n"]


def test_readme_has_a_quickstart_that_runs():
    assert python_blocks((ROOT / "README.md").read_text())


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if python_blocks(p.read_text())],
    ids=_name,
)
def test_python_blocks_of_a_page_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"__{page.stem}__"}
    for index, code in enumerate(python_blocks(page.read_text()), start=1):
        try:
            exec(compile(code, f"{_name(page)} block {index}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(
                f"{_name(page)}, python block {index} failed: {error!r}\n{code}"
            ) from error


def test_headings_carry_no_version_numbers():
    # A heading's anchor is its link: a version or a measured figure in it
    # breaks every link to the section when it changes.
    for page in PAGES:
        prose = FENCE.sub("", page.read_text())
        for heading in re.findall(r"^#+ .*$", prose, flags=re.M):
            assert not re.search(r"\d+\.\d+|[Vv]ersion \d", heading), (
                f"{_name(page)}: heading {heading!r}"
            )


def _cited_result_files():
    for page in PAGES:
        for cited in sorted(set(RESULT_FILE.findall(page.read_text()))):
            yield page, cited


def test_docs_cite_result_files():
    assert len(list(_cited_result_files())) >= 10


@pytest.mark.parametrize(
    "page, cited", list(_cited_result_files()),
    ids=[f"{_name(p)}:{c}" for p, c in _cited_result_files()],
)
def test_cited_result_file_exists(page, cited):
    assert list(ROOT.glob(cited)), f"{_name(page)} cites {cited}, which does not exist"


def _json_numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            try:
                yield float(key)  # rates are keys: {"0.25": ...}
            except ValueError:
                pass
            yield from _json_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_numbers(item)


# How a table shows a stored number: as is, in percent, in millions
# (MMACs), or in milliseconds of stored seconds.
SCALES = (1.0, 100.0, 1e-6, 1e3)


def shown(token, numbers):
    """Whether `token`, as printed, is one of `numbers` rounded."""
    decimals = len(token.split(".")[1]) if "." in token else 0
    value = float(token.replace(",", ""))
    tolerance = 0.5 * 10.0**-decimals + 1e-9
    return any(
        abs(number * scale - value) <= tolerance
        for number in numbers
        for scale in SCALES
    )


def test_shown_rounds_and_scales_like_the_tables():
    numbers = [0.58538, 38634752.0, 1.5651, 1565.1053]
    assert shown("58.54", numbers) and shown("38.63", numbers)
    assert shown("1,565", numbers) and shown("1.57", numbers)
    assert not shown("58.55", numbers) and not shown("1,566", numbers)


def _marked_tables():
    for page in PAGES:
        for cited, table in NUMBERS_MARK.findall(page.read_text()):
            yield page, cited, table


def test_some_tables_are_checked_against_their_files():
    assert len(list(_marked_tables())) >= 5


@pytest.mark.parametrize(
    "page, cited, table", list(_marked_tables()),
    ids=[f"{_name(p)}:{c}" for p, c, _ in _marked_tables()],
)
def test_numbers_of_a_marked_table_are_in_its_result_file(page, cited, table):
    numbers = list(_json_numbers(json.loads((ROOT / cited).read_text())))
    rows = table.strip().split("\n")[2:]  # past the header and the rule
    missing = [
        token
        for row in rows
        for cell in row.strip("|").split("|")[1:]  # the first cell names the row
        for token in NUMBER.findall(cell.replace("**", ""))
        if not shown(token, numbers)
    ]
    assert not missing, f"{_name(page)}: {missing} of a table are not in {cited}"
