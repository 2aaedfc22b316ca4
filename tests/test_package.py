"""What `pip install` gives a user: a wheel built from the repository holds every data file the code opens
through `__file__` (a checksum list missing from the wheel made the default speech preset fail)."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "tasks", "benchmarks")
FILE_NAME = re.compile(r"""["']([\w.-]+\.\w+)["']""")  # a quoted file name such as "fsdd.sha256"


def opened_beside_the_code():
    """{path relative to the root} of each file name quoted on a line that builds a path from `__file__`."""
    found = set()
    for module in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        for line in module.read_text().splitlines():
            if "__file__" in line:
                found |= {(module.parent / name).relative_to(ROOT).as_posix() for name in FILE_NAME.findall(line)}
    return found


def data_files():
    """Every file in the packages that is not Python source: what the wheel has to carry beside the modules."""
    return {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def test_every_file_the_code_opens_through___file___is_a_data_file_of_a_package():
    opened = opened_beside_the_code()
    assert "tasks/speech/timit_sample.sha256" in opened and "tasks/speech/fsdd.sha256" in opened  # the scan works
    assert opened <= data_files(), f"opened through __file__ but not in a package folder: {opened - data_files()}"


def test_the_wheel_holds_every_data_file(tmp_path):
    """Built from a copy (the build writes build/ and *.egg-info), without network or build isolation."""
    source = tmp_path / "source"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("rnn_regularization-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    assert not data_files() - inside, (f"{sorted(data_files() - inside)} missing from the wheel: add them to "
                                       f"[tool.setuptools.package-data] in pyproject.toml")
    assert {"core/lstm.py", "tasks/speech/task.py", "benchmarks/run.py"} <= inside
