"""Image data for training: ImageFolder checks, transforms and a resumable, seeded order.

Data order and augmentation are pure functions of ``(train.seed, epoch, index)``:
the sampler draws each epoch's permutation from its own generator, and each
training sample is transformed under a torch RNG seeded from the triple. A run
can therefore stop anywhere (end of an epoch, or mid-epoch on Ctrl-C) and
continue with exactly the batches an uninterrupted run would have seen, with
any ``num_workers``.

Corrupt images stop the run with an error naming the file: files whose header
cannot be read are found before training starts; a file that fails to decode
later stops the run when it is first loaded, and the last good checkpoint is
kept (fix or remove the file and ``--resume``). Silently skipping would change
the data and batch composition behind the user's back.
"""
from __future__ import annotations

import math
import signal
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, ThawkitError

if TYPE_CHECKING:
    import torch
    from thawkit import DataConfig
    from .sections import DataSection

# torch, torchvision and PIL are imported inside the functions that use them, so that the
# checks and `Preprocess` import torch-free (run_model, inference).

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ThawkitError):
    """An image that cannot be read, or a data directory that cannot be used."""


# ------------------------------------------------------------------ folders
@dataclass
class ImageFolderData:
    """Class names (sorted directory names) and ``(path, class_index)`` samples of one folder."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)  # files that are not images, broken links

    def __len__(self) -> int:
        return len(self.samples)


def scan_folder(path: str | None, field: str, *, check_headers: bool = True) -> ImageFolderData:
    """Read an ImageFolder directory (``root/<class>/<image>``) with errors naming ``field``."""
    if not path:
        raise ConfigError(f"{field}: required; set it to an ImageFolder directory "
                          f"(one sub-directory per class), e.g. --set {field}=data/train")
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"{field}: directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise ConfigError(f"{field}: {str(root)!r} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"{field}: {str(root)!r} has no class sub-directories; expected "
                          f"{root}/<class name>/<image files>")
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    skipped = [str(p) for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")]
    for idx, name in enumerate(classes):
        files = []
        for p in sorted((root / name).rglob("*")):
            if p.name.startswith(".") or p.is_dir():
                continue
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
            else:  # another suffix, a broken symlink, a socket or FIFO
                skipped.append(str(p))
        if not files:
            empty.append(name)
        samples += [(str(p), idx) for p in files]
    if empty:
        raise ConfigError(f"{field}: class director{'y' if len(empty) == 1 else 'ies'} without "
                          f"images in {str(root)!r}: {', '.join(empty)} (image suffixes: "
                          f"{', '.join(IMAGE_SUFFIXES)}); add images or remove the directory")
    if check_headers:
        for file, _ in samples:
            check_header(file)
    return ImageFolderData(root, classes, samples, sorted(skipped))


def data_warnings(train: ImageFolderData, val: ImageFolderData) -> list[str]:
    """What is legal but probably a mistake: skipped files, one class, val the same as train."""
    notes = []
    for split, data in (("data.train", train), ("data.val", val)):
        if data.skipped:
            n = len(data.skipped)
            notes.append(f"{split}: {n} file{'s' if n > 1 else ''} in {str(data.root)!r} "
                         f"{'are' if n > 1 else 'is'} not used (not an image file by its suffix, or "
                         f"a broken link): {', '.join(data.skipped[:3])}{', ...' if n > 3 else ''}"
                         f" (image suffixes: {', '.join(IMAGE_SUFFIXES)})")
    if len(train.classes) == 1:
        notes.append(f"data.train: {str(train.root)!r} has a single class ({train.classes[0]!r}); "
                     "the classifier has nothing to tell apart and top-1 is always 100%")
    if train.root.resolve() == val.root.resolve():
        notes.append(f"data.val is the same directory as data.train ({str(train.root)!r}): "
                     "validation accuracy measures memorisation, not generalisation")
    return notes


def check_header(file: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.size  # noqa: B018 - reading the header is the check (and the size limit)
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {file!r} is too large to decode safely ({exc}); shrink or remove "
                        "the file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {file!r} cannot be read ({type(exc).__name__}: {exc}); fix or "
                        "remove the file") from None


def check_classes(train: ImageFolderData, val: ImageFolderData, num_classes: int | None) -> int:
    """The number of classes; errors when val's classes differ or head.num_classes disagrees."""
    if val.classes != train.classes:
        missing = [c for c in train.classes if c not in val.classes]
        extra = [c for c in val.classes if c not in train.classes]
        parts = []
        if missing:
            parts.append(f"missing in val: {', '.join(missing)}")
        if extra:
            parts.append(f"not in train: {', '.join(extra)}")
        raise ConfigError(f"data.val: the classes of {str(val.root)!r} differ from those of "
                          f"data.train {str(train.root)!r} ({'; '.join(parts)}); both need the same "
                          "class sub-directories")
    n = len(train.classes)
    if num_classes is not None and num_classes != n:
        raise ConfigError(f"head.num_classes is {num_classes} but data.train {str(train.root)!r} has "
                          f"{n} classes ({', '.join(train.classes[:10])}"
                          f"{', ...' if n > 10 else ''}); set head.num_classes: {n} or leave it out "
                          "to infer it")
    return n


def load_image(file: str):
    from PIL import Image

    try:
        with Image.open(file) as img:
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure: name the file, never a bare PIL trace
        raise DataError(f"image {file!r} cannot be decoded ({type(exc).__name__}: {exc}); fix or "
                        "remove the file, then continue with --resume") from None


# --------------------------------------------------------------- transforms
@dataclass
class Preprocess:
    """Resolved input pipeline: from the backbone's data config, overridden by the recipe."""

    image_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    augment: bool

    @classmethod
    def resolve(cls, dc: DataConfig, section: DataSection) -> Preprocess:
        size = section.image_size or dc.image_size
        resize = dc.eval_resize if section.image_size is None else math.floor(size / dc.crop_pct)
        return cls(int(size), max(int(size), resize), tuple(section.mean or dc.mean),
                   tuple(section.std or dc.std), dc.interpolation, section.augment)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(int(d["image_size"]), int(d["resize"]), tuple(d["mean"]), tuple(d["std"]),
                   str(d["interpolation"]), bool(d["augment"]))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def _mode(self):
        from torchvision.transforms import InterpolationMode

        try:
            return InterpolationMode(self.interpolation)
        except ValueError:
            return InterpolationMode.BILINEAR

    def train_transform(self):
        """Random resized crop and horizontal flip (with ``augment``), else the eval transform."""
        from torchvision import transforms as T

        if not self.augment:
            return self.eval_transform()
        return T.Compose([T.RandomResizedCrop(self.image_size, interpolation=self._mode()),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def eval_transform(self):
        """Resize the shorter side, then a centre crop of ``image_size``."""
        from torchvision import transforms as T

        return T.Compose([T.Resize(self.resize, interpolation=self._mode()),
                          T.CenterCrop(self.image_size), T.ToTensor(),
                          T.Normalize(self.mean, self.std)])


# -------------------------------------------------------- datasets, order
def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across processes and platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x >> 1


class FolderDataset:
    """Map-style dataset over ``(path, label)`` samples.

    Training keys are ``(epoch, index)``: the transform runs under a torch RNG seeded
    from ``(seed, epoch, index)``, so augmentation does not depend on what ran before.
    Evaluation keys are plain indices. With ``cache`` (only for deterministic
    transforms) each transformed image is kept after its first load; in a worker
    process the cache lives as long as the worker, so it pays off with ``num_workers: 0``.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform, seed: int | None = None,
                 cache: bool = False):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.cache: dict[int, Any] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        import torch

        epoch, index = key if isinstance(key, tuple) else (None, key)
        file, label = self.samples[index]
        if self.cache is not None:
            if index not in self.cache:
                self.cache[index] = self.transform(load_image(file))
            return self.cache[index], label
        if self.seed is None or epoch is None:
            return self.transform(load_image(file)), label
        image = load_image(file)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.transform(image), label


#: Transformed images are cached in memory when a split's tensors fit in this many bytes.
CACHE_BYTES = 512 * 2**20


def fits_cache(n: int, image_size: int) -> bool:
    return n * 3 * image_size * image_size * 4 <= CACHE_BYTES


class EpochBatches:
    """Batch sampler: epoch ``e``'s shuffled order, optionally skipping batches already done.

    A final batch of one sample is dropped (BatchNorm cannot train on it).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.skip = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        steps = math.ceil(self.n / self.batch_size)
        return steps - 1 if self.n > 1 and self.n % self.batch_size == 1 else steps

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5A17))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        for step in range(self.skip, self.steps_per_epoch):
            chunk = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield [(self.epoch, i) for i in chunk]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.skip


@dataclass
class Loaders:
    """Train and validation loaders plus what the loop needs to know about them."""

    train: Any
    val: Any
    batches: EpochBatches
    classes: list[str]

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch


def _worker_init(worker_id: int) -> None:
    # Ctrl-C is the main process's business: it finishes the step and saves a checkpoint
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loaders(train: ImageFolderData, val: ImageFolderData, prep: Preprocess, *,
                  batch_size: int, num_workers: int, seed: int, pin_memory: bool = False) -> Loaders:
    import torch
    from torch.utils.data import DataLoader

    batches = EpochBatches(len(train), batch_size, seed)
    # private generators: creating an iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would see different dropout masks than an uninterrupted one
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": False,
              "worker_init_fn": _worker_init if num_workers else None}
    # deterministic transforms (evaluation; training without augmentation) are cached in memory
    # when the split is small: decoding and resizing would otherwise dominate small runs
    # (in this process only: worker processes are started afresh every epoch)
    cache_train = not num_workers and not prep.augment and fits_cache(len(train), prep.image_size)
    train_set = FolderDataset(train.samples, prep.train_transform(), seed, cache=cache_train)
    val_set = FolderDataset(val.samples, prep.eval_transform(),
                            cache=not num_workers and fits_cache(len(val), prep.image_size))
    train_loader = DataLoader(train_set,
                              batch_sampler=batches, generator=torch.Generator().manual_seed(seed),
                              **common)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False,
                            generator=torch.Generator().manual_seed(seed), **common)
    return Loaders(train_loader, val_loader, batches, train.classes)


def preprocess_images(files: Sequence[str], prep: Preprocess) -> torch.Tensor:
    """A batch tensor of ``files`` through the evaluation transform (for predict)."""
    import torch

    transform = prep.eval_transform()
    for file in files:
        if not Path(file).is_file():
            raise ConfigError(f"image {file!r} does not exist")
    return torch.stack([transform(load_image(f)) for f in files])
