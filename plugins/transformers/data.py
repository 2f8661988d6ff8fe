"""Text and audio classification data for transformers models, checked where it is read.

* :func:`read_text_table`: a CSV (header row) or JSON Lines file with a text and a label column;
* :class:`TextClassificationData`: those rows tokenized with the model's tokenizer (truncated to
  ``max_length``, not padded: :meth:`~TextClassificationData.collate` pads each batch to its
  longest text);
* :func:`scan_audio_folder` and :class:`AudioClassificationData`: a folder per class of WAV/FLAC
  files, read with ``soundfile``, mixed down to mono, resampled to the feature extractor's
  ``sampling_rate`` (``scipy.signal.resample_poly``; no torchaudio) and turned into its input.

Both datasets give the ``Trainer``'s dicts (the model's inputs plus ``labels``). Bad input is a
:class:`thawkit.ConfigError` naming the file (and the line or column): a missing file, an empty
file, a missing column, a malformed line, a label outside ``classes``, an unreadable audio file.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thawkit import ConfigError

AUDIO_SUFFIXES = (".wav", ".flac")


def read_text_table(path: str | Path, text: str = "text",
                    label: str = "label") -> tuple[list[str], list[str]]:
    """``(texts, labels)`` from a ``.csv`` (header row) or ``.jsonl``/``.json`` (one object per line)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"text data {str(file)!r} {'is not a file' if file.exists() else 'does not exist'}")
    rows: list[dict[str, Any]] = []
    try:
        with file.open(encoding="utf-8", newline="") as f:
            if file.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                rows = list(reader)
                columns = list(reader.fieldnames or [])
            else:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{file}: line {number} is not JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise ConfigError(f"{file}: line {number} is not a JSON object")
                    rows.append(row)
                columns = list(dict.fromkeys(k for row in rows for k in row))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    if not rows:
        raise ConfigError(f"{file}: no rows (an empty file); expected columns {text!r} and {label!r}")
    for column in (text, label):
        if column not in columns:
            raise ConfigError(f"{file}: no column {column!r}; its columns are "
                              f"{', '.join(map(repr, columns))}")
        missing = next((i for i, row in enumerate(rows, 1) if row.get(column) in (None, "")), None)
        if missing is not None:
            raise ConfigError(f"{file}: row {missing} has no {column!r}")
    return [str(row[text]) for row in rows], [str(row[label]) for row in rows]


def _label_ids(labels: list[str], classes: list[str] | None, where: str) -> tuple[list[int], list[str]]:
    classes = sorted(set(labels)) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError(f"{where}: labels {', '.join(map(repr, unknown[:5]))} are not among the classes "
                          f"{', '.join(map(repr, classes))} (of the training data)")
    return [index[x] for x in labels], classes


class TextClassificationData:
    """Rows of a text table, tokenized; ``classes`` from the training data (sorted label names)."""

    def __init__(self, path: str | Path, tokenizer: Any, *, text: str = "text", label: str = "label",
                 max_length: int = 128, classes: list[str] | None = None) -> None:
        texts, labels = read_text_table(path, text, label)
        self.labels, self.classes = _label_ids(labels, classes, str(path))
        self.tokenizer = tokenizer
        self.encoded = tokenizer(texts, truncation=True, max_length=max_length)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.encoded.items()}, "labels": self.labels[i]}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a batch to its longest text (the tokenizer's pad token), as tensors."""
        return self.tokenizer.pad(items, padding="longest", return_tensors="pt")


@dataclass
class AudioFolder:
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]


def scan_audio_folder(path: str | Path, classes: list[str] | None = None) -> AudioFolder:
    """Class sub-directories of WAV/FLAC files; every file's header is read (an unreadable one is
    an error naming it)."""
    import soundfile

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"audio data {str(root)!r} is not a directory of class folders")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise ConfigError(f"audio data {str(root)!r} has no class sub-directories; expected "
                          f"{root}/<class name>/<.wav or .flac files>")
    names = found if classes is None else list(classes)
    _, names = _label_ids(found, names, str(root))
    samples = []
    for index, name in enumerate(names):
        for file in sorted((root / name).glob("*")) if (root / name).is_dir() else []:
            if file.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            try:
                soundfile.info(str(file))
            except Exception as exc:  # noqa: BLE001 - libsndfile's errors: one message naming the file
                why = str(exc).strip() or type(exc).__name__
                raise ConfigError(f"{file}: not a readable audio file ({why})") from None
            samples.append((str(file), index))
    if not samples:
        raise ConfigError(f"audio data {str(root)!r} has no .wav or .flac files in its class folders")
    return AudioFolder(root, names, samples)


def load_audio(file: str, rate: int) -> Any:
    """A mono float32 waveform at ``rate`` Hz (numpy)."""
    from math import gcd

    import numpy as np
    import soundfile

    data, native = soundfile.read(file, dtype="float32", always_2d=True)
    wave = data.mean(axis=1)
    if native != rate:
        from scipy.signal import resample_poly

        g = gcd(int(native), int(rate))
        wave = resample_poly(wave, rate // g, native // g).astype(np.float32)
    return wave


class AudioClassificationData:
    """A folder per class of audio files, as the feature extractor's input plus ``labels``."""

    def __init__(self, path: str | Path, feature_extractor: Any, *, classes: list[str] | None = None) -> None:
        folder = scan_audio_folder(path, classes)
        self.samples, self.classes = folder.samples, folder.classes
        self.extractor = feature_extractor
        self.rate = int(feature_extractor.sampling_rate)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        file, label = self.samples[i]
        features = self.extractor(load_audio(file, self.rate), sampling_rate=self.rate)
        return {**{k: v[0] for k, v in features.items()}, "labels": label}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a batch to its longest clip (the feature extractor's padding), as tensors."""
        import torch

        labels = torch.tensor([item.pop("labels") for item in items])
        batch = self.extractor.pad(items, padding="longest", return_tensors="pt")
        return {**batch, "labels": labels}
