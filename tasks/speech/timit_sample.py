"""The TIMIT corpus sample that NLTK distributes (corpus id `timit`): 16 speakers, one female and one male from
each dialect region dr1-dr8, ten read sentences each, 16 kHz mono, hand-verified time-aligned phone labels.
The default speech corpus (paper section 4.2: the phonetic state of every 10 ms frame).

Layout: <root>/timit-sample/dr<N>-<speaker>/<utt>.{wav,phn}; .phn lines are `start_sample end_sample phone`
over the 61 TIMIT symbols. Every wav and phn file is checked against tasks/speech/timit_sample.sha256.

Protocol (region folds, decided before any run; docs/tasks.md): one dev region (both speakers) makes every
global choice and is never a test fold; seed s = 1..7 holds out the s-th other region for test and the next
one (cyclically) for the best epoch; seed 0 is the dev fold, for selection runs only (--valid-only): the dev
region is its validation set and it has no test set. SA1/SA2, read by all 16 speakers, are left out everywhere.
"""
from pathlib import Path

import soundfile

from core.download import ENV_DATA_DIR, DataError, Source, check_files, ensure_files
from tasks.speech.data import TIMIT_61, read_audio, read_phn

NLTK_TIMIT_ZIP = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/timit.zip"
FOLDER = "timit-sample"
RATE = 16000
REGIONS = tuple(f"dr{i}" for i in range(1, 9))
LABEL_SLACK_MS = 10  # a label file may end this much after its audio (rounding); more is an error
LAYOUT = f"<root>/{FOLDER}/dr<N>-<speaker>/<utt>.{{wav,phn}} (NLTK's corpora/timit.zip, unpacked)"


def checksums():
    """{"dr<N>-<speaker>/<utt>.<wav|phn>": sha256} of the canonical NLTK copy."""
    lines = Path(__file__).with_name("timit_sample.sha256").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def ensure_timit_sample(root, download=True, custom_data=False):
    """Return (root/timit-sample holding verified wav and phn files, names of non-canonical files). Missing files
    are downloaded from NLTK's data package (each verified before it is moved into place). With `custom_data` the
    folder is the user's own tree: it is read as it is, and every canonical file it lacks or holds in another
    version is listed as non-canonical."""
    folder = Path(root) / FOLDER
    sums = checksums()
    if custom_data:
        present = {name: digest for name, digest in sums.items() if (folder / name).exists()}
        return folder, sorted(set(sums) - set(present)) + check_files(folder, present, custom_data=True)
    sources = [Source(NLTK_TIMIT_ZIP, members={f"timit/{name}": name for name in sums})]

    def missing_message(missing):
        return (f"TIMIT sample ({len(missing)} of {len(sums)} files missing, e.g. {folder / missing[0]}). "
                f"Expected {LAYOUT} from {NLTK_TIMIT_ZIP}. Pass --data-dir or set ${ENV_DATA_DIR} to the folder "
                f"that holds {FOLDER}/.")

    return folder, ensure_files(folder, sums, sources, download, custom_data, missing_message)


def region_folds(seed, dev_region):
    """{"train", "valid", "test": [regions]} of fold `seed` (see the module docstring)."""
    if dev_region not in REGIONS:
        raise ValueError(f"dev_region must be one of {', '.join(REGIONS)}, got {dev_region!r}")
    others = [r for r in REGIONS if r != dev_region]
    if seed == 0:
        return {"train": others, "valid": [dev_region], "test": []}
    if not 1 <= seed <= len(others):
        raise ValueError(f"with region_folds, seed s is the fold: 1..{len(others)} hold one region out for test, "
                         f"0 is the dev fold (selection runs); got seed {seed}")
    test, valid = others[seed - 1], others[seed % len(others)]
    return {"train": [dev_region] + [r for r in others if r not in (test, valid)], "valid": [valid], "test": [test]}


def speaker_dirs(folder, regions):
    """The dr<N>-<speaker> folders of `regions`, sorted; a region without any is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist. Expected {LAYOUT}. Pass --data-dir or set ${ENV_DATA_DIR}.")
    dirs = []
    for region in regions:
        found = sorted(p for p in folder.glob(f"{region}-*") if p.is_dir())
        if not found:
            raise DataError(f"no speaker folder {region}-<speaker> in {folder} (layout: {LAYOUT})")
        dirs += found
    return dirs


def check_pairs(speaker_dir):
    """Every .wav has its .phn and the reverse; returns the utterance names."""
    wavs = {p.stem for p in speaker_dir.glob("*.wav")}
    phns = {p.stem for p in speaker_dir.glob("*.phn")}
    for stem in sorted(wavs ^ phns):
        have, lack = ("wav", "phn") if stem in wavs else ("phn", "wav")
        raise DataError(f"{speaker_dir / f'{stem}.{have}'} has no {stem}.{lack} beside it: restore the missing file "
                        f"or remove both (layout: {LAYOUT})")
    return sorted(wavs)


def check_segments(path, segments, n_samples, rate):
    """Contiguous phone segments from sample 0, known symbols, ending at most LABEL_SLACK_MS after the audio."""
    if not segments:
        raise DataError(f"{path} has no phone segments")
    expected = 0
    for number, (start, end, phone) in enumerate(segments, 1):
        if phone.lower() not in TIMIT_61:
            raise DataError(f"{path}:{number}: unknown phone {phone!r}; a TIMIT .phn uses the 61 TIMIT symbols")
        if start != expected:
            kind = "a gap" if start > expected else "an overlap"
            raise DataError(f"{path}:{number}: {kind}: the segment starts at sample {start} but the previous one "
                            f"ends at {expected}; segments must be contiguous")
        if end <= start:
            raise DataError(f"{path}:{number}: segment ends at {end}, not after its start {start}")
        expected = end
    slack = rate * LABEL_SLACK_MS // 1000
    if expected > n_samples + slack:
        over = expected - n_samples
        raise DataError(f"{path}: the labels run to sample {expected} but the audio has {n_samples} samples, "
                        f"{over} samples ({over / rate * 1000:.2f} ms) past its end where at most {slack} samples "
                        f"({LABEL_SLACK_MS} ms) are allowed: the label file does not belong to this audio")


def read_utterance(wav, phn):
    """{"audio", "rate", "segments", "label_end"}: a 16 kHz mono recording and its checked phone segments."""
    info = soundfile.info(str(wav))
    if info.samplerate != RATE or info.channels != 1:
        raise DataError(f"{wav} is {info.samplerate} Hz with {info.channels} channel(s); the TIMIT sample is "
                        f"{RATE} Hz mono: replace it with the canonical file")
    audio, rate = read_audio(wav)
    segments = read_phn(phn)
    check_segments(phn, segments, len(audio), rate)
    return {"audio": audio, "rate": rate, "segments": segments, "label_end": segments[-1][1]}


def timit_sample_split(folder, regions):
    """The utterances of `regions` (SA1/SA2 left out): dicts {audio, rate, segments, label_end, speaker, region,
    files}. A label ending before its audio leaves the frames after it unlabelled (not scored)."""
    utterances = []
    for speaker_dir in speaker_dirs(folder, regions):
        region, _, speaker = speaker_dir.name.partition("-")
        for stem in check_pairs(speaker_dir):
            if stem.lower().startswith("sa"):
                continue
            utt = read_utterance(speaker_dir / f"{stem}.wav", speaker_dir / f"{stem}.phn")
            utterances.append({**utt, "speaker": speaker, "region": region, "files": [f"{speaker_dir.name}/{stem}"]})
    return utterances
