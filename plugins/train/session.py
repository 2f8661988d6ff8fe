"""From a recipe (or a run directory) to everything the loop needs, and the run directory's first
files (its recipe, plan and data description; the layout is :class:`~.rundir.RunDir`'s)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from thawkit import ConfigError, adapt_recipe, arch_options, validate_recipe

from .cache import CacheDecision, decide
from .checkpoint import write_json, write_text
from .data import Loaders
from .ddp import World, check_sync_bn, convert_sync_bn, process_device, shard
from .preflight import preflight
from .readers import ImageReader, Reader, Splits
from .rundir import RunDir, make_run_dir, read_data_info, read_json
from .schedules import build_scheduler
from .start import record_start, seed_rngs

if TYPE_CHECKING:
    from thawkit import Adapted, Recipe



@dataclass
class Session:
    """A prepared run: model, optimizer, schedule, data, device and run directory."""

    recipe: Recipe
    run_dir: Path
    adapted: Adapted
    optimizer: Any
    scheduler: Any
    interval: str
    loaders: Loaders
    prep: Any  # the data reader's preprocessing (images: data.Preprocess)
    device: torch.device
    amp_dtype: Any  # torch.dtype or None (no mixed precision)
    scaler: Any
    cache: list[CacheDecision] = field(default_factory=list)  # one per phase the run reaches
    warnings: list[str] = field(default_factory=list)  # about the data: logged when the run starts
    world: World = field(default_factory=World)  # this process among the run's (ddp.py)
    reader: Reader = field(default_factory=ImageReader)  # data.reader's (readers.py)

    @property
    def model(self):
        return self.adapted.model

    @property
    def files(self) -> RunDir:
        """The run directory's files."""
        return RunDir(self.run_dir)

    @property
    def epochs(self) -> int:
        return self.recipe.train.epochs

    def describe(self) -> str:
        r, a = self.recipe, self.adapted
        amp = f" ({str(self.amp_dtype).replace('torch.', '')} mixed precision)" if self.amp_dtype else ""
        w = self.world
        if w.distributed:
            amp += f", {w.size} processes (DDP, {w.backend}; data.batch_size is the global batch)"
        return (f"{r.backbone.spec} -> {len(self.loaders.classes)} classes, strategy {r.strategy.name} "
                f"({len(a.phases)} phase{'s' if len(a.phases) > 1 else ''}), {r.optimizer.name} + "
                f"{r.schedule.name}; {len(self.loaders.train.dataset)} train / "
                f"{len(self.loaders.val.dataset)} val {self.recipe.data.reader}, "
                f"{self.loaders.steps_per_epoch} steps "
                f"per epoch, {self.epochs} epochs on {self.device}{amp}; run directory {self.run_dir}")


# ------------------------------------------------------------------ device
def pick_device(name: str):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda, cuda:N "
                          "or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r} does not exist ({torch.cuda.device_count()} "
                          "CUDA devices)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is 'mps' but MPS is not available here; use auto or cpu")
    return device


def amp_dtype_for(device, amp: bool | None):
    """bfloat16 where the GPU supports it, else float16; None on CPU unless asked for."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@contextmanager
def torch_flags_restored() -> Iterator[None]:
    """Put torch's process-wide determinism flags back as they were when the run ends.

    A run sets them (``train.deterministic``) for itself; a caller that trains from its own
    process (a notebook, a test) gets its settings back. The global seeds stay as the run
    left them, as after any seeded run.
    """
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        set_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def set_deterministic_algorithms(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms``, called only when it changes something: each call
    imports torch's inductor (about 1.7 s of a cold start), which a run that keeps torch's
    default (``train.deterministic: false``) does not need."""
    if torch.are_deterministic_algorithms_enabled() == mode and (
            not mode or torch.is_deterministic_algorithms_warn_only_enabled() == warn_only):
        return
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)


def seed_everything(seed: int, deterministic: bool) -> None:
    if deterministic:
        # must be set before cuBLAS initialises; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # an op without a deterministic kernel (some CUDA backward passes) warns, naming itself,
    # rather than ending the run; on CPU the ops thawkit's loop uses are deterministic
    set_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    seed_rngs(seed)


# -------------------------------------------------------------- run dirs
def check_new_run_dir(run_dir: Path, command: str = "train") -> str | None:
    """A new run never overwrites another run's files. What a run left that ended before its
    first checkpoint (a bad recipe, a corrupt image) is no run to continue: it is removed, and
    the returned line says what it was (None: nothing was there). Call it holding the run lock."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"train.output: {str(run_dir)!r} exists and is not a directory")
    if not run_dir.is_dir():
        return None
    present = sorted(p.name for p in run_dir.iterdir()
                     if p.name != RunDir.LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    taken = [n for n in RunDir.TAKEN if n in present]
    if not taken:
        return None
    if not set(present) <= set(RunDir.EARLY):
        again = f"continue it with thawkit train --resume {run_dir}, or " if command == "train" else ""
        raise ConfigError(f"train.output: {str(run_dir)!r} already holds a run ({', '.join(taken)});"
                          f" {again}choose another --output")
    try:
        info = read_json(RunDir(run_dir).status)
        ended = f"{info.get('status', 'unknown')}: {str(info.get('message') or '')[:300]}".rstrip(": ")
    except ConfigError:
        ended = "it left no readable run.json"
    import shutil

    for name in present:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return (f"{run_dir} held a run that ended before its first checkpoint ({ended}); with nothing "
            f"to resume, this run replaces what it left ({', '.join(present)})")


def resolved_recipe(recipe: Recipe, *, num_classes: int, run_dir: Path,
                    arch: dict[str, Any] | None = None) -> Recipe:
    data = absolute_paths(recipe.model_dump(mode="json"), recipe.plugin_manager)
    data["head"]["num_classes"] = num_classes
    # options that the published weights implied, so predict/export rebuild the same network
    data["backbone"]["kwargs"] = {**(arch or {}), **data["backbone"]["kwargs"]}
    data["train"]["output"] = os.path.abspath(run_dir)
    return validate_recipe(data, where=str(RunDir(run_dir).recipe), pm=recipe.plugin_manager)


def absolute_paths(data: dict[str, Any], pm: Any = None) -> dict[str, Any]:
    """A recipe mapping whose ``.py`` plugin files, data folders and weights file are absolute,
    so the run's ``recipe.yaml`` finds them from any working directory (``--resume``); with the
    recipe's manager ``pm``, the backbone's name too where it is a directory and the source says
    names may be directories (its attribute ``local_names``, e.g. ``transformers:./my-bert``)."""
    from .preflight import is_file

    def absolute(path: Any, *, exists: bool = True) -> Any:
        if not isinstance(path, str) or (exists and not is_file(path)):
            return path
        return os.path.abspath(Path(path).expanduser())

    data["plugins"] = [absolute(r) if r.endswith(".py") else r for r in data.get("plugins") or []]
    for key in ("train", "val"):
        if isinstance(data.get("data"), dict) and data["data"].get(key):
            data["data"][key] = absolute(data["data"][key], exists=False)
    data["backbone"]["weights"] = absolute(data["backbone"].get("weights"))
    name = data["backbone"].get("name")
    if pm is not None and isinstance(name, str) and Path(name).expanduser().is_dir() and \
            getattr(pm.sources.get(data["backbone"]["source"]), "local_names", False):
        data["backbone"]["name"] = os.path.abspath(Path(name).expanduser())
    return data




# ----------------------------------------------------------------- build
def make_scheduler(recipe: Recipe, optimizer, steps_per_epoch: int):
    """The recipe's schedule over ``optimizer`` for ``train.epochs`` epochs, and its interval."""
    return build_scheduler(recipe.schedule, optimizer, pm=recipe.plugin_manager,
                           epochs=recipe.train.epochs, steps_per_epoch=steps_per_epoch)


def prepare(recipe: Recipe, *, run_dir: Path, resume: bool = False,
            world: World | None = None,
            check: Callable[[Adapted, Any], None] | None = None) -> Session:
    """Check the data, build model, optimizer and schedule, and (for a new run) write the run's
    recipe, plan and data description. Nothing is written before every check has passed (a
    caller's own ``check(adapted, preprocess)`` included); of several processes (``world``),
    rank 0 alone writes. Plugins come from ``recipe.plugin_manager``."""
    t = recipe.train
    seed_everything(t.seed, t.deterministic)
    kept = read_data_info(run_dir)["preprocess"] if resume else None
    checked = preflight(recipe, prep=kept)  # what thawkit plan checks too
    train, val, n, prep = checked.train, checked.val, checked.num_classes, checked.prep
    assert train is not None and val is not None and n is not None  # preflight with data
    reader = checked.reader
    world = world or World()
    device = process_device(world, pick_device(t.device))
    if t.sync_bn:
        check_sync_bn(world, device)
    seed_rngs(t.seed)  # the start is drawn from the seed alone, so it can be rebuilt
    adapted = adapt_recipe(recipe, num_classes=n)
    if t.sync_bn and world.distributed:
        convert_sync_bn(adapted.model)
    adapted.model.to(device)
    optimizer = adapted.optimizer(recipe.optimizer)
    loaders = reader.loaders(recipe, Splits(train, val, checked.classes), prep, seed=t.seed,
                             pin_memory=device.type == "cuda")
    if world.distributed:
        loaders = shard(loaders, world, batch_size=recipe.data.batch_size, seed=t.seed)
    scheduler, interval = make_scheduler(recipe, optimizer, loaders.steps_per_epoch)
    amp_dtype = amp_dtype_for(device, t.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    cache = decide(adapted, recipe, prep, n_train=len(train), n_val=len(val), run_dir=run_dir,
                   device=device, processes=world.size)
    if check is not None:
        check(adapted, prep)
    if not resume and world.is_main:
        make_run_dir(run_dir)  # thawkit train made it already; thawkit probe and API callers not

        recipe = resolved_recipe(recipe, num_classes=n, run_dir=run_dir,
                                 arch=arch_options(adapted.model))
        files = RunDir(run_dir)
        write_text(files.recipe, yaml.safe_dump(recipe.model_dump(mode="json"),
                                                         sort_keys=False))
        write_json(files.plan, {**adapted.plan.to_dict(),
                                            "cache": [d.to_dict() for d in cache]})
        write_json(files.data, {
            "classes": loaders.classes, "preprocess": prep.to_dict(),
            "train": reader.describe(train), "val": reader.describe(val)})

        record_start(run_dir, recipe, adapted)
    return Session(recipe, run_dir, adapted, optimizer, scheduler, interval, loaders, prep, device,
                   amp_dtype, scaler, cache, checked.warnings, world, reader)
