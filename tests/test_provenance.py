"""Provenance that cannot lie: a commit only for the repository whose top level is the project root and that
tracks the code, otherwise "not a git checkout" and a content hash anyone can recompute."""
import shutil
import subprocess

from core.provenance import NOT_A_CHECKOUT, code_version, git_commit, source_hash

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def project(root):
    """A project tree with the source layout core/, tasks/, benchmarks/, pyproject.toml."""
    for name in ("core/a.py", "tasks/t/b.py", "benchmarks/c.py", "pyproject.toml", "README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


def test_an_export_inside_another_repository_records_no_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNREG_GIT_COMMIT", raising=False)
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "other.txt").write_text("x")
    git(outer, "init", "-q")
    git(outer, "add", "-A")
    git(outer, "commit", "-qm", "outer")
    export = project(outer / "exported")
    assert git_commit(export) == NOT_A_CHECKOUT  # not the outer repository's HEAD
    monkeypatch.setenv("RNNREG_GIT_COMMIT", "abc123")
    assert git_commit(export) == "abc123 (declared by $RNNREG_GIT_COMMIT)"
    assert code_version({"git_commit": NOT_A_CHECKOUT, "source_hash": "f" * 64}) == \
        f"{NOT_A_CHECKOUT}, source sha256 {'f' * 12}"
    assert code_version({"git_commit": git_commit(export)}) == "commit abc123 (declared by $RNNREG_GIT_COMMIT)"


def test_untracked_source_files_make_the_commit_dirty(tmp_path):
    root = project(tmp_path / "p")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    head = git_commit(root)
    assert len(head) == 40 and code_version({"git_commit": head}) == f"commit {head[:12]}"
    (root / "tasks" / "t" / "new.py").write_text("x")  # code that would run but is not in the commit
    assert git_commit(root) == head + "-dirty"


def test_a_repository_that_tracks_none_of_the_source_records_no_commit(tmp_path, monkeypatch):
    """A user who unpacks a release and runs `git init` there for their own notes: HEAD names none of the code,
    so no commit (not even "-dirty") is recorded; the source hash alone names it."""
    monkeypatch.delenv("RNNREG_GIT_COMMIT", raising=False)
    root = tmp_path / "release"
    for folder in ("core", "tasks", "benchmarks"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    (root / "notes.md").write_text("my notes")
    git(root, "init", "-q")
    git(root, "add", "notes.md")
    git(root, "commit", "-qm", "my notes")
    assert git_commit(root) == NOT_A_CHECKOUT
    assert code_version({"git_commit": git_commit(root), "source_hash": source_hash(root)}) == \
        f"{NOT_A_CHECKOUT}, source sha256 {source_hash(root)[:12]}"
    git(root, "add", "core", "tasks", "benchmarks", "pyproject.toml")  # now the repository tracks the source
    git(root, "commit", "-qm", "the release")
    assert git_commit(root) == git(root, "rev-parse", "HEAD").strip()


def test_source_hash_is_the_documented_shell_command(tmp_path):
    root = project(tmp_path / "p")
    (root / "core" / "__pycache__").mkdir()
    (root / "core" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    if shutil.which("sha256sum"):
        shell = subprocess.run("(find core tasks benchmarks -type f ! -path '*/__pycache__/*' ! -name '*.pyc'; "
                               "echo pyproject.toml) | LC_ALL=C sort | xargs sha256sum | sha256sum", shell=True,
                               cwd=root, capture_output=True, text=True, check=True).stdout.split()[0]
        assert source_hash(root) == shell
    before = source_hash(root)
    (root / "README.md").write_text("docs change nothing")
    assert source_hash(root) == before
    (root / "core" / "a.py").write_text("a change of code")
    assert source_hash(root) != before
