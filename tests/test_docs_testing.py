"""docs/testing.md cannot go stale: a row in its table for every tests/test_*.py and none for a file that is gone,
the README's "Tests and CI" section short, with CI's test command and a link to it, and no test count kept by hand."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTING = ROOT / "docs" / "testing.md"
COMMAND = "python -m pytest -q tests"


def table_files():
    """The first cell of each row of the table under "What each test file guards"."""
    section = TESTING.read_text().split("## What each test file guards", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `(tests/[^`]+)` \|", section, re.M)]


def readme_section():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Tests and CI\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end + 1]


def test_every_test_file_has_one_row_and_every_row_names_an_existing_file():
    rows = table_files()
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    assert len(rows) == len(set(rows)), f"rows named twice: {sorted({r for r in rows if rows.count(r) > 1})}"
    assert not set(files) - set(rows), f"docs/testing.md has no row for {sorted(set(files) - set(rows))}"
    assert not set(rows) - set(files), f"docs/testing.md has a row for a missing file: {sorted(set(rows) - set(files))}"


def test_the_readme_section_is_short_keeps_the_ci_command_and_links_the_page():
    section = readme_section()
    assert len(section.strip().splitlines()) < 20, "README's 'Tests and CI': the details belong in docs/testing.md"
    assert f"`{COMMAND}`" in section and "(docs/testing.md)" in section
    # .ci/run runs the README's command, and docs/testing.md says so
    assert re.search(r'^"\$VENV/bin/python" -m pytest -q tests$', (ROOT / ".ci" / "run").read_text(), re.M)
    assert COMMAND in TESTING.read_text()


def test_the_newest_releases_subset_of_ci_run_is_the_one_described():
    ci = (ROOT / ".ci" / "run").read_text()
    subset = re.search(r"NEWEST_TESTS=\((.*?)\)", ci, re.S).group(1).split()
    assert subset and all(name in TESTING.read_text() for name in subset), subset


def test_no_test_count_is_kept_by_hand():
    count = re.compile(r"\b\d[\d,]*\s+(?:tests|passed|skipped|failed|test files|mutants)\b", re.I)
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found = count.search(path.read_text())
        assert not found, f"{path.relative_to(ROOT)}: {found.group(0)!r}; counts come from pytest, not from the docs"
