"""Frame-labelled speech for the acoustic-model task: audio reading, the three corpora, log-mel features.

Every corpus is turned into utterances: (waveform, per-sample label ids), at the corpus' sample rate.
- FSDD connected digits (default): per speaker, 3-7 isolated digit recordings are concatenated with silence
  gaps and light background noise, deterministically from a seed. A sample is labelled with its digit, or
  silence in the gaps and in the quiet edges of each recording (found by an energy threshold).
- CMU ARCTIC / festvox: `wav/*.wav` + `lab/*.lab` (phone end times in seconds).
- TIMIT: `*.wav` + `*.phn` (sample-indexed phone segments), folded 61 -> 39 phones (Lee & Hon, 1989).
Frames (25 ms window, 10 ms hop, centred) take the label of their centre sample.
"""
import random
import warnings
from pathlib import Path

import soundfile
import torch
import torch.nn.functional as F
import torchaudio

from core.download import ENV_DATA_DIR, DataError, Source, ensure_files
from tasks.base import IGNORE  # frames that count for nothing, e.g. TIMIT's q, which the 39-phone set deletes


# ---- audio ------------------------------------------------------------------------------------------


def read_audio(path):
    """-> (mono float32 waveform in [-1, 1], sample rate). WAV, FLAC and NIST SPHERE (TIMIT) via libsndfile.
    An unreadable file raises DataError naming it."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        raise DataError(f"cannot read audio file {path}: {err}. Replace it with a valid copy (or delete it so "
                        f"the download fetches it again).") from None
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} has no samples; replace it with a valid copy")
    return torch.from_numpy(data.mean(axis=1)), rate


def active_span(wave, hop, threshold_db):
    """(start, end) samples of the part of a recording louder than `threshold_db` relative to its loudest
    hop-long frame: what lies outside (the quiet edges) is silence."""
    frames = max(len(wave) // hop, 1)
    if len(wave) < hop:
        wave = F.pad(wave, (0, hop - len(wave)))
    energy = wave[: frames * hop].reshape(frames, hop).pow(2).mean(dim=1)
    db = 10 * torch.log10(energy + 1e-12)
    loud = torch.nonzero(db > db.max() + threshold_db).flatten()
    return int(loud[0]) * hop, min(int(loud[-1] + 1) * hop, len(wave))


# ---- FSDD connected digits -------------------------------------------------------------------------

FSDD_VERSION = "v1.0.10"
FSDD_ARCHIVE = f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{FSDD_VERSION}.tar.gz"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_RATE = 8000
DIGIT_CLASSES = [str(d) for d in range(10)] + ["sil"]
SILENCE = 10


def fsdd_checksums(per_digit=50):
    """{"recordings/<digit>_<speaker>_<index>.wav": sha256} of the pinned release (tasks/fsdd.sha256), limited
    to the first `per_digit` recordings of each digit and speaker."""
    sums = {}
    for line in (Path(__file__).with_name("fsdd.sha256")).read_text().splitlines():
        digest, name = line.split()
        _, _, index = Path(name).stem.split("_")
        if int(index) < per_digit:
            sums[f"recordings/{name}"] = digest
    return sums


def ensure_fsdd(root, per_digit=50, download=True, custom_data=False):
    """Return (root/fsdd holding verified recordings, names of non-canonical files)."""
    folder = Path(root) / "fsdd"
    checksums = fsdd_checksums(per_digit)
    prefix = f"free-spoken-digit-dataset-{FSDD_VERSION.lstrip('v')}/"
    sources = [Source(FSDD_ARCHIVE, members={prefix + name: name for name in checksums})]

    def missing_message(missing):
        return (f"FSDD ({len(missing)} of {len(checksums)} recordings missing, e.g. {folder / missing[0]}). "
                f"Expected {folder}/recordings/<digit>_<speaker>_<index>.wav from {FSDD_ARCHIVE} "
                f"(the release's recordings/ folder). Pass --data-dir or set ${ENV_DATA_DIR} to the folder "
                f"that holds fsdd/.")

    return folder, ensure_files(folder, checksums, sources, download, custom_data, missing_message)


def plan_fsdd_utterances(names, speaker, seed, min_digits=3, max_digits=7):
    """Deterministically group one speaker's recordings (file names) into utterances of min..max digits.
    Each recording is used once; the order depends only on (seed, speaker), not on the other speakers."""
    rng = random.Random(f"{seed}-{speaker}")
    names = sorted(names)
    rng.shuffle(names)
    groups = []
    while names:
        size = rng.randint(min_digits, max_digits)
        groups.append(names[:size])
        names = names[size:]
    return groups


def build_fsdd_utterance(waves, digits, rng, rate, gap_s, snr_db, hop, threshold_db):
    """Concatenate recordings with silence gaps (also before the first and after the last) and add white
    noise at `snr_db` below the speech's power. Returns (waveform, sample labels, [(start, end, digit)] of
    each recording's active part)."""
    pieces, labels, spans, pos = [], [], [], 0

    def gap():
        n = int(rng.uniform(*gap_s) * rate)
        pieces.append(torch.zeros(n))
        labels.append(torch.full((n,), SILENCE, dtype=torch.long))
        return n

    pos += gap()
    for wave, digit in zip(waves, digits):
        start, end = active_span(wave, hop, threshold_db)
        label = torch.full((len(wave),), SILENCE, dtype=torch.long)
        label[start:end] = digit
        pieces.append(wave)
        labels.append(label)
        spans.append((pos + start, pos + end, digit))
        pos += len(wave)
        pos += gap()
    audio = torch.cat(pieces)
    speech_power = torch.cat(waves).pow(2).mean()
    noise = torch.randn(len(audio), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    audio = audio + noise * (speech_power * 10 ** (-snr_db / 10)).sqrt()
    return audio, torch.cat(labels), spans


def fsdd_split(folder, speakers, cfg):
    """Utterances of `speakers`: list of dicts {audio, labels, spans, speaker, files}."""
    recordings = sorted((Path(folder) / "recordings").glob("*.wav"))
    by_speaker = {}
    for path in recordings:
        digit, speaker, index = path.stem.split("_")
        if int(index) < cfg["per_digit"]:
            by_speaker.setdefault(speaker, []).append(path.name)
    utterances = []
    for speaker in speakers:
        if speaker not in by_speaker:
            raise DataError(f"no FSDD recordings of speaker {speaker!r} in {folder}/recordings; "
                            f"speakers there: {', '.join(sorted(by_speaker)) or 'none'}")
        rng = random.Random(f"{cfg['data_seed']}-{speaker}-audio")
        for files in plan_fsdd_utterances(by_speaker[speaker], speaker, cfg["data_seed"], cfg["min_digits"],
                                          cfg["max_digits"]):
            waves = []
            for name in files:
                wave, rate = read_audio(Path(folder) / "recordings" / name)
                if rate != FSDD_RATE:
                    raise DataError(f"{Path(folder) / 'recordings' / name} is {rate} Hz; FSDD is {FSDD_RATE} Hz")
                waves.append(wave)
            digits = [int(name.split("_")[0]) for name in files]
            audio, labels, spans = build_fsdd_utterance(
                waves, digits, rng, FSDD_RATE, (cfg["gap_min_s"], cfg["gap_max_s"]), cfg["snr_db"],
                hop=int(FSDD_RATE * cfg["hop_ms"] / 1000), threshold_db=cfg["silence_db"])
            utterances.append({"audio": audio, "rate": FSDD_RATE, "labels": labels, "spans": spans,
                               "speaker": speaker, "files": files})
    return utterances


# ---- CMU ARCTIC and TIMIT ---------------------------------------------------------------------------

# TIMIT 61 -> 39 (Lee & Hon, 1989): closures, pauses and h# become sil; q is deleted (its frames ignored).
TIMIT_FOLD = {"ao": "aa", "ax": "ah", "ax-h": "ah", "axr": "er", "hv": "hh", "ix": "ih", "el": "l", "em": "m",
              "en": "n", "nx": "n", "eng": "ng", "zh": "sh", "ux": "uw", "pcl": "sil", "tcl": "sil", "kcl": "sil",
              "bcl": "sil", "dcl": "sil", "gcl": "sil", "h#": "sil", "pau": "sil", "epi": "sil", "q": None}
TIMIT_39 = sorted({"aa", "ae", "ah", "aw", "ay", "b", "ch", "d", "dh", "dx", "eh", "er", "ey", "f", "g", "hh", "ih",
                   "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "sil", "t", "th", "uh",
                   "uw", "v", "w", "y", "z"})
TIMIT_61 = set(TIMIT_39) - {"sil"} | set(TIMIT_FOLD)
# The 24-speaker core test set (the standard TIMIT test set); the other TEST speakers are our validation set.
TIMIT_CORE_TEST = {"mdab0", "mwbt0", "felc0", "mtas1", "mwew0", "fpas0", "mjmp0", "mlnt0", "fpkt0", "mlll0",
                   "mtls0", "fjlm0", "mbpm0", "mklt0", "fnlp0", "mcmj0", "mjdh0", "fmgd0", "mgrt0", "mnjm0",
                   "fdhc0", "mjln0", "mpam0", "fmld0"}


def fold_timit(phone):
    """A TIMIT phone -> its 39-set phone, or None (q: deleted)."""
    phone = phone.lower()
    if phone not in TIMIT_61:
        raise ValueError(f"{phone!r} is not a TIMIT phone")
    return TIMIT_FOLD.get(phone, phone)


def read_phn(path):
    """TIMIT .phn: 'start_sample end_sample phone' lines -> [(start, end, phone)]."""
    segments = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                start, end, phone = line.split()
                segments.append((int(start), int(end), phone))
            except ValueError:
                raise DataError(f"{path}:{number}: expected 'start end phone', got {line!r}") from None
    return segments


def read_lab(path, rate):
    """festvox .lab: a header up to a '#' line, then 'end_time_s color phone' -> [(start, end, phone)] samples."""
    lines = Path(path).read_text().splitlines()
    if "#" not in [line.strip() for line in lines]:
        raise DataError(f"{path}: no '#' line ending the header; not a festvox .lab file")
    body = lines[[line.strip() for line in lines].index("#") + 1:]
    segments, start = [], 0
    for line in body:
        if line.strip():
            fields = line.split()
            if len(fields) < 3:
                raise DataError(f"{path}: expected 'end_time color phone', got {line!r}")
            end = int(round(float(fields[0]) * rate))
            segments.append((start, end, fields[2]))
            start = end
    return segments


def label_samples(n, segments, class_of):
    """Per-sample class ids from time-aligned segments; `class_of(phone)` -> id (IGNORE for deleted phones).
    Samples no segment covers are ignored."""
    labels = torch.full((n,), IGNORE, dtype=torch.long)
    for start, end, phone in segments:
        labels[max(start, 0): min(end, n)] = class_of(phone)
    return labels


def _expect(folder, layout):
    if not Path(folder).is_dir():
        raise DataError(f"{folder} does not exist. Expected layout: {layout}. Pass --data-dir or set "
                        f"${ENV_DATA_DIR} to the folder that holds it.")


ARCTIC_LAYOUT = "<root>/arctic/cmu_us_<speaker>_arctic/{wav/<utt>.wav, lab/<utt>.lab} (festvox.org/cmu_arctic)"


def arctic_split(root, speakers):
    """Utterances of CMU ARCTIC speakers: list of dicts {audio, segments, rate, speaker, files}."""
    utterances = []
    for speaker in speakers:
        folder = Path(root) / "arctic" / f"cmu_us_{speaker}_arctic"
        _expect(folder / "wav", ARCTIC_LAYOUT)
        _expect(folder / "lab", ARCTIC_LAYOUT)
        for wav in sorted((folder / "wav").glob("*.wav")):
            lab = folder / "lab" / f"{wav.stem}.lab"
            if not lab.exists():
                raise DataError(f"{wav} has no label file {lab} (layout: {ARCTIC_LAYOUT})")
            audio, rate = read_audio(wav)
            utterances.append({"audio": audio, "rate": rate, "segments": read_lab(lab, rate), "speaker": speaker,
                               "files": [wav.name]})
        if not utterances or utterances[-1]["speaker"] != speaker:
            raise DataError(f"no .wav files in {folder / 'wav'} (layout: {ARCTIC_LAYOUT})")
    return utterances


TIMIT_LAYOUT = "<root>/timit/{TRAIN,TEST}/DR<n>/<speaker>/<utt>.{WAV,PHN} (any case; LDC93S1)"


def _ci(folder, name):
    """The child of `folder` called `name` in any letter case, or None."""
    for child in Path(folder).iterdir():
        if child.name.lower() == name.lower():
            return child
    return None


def timit_split(root, split):
    """TIMIT utterances of one split: "train" = TRAIN, "valid" = TEST minus the core test speakers, "test" =
    the 24-speaker core test set. The SA sentences (read by every speaker) are left out, as is standard."""
    base = Path(root) / "timit"
    _expect(base, TIMIT_LAYOUT)
    part = _ci(base, "train" if split == "train" else "test")
    if part is None:
        raise DataError(f"no {'TRAIN' if split == 'train' else 'TEST'} folder in {base} (layout: {TIMIT_LAYOUT})")
    utterances = []
    for speaker_dir in sorted(p for region in sorted(part.iterdir()) if region.is_dir() for p in region.iterdir()):
        speaker = speaker_dir.name.lower()
        if split != "train" and (speaker in TIMIT_CORE_TEST) != (split == "test"):
            continue
        for phn in sorted(p for p in speaker_dir.iterdir() if p.suffix.lower() == ".phn"):
            if phn.stem.lower().startswith("sa"):
                continue
            wav = next((p for p in speaker_dir.iterdir() if p.name.lower() in
                        (f"{phn.stem.lower()}.wav", f"{phn.stem.lower()}.wav.wav")), None)
            if wav is None:
                raise DataError(f"{phn} has no audio file {phn.stem}.WAV beside it (layout: {TIMIT_LAYOUT})")
            audio, rate = read_audio(wav)
            utterances.append({"audio": audio, "rate": rate, "segments": read_phn(phn), "speaker": speaker,
                               "files": [wav.name]})
    if not utterances:
        raise DataError(f"no TIMIT utterances for split {split} under {part} (layout: {TIMIT_LAYOUT})")
    return utterances


# ---- features ---------------------------------------------------------------------------------------


class LogMel:
    """Log-mel filterbanks (optionally + deltas and delta-deltas): (samples,) -> (frames, dims). Frames are
    centred on sample i*hop, so there are samples // hop + 1 of them."""

    def __init__(self, rate, n_mels=40, win_ms=25, hop_ms=10, deltas=False):
        self.win, self.hop, self.deltas = int(rate * win_ms / 1000), int(rate * hop_ms / 1000), deltas
        n_fft = 1 << (self.win - 1).bit_length()
        with warnings.catch_warnings():  # empty high mel bands at low sample rates are harmless
            warnings.simplefilter("ignore")
            self.mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=n_fft, win_length=self.win,
                                                            hop_length=self.hop, n_mels=n_mels, center=True)

    def __call__(self, wave):
        feats = torch.log(self.mel(wave) + 1e-6)  # (n_mels, frames)
        if self.deltas:
            delta = torchaudio.functional.compute_deltas(feats)
            feats = torch.cat([feats, delta, torchaudio.functional.compute_deltas(delta)])
        return feats.T.contiguous()

    def frame_labels(self, sample_labels):
        """The label of each frame's centre sample."""
        n = len(sample_labels)
        centres = torch.arange(n // self.hop + 1) * self.hop
        return sample_labels[centres.clamp(max=n - 1)]


def normalizer(train_feats):
    """(mean, std) per feature dimension over all training frames (held-out data never contributes)."""
    frames = torch.cat(train_feats)
    return frames.mean(dim=0), frames.std(dim=0).clamp(min=1e-5)
