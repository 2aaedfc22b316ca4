"""The deliberate mistakes of tests/mutants.py must still apply to today's code (else the script proves nothing)."""
import shutil

import pytest

from mutants import MUTANTS, ROOT, apply


@pytest.mark.parametrize("name", list(MUTANTS))
def test_each_mutant_still_applies(name, tmp_path):
    file, edits, tests = MUTANTS[name]
    (tmp_path / file).parent.mkdir(parents=True)
    shutil.copy2(ROOT / file, tmp_path / file)
    apply(tmp_path, file, edits)
    assert (tmp_path / file).read_text() != (ROOT / file).read_text()
    assert all((ROOT / t).exists() for t in tests)
