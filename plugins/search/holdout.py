"""The hold-out the search picks on: a stratified, seeded part of ``data.train``, written as two
ImageFolders of links (``DIR/data/train`` and ``DIR/data/holdout``), never ``data.val``.

Fold ``j`` (``DIR/data/fold-j/``) holds out the next images of each class in the same shuffled
order: the folds' hold-outs are disjoint as long as a class has images enough (then they wrap
around). The search's finalists are confirmed on folds 1, 2, ... (see ``engine.confirm``)."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from thawkit import ConfigError

SPLIT_FILE = "split.json"


def carve(train_folder: str, out: Path, fraction: float, seed: int, fold: int = 0) -> tuple[Path, Path, int]:
    """``(train, holdout, holdout size)``: every class keeps at least one training image and gives
    at least one to the hold-out. A folder made by an earlier run of the same search is reused.
    ``fold`` j > 0: the j-th next hold-out of the same shuffled order, of the same size."""
    from thawkit.plugins.train.data import scan_folder

    if not 0 < fraction < 1:
        raise ConfigError(f"--holdout: a fraction of data.train between 0 and 1, got {fraction}")
    data = scan_folder(train_folder, "data.train", check_headers=False)
    key = {"train": str(Path(train_folder).resolve()), "fraction": fraction, "seed": seed,
           "samples": len(data.samples), "fold": fold}
    train_dir, holdout_dir = out / "train", out / "holdout"
    saved = out / SPLIT_FILE
    if saved.is_file():
        info = json.loads(saved.read_text())
        if info.get("key") == key:
            return train_dir, holdout_dir, int(info["holdout"])
    by_class: dict[int, list[str]] = {}
    for path, label in data.samples:
        by_class.setdefault(label, []).append(path)
    small = [data.classes[c] for c, files in by_class.items() if len(files) < 2]
    if small:
        raise ConfigError(f"data.train: class(es) {', '.join(small)} have fewer than 2 images; the "
                          "search needs one for training and one for its hold-out in every class")
    rng = random.Random(seed)
    shutil.rmtree(out, ignore_errors=True)
    n_holdout = 0
    for label, files in sorted(by_class.items()):
        files = sorted(files)
        rng.shuffle(files)
        k = min(max(1, round(fraction * len(files))), len(files) - 1)
        n_holdout += k
        held = {(fold * k + i) % len(files) for i in range(k)}
        parts = ([f for i, f in enumerate(files) if i in held],
                 [f for i, f in enumerate(files) if i not in held])
        for folder, part in zip((holdout_dir, train_dir), parts):
            target = folder / data.classes[label]
            target.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(part):
                link = target / f"{i:06d}-{Path(f).name}"
                try:
                    os.symlink(Path(f).resolve(), link)
                except OSError:  # no symlinks here (some Windows setups): copy the file
                    shutil.copyfile(f, link)
    saved.write_text(json.dumps({"key": key, "holdout": n_holdout}))
    return train_dir, holdout_dir, n_holdout
