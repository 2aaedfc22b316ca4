"""Download, verify and extract dataset files into a cache (torchvision-datasets style).

A dataset is a set of files, each with a known sha256. A source is a URL that is either one of those
files or an archive holding them; sources are tried in order until every file is present and verified.
Files land in place only after their checksum matched, so an interrupted or corrupt download never
leaves a file that looks usable.
"""
import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_DIR = "RNNREG_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "rnnreg"


class DataError(RuntimeError):
    """Missing, corrupt or undownloadable data; the message says what to do."""


def data_root(cli_value=None):
    """--data-dir wins, then $RNNREG_DATA_DIR, then ~/.cache/rnnreg."""
    return Path(cli_value or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).expanduser()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Source:
    url: str
    members: dict = None  # archive member path -> file name; None when the URL is the file itself
    filename: str = None  # for single files: which dataset file this URL is


def fetch(url, dest, timeout=30):
    """Stream `url` to `dest` atomically."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract(archive, members, into):
    """Extract the wanted members (matched on their path without a leading './') into `into`."""
    wanted = {m.lstrip("./"): name for m, name in members.items()}
    found = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = wanted.get(info.filename.lstrip("./"))
                if name:
                    (into / name).parent.mkdir(parents=True, exist_ok=True)
                    (into / name).write_bytes(zf.read(info))
                    found[name] = into / name
    else:
        with tarfile.open(archive) as tf:
            for info in tf:
                name = wanted.get(info.name.lstrip("./"))
                if name and info.isfile():
                    (into / name).parent.mkdir(parents=True, exist_ok=True)
                    (into / name).write_bytes(tf.extractfile(info).read())
                    found[name] = into / name
    return found


def _verify_and_place(candidates, checksums, folder):
    bad = []
    for name, path in candidates.items():
        actual = sha256(path)
        if actual != checksums[name]:
            bad.append(f"{name}: sha256 {actual} != expected {checksums[name]}")
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, folder / name)
    return bad


def download_files(folder, checksums, sources, timeout=30):
    """Make every file of `checksums` exist and verify in `folder`, downloading from `sources`.

    Raises DataError naming each failed source and why.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for source in sources:
        missing = [n for n in checksums if not (folder / n).exists()]
        if not missing:
            break
        if source.members is None and source.filename not in missing:
            continue
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            tmp = Path(tmp)
            try:
                target = tmp / (source.filename or "archive")
                target.parent.mkdir(parents=True, exist_ok=True)
                fetch(source.url, target, timeout=timeout)
                candidates = ({source.filename: target} if source.members is None
                              else _extract(target, {m: n for m, n in source.members.items() if n in missing}, tmp))
            except (OSError, tarfile.TarError, zipfile.BadZipFile) as err:
                errors.append(f"{source.url}: {err}")
                continue
            errors += [f"{source.url}: {msg}" for msg in _verify_and_place(candidates, checksums, folder)]
    missing = [n for n in checksums if not (folder / n).exists()]
    if missing:
        raise DataError(f"could not download {', '.join(missing)} into {folder}:\n  " + "\n  ".join(errors))


def check_files(folder, checksums, custom_data=False):
    """Verify every file against its canonical sha256.

    A mismatch stops the run (a damaged or different copy gives numbers that look comparable with published
    ones but are not) unless `custom_data` says the user means to use their own copy; then the mismatching
    names are returned so the results can record that the data was not canonical.
    """
    different = [name for name, expected in checksums.items() if sha256(Path(folder) / name) != expected]
    if different and not custom_data:
        paths = ", ".join(str(Path(folder) / name) for name in different[:5])
        if len(different) > 5:
            paths += f" and {len(different) - 5} more files"
        raise DataError(f"{paths} failed the sha256 check: not the canonical file(s). Delete them to download "
                        f"the canonical copies, or pass --custom-data to train on your own copy (the results "
                        f"will then record that the data was not canonical).")
    return different


def ensure_files(folder, checksums, sources, download, custom_data, missing_message):
    """Make `folder` hold every file of `checksums`, downloading the missing ones from `sources` when
    `download` is on, then verify them all (see check_files). `missing_message(missing)` explains where the
    files go and how to get them. Returns the names of non-canonical files (only with `custom_data`)."""
    folder = Path(folder)
    missing = [name for name in checksums if not (folder / name).exists()]
    if missing and download:
        try:
            download_files(folder, checksums, sources)
        except DataError as err:
            raise DataError(f"{missing_message(missing)}\nThe download failed: {err}") from None
    elif missing:
        raise DataError(missing_message(missing))
    return check_files(folder, checksums, custom_data)
