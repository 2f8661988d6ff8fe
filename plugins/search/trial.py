"""One trial of a search: a recipe trained through the training plugin's loop, on features shared
with the other trials of the search where its frozen prefix allows (:mod:`.shared`), into a trial folder that
holds what the trial trained and nothing of the frozen backbone.

A trial folder holds ``trial.json`` (its recipe, status, metrics per epoch, and a fingerprint
of the starting weights of every tensor it did not change), ``trained.safetensors`` (the tensors
that changed, or that the strategy added) and ``optimizer.pt`` (the optimizer's state, which
torch keeps only for parameters that trained). :func:`restore_trial` rebuilds the model from the
recipe's pretrained weights, checks the fingerprint and loads the trained tensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, ThawkitError, hookimpl

from .shared import Pair, SharedFeatures

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager

TRIAL_FILE = "trial.json"
TRAINED_FILE = "trained.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


def tensor_digests(state: dict[str, Any]) -> dict[str, str]:
    """A short SHA-256 of every tensor of a state dict (dtype, shape and bytes)."""
    import torch

    out = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        out[name] = h.hexdigest()[:16]
    return out


def fingerprint(digests: dict[str, str], names: list[str]) -> str:
    """One digest for the tensors ``names`` (sorted) from :func:`tensor_digests`."""
    h = hashlib.sha256()
    for n in sorted(names):
        h.update(f"{n}={digests[n]};".encode())
    return h.hexdigest()


def feature_key(session: Any, block: str, prefix: Any) -> str:
    """The key of the features below ``block`` computed by ``prefix`` in ``session``'s run:
    ``<block>-<digest>`` of everything that changes them (listed in :mod:`.shared`)."""
    import torch

    state = prefix.state_dict()
    recipe = session.recipe
    files = []
    for loader in (session.loaders.train, session.loaders.val):
        for path, label in loader.dataset.samples:
            st = os.stat(path)
            files.append([path, label, st.st_size, st.st_mtime_ns])
    what = {"block": block, "weights": fingerprint(tensor_digests(state), list(state)),
            "structure": repr(prefix), "data": recipe.data.model_dump(mode="json"),
            "prep": session.prep.to_dict(), "dtype": recipe.train.cache_dtype,
            "autocast": str(session.amp_dtype), "device": session.device.type,
            "torch": torch.__version__, "files": files}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', block)}-{digest[:20]}"


def _pipeline_class() -> type:
    """The class of :class:`thawkit.plugins.train.cache.CachedPipeline` that takes its features
    from a :class:`SharedFeatures` (a function: the training plugin imports torch)."""
    from thawkit.plugins.train.cache import CacheDecision, CachedPipeline

    class SharedCachePipeline(CachedPipeline):
        """The training plugin's cached pipeline, with its features taken from (or added to) the
        search's :class:`SharedFeatures` instead of computed per run. A phase whose frozen prefix
        is exact uses them whatever its length: across trials, the features pay at once."""

        def __init__(self, session: Any, shared: SharedFeatures):
            super().__init__(session, log=lambda line: None)
            self.shared = shared

        def status(self, phase: int) -> str | None:
            return None

        def phase_changed(self, adapted: Any) -> None:
            from thawkit.plugins.split import frozen_prefix

            self.close()
            s = self.session
            if s.prep.augment or s.recipe.train.cache == "off":
                return
            frozen = frozen_prefix(adapted, adapted.phase)
            if frozen:
                self.build(CacheDecision(adapted.phase, 0, s.epochs, True, frozen.reason,
                                         frozen.block, split=frozen.split))

        def build(self, d: Any) -> None:
            key = feature_key(self.session, d.block, d.split.prefix)
            self.train_cache, self.val_cache = self.shared.get(key, lambda: self._compute(d))
            self.current = d

        def _compute(self, d: Any) -> Pair:
            super().build(d)
            assert self.train_cache is not None and self.val_cache is not None
            return self.train_cache, self.val_cache

        def close(self) -> None:  # the features belong to the search, not to this run
            self.train_cache = self.val_cache = self.current = None

    return SharedCachePipeline


@dataclass
class TrialOutcome:
    """How a trial ended: ``complete``, ``pruned`` or ``failed`` (with ``reason``)."""

    state: str
    holdout_top1: float | None
    seconds: float
    trainable_params: int
    epochs: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    features: dict[str, float] = field(default_factory=dict)  # built, reused, seconds: this trial


class Reporter:
    """Hands a trial's per-epoch hold-out loss to the search engine and stops the run when the
    engine prunes it: a plugin object for the training plugin's events, registered for one run
    (``train(..., callbacks=[reporter])``). It also records what the trial keeps: the digests of
    the starting weights, every epoch's metrics and, when the run ends however it ends, the
    tensors that changed and the optimizer's state.

    ``report(epoch, holdout_loss) -> bool``: True when the trial should stop (pruned).
    """

    def __init__(self, report: Callable[[int, float], bool]):
        self.report = report
        self.pruned_at: int | None = None
        self.start: dict[str, str] = {}
        self.epochs: list[dict[str, Any]] = []
        self.changed: dict[str, Any] = {}
        self.optimizer_state: dict[str, Any] | None = None
        self.trainable = 0
        self.interrupted = False
        self.outputs: Any = None

    @hookimpl
    def thawkit_run_start(self, run: Any) -> None:
        self.start = tensor_digests(run.model.state_dict())
        self.trainable = sum(p.numel() for n, p in run.model.named_parameters()
                             if n in run.adapted.ever_trainable)

    @hookimpl
    def thawkit_epoch_end(self, run: Any, epoch: int, metrics: dict[str, Any]) -> None:
        self.epochs.append({"epoch": epoch, "holdout_top1": metrics["val_top1"],
                            "holdout_loss": metrics["val_loss"], "train_loss": metrics["train_loss"]})
        self.outputs = run.val_outputs
        if self.report(epoch, float(metrics["val_loss"])):
            self.pruned_at = epoch
            run.request_stop("pruned by the search")

    @hookimpl
    def thawkit_run_end(self, run: Any, status: str) -> None:
        self._keep(run)

    @hookimpl
    def thawkit_run_failed(self, run: Any, error: BaseException) -> None:
        self._keep(run)

    def _keep(self, run: Any) -> None:
        self.interrupted = run.interrupt_requested  # a Ctrl-C in a run's last step ends it "finished"
        state = run.model.state_dict()
        now = tensor_digests(state)
        self.changed = {n: state[n].detach().cpu() for n in state if self.start.get(n) != now[n]}
        self.optimizer_state = run.optimizer.state_dict()


def cacheable(recipe: Any) -> bool:
    """Whether some phase of the recipe's run freezes a prefix whose features can be shared."""
    from thawkit import adapt_recipe
    from thawkit.plugins.split import frozen_prefix

    if recipe.data.augment or recipe.train.cache == "off":
        return False
    adapted = adapt_recipe(recipe, meta=True)
    return any(frozen_prefix(adapted, i) for i in range(len(adapted.phases)))


def run_trial(recipe_data: dict[str, Any], trial_dir: Path, *, shared: SharedFeatures,
              reporter: Reporter, pm: ThawkitPluginManager, scratch: Path,
              keep_tensors: bool = True) -> TrialOutcome:
    """Train ``recipe_data`` (its ``data.val`` is the search's hold-out) and keep in ``trial_dir``
    what it trained (``keep_tensors=False``: only ``trial.json``, as a confirmation run keeps).
    The run's own directory is a scratch folder, removed at the end. A recipe whose frozen prefix
    can be shared trains on the search's features."""
    from thawkit import validate_recipe

    started = time.perf_counter()
    mark = shared.counts()
    trial_dir.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    recipe = validate_recipe({**recipe_data, "train": {**recipe_data["train"], "output": str(run_dir)}},
                             where=str(trial_dir / TRIAL_FILE), pm=pm)
    try:
        try:
            outcome = _train(recipe, run_dir, shared if cacheable(recipe) else None, reporter)
            if outcome.status == "interrupted" or reporter.interrupted:  # Ctrl-C: the search stops
                raise KeyboardInterrupt
            status = "pruned" if reporter.pruned_at is not None else \
                "complete" if outcome.status == "finished" else "failed"
            reason = "" if status != "failed" else outcome.message
        except ThawkitError as exc:  # a diverging run (DivergedError), a recipe it cannot run
            status, reason = "failed", str(exc)
        changed = reporter.changed
        if keep_tensors and changed and all(bool(t.float().isfinite().all()) for t in changed.values()):
            save_trained(trial_dir, changed, reporter.optimizer_state)
        seconds = time.perf_counter() - started
        epochs = reporter.epochs
        top1 = epochs[-1]["holdout_top1"] if epochs and status != "failed" else None
        start = reporter.start
        write_trial(trial_dir, recipe_data, status=status, reason=reason, epochs=epochs,
                    seconds=seconds, trainable=reporter.trainable,
                    fingerprint=fingerprint(start, [n for n in start if n not in changed]),
                    unchanged=len(start) - len(changed),
                    holdout=per_image(reporter.outputs) if status == "complete" else None)
        return TrialOutcome(status, top1, seconds, reporter.trainable, epochs, reason,
                            shared.since(mark))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train(recipe: Any, run_dir: Path, shared: SharedFeatures | None, reporter: Reporter) -> Any:
    """The training plugin's loop as a scratch run (no checkpoints, weights or plot: the trial
    keeps what it needs through ``reporter``), on the search's shared features when given."""
    from thawkit.plugins.train.loop import Trainer
    from thawkit.plugins.train.session import prepare, torch_flags_restored

    with torch_flags_restored():
        session = prepare(recipe, run_dir=run_dir)
        pipeline = _pipeline_class()(session, shared) if shared is not None else None
        trainer = Trainer(session, log=lambda line: None, progress_bar=False, pipeline=pipeline,
                          callbacks=[reporter], scratch=True)
        return trainer.fit()


def per_image(outputs: Any) -> dict[str, list[Any]] | None:
    """A trial's last hold-out evaluation, image by image (``losses`` rounded to 6 digits,
    ``correct``), in the hold-out folder's order: what the pick compares two trials on."""
    if outputs is None:
        return None
    return {"losses": [round(float(v), 6) for v in outputs.losses.tolist()],
            "correct": [bool(v) for v in outputs.correct.tolist()]}


def read_per_image(trial_dir: Path) -> dict[str, list[Any]] | None:
    path = trial_dir / TRIAL_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("holdout")


def save_trained(trial_dir: Path, tensors: dict[str, Any], optimizer_state: dict[str, Any] | None) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(trial_dir / TRAINED_FILE))
    if optimizer_state is not None:
        torch.save(optimizer_state, trial_dir / OPTIMIZER_FILE)


def write_trial(trial_dir: Path, recipe_data: dict[str, Any], **fields: Any) -> None:
    (trial_dir / TRIAL_FILE).write_text(json.dumps({"recipe": recipe_data, **fields}, indent=1))


def restore_trial(trial_dir: Path, pm: ThawkitPluginManager, num_classes: int) -> Any:
    """The model a trial trained: the recipe's pretrained weights, checked against the trial's
    fingerprint, with the trained tensors loaded."""
    from safetensors.torch import load_file
    from thawkit import adapt_recipe, validate_recipe

    from thawkit.plugins.train.session import seed_everything, torch_flags_restored

    info = json.loads((trial_dir / TRIAL_FILE).read_text())
    recipe = validate_recipe(info["recipe"], where=str(trial_dir / TRIAL_FILE), pm=pm)
    with torch_flags_restored():  # built as the trial's run built it: a random head, same seed
        seed_everything(recipe.train.seed, recipe.train.deterministic)
        model = adapt_recipe(recipe, num_classes=num_classes).model
    trained = load_file(str(trial_dir / TRAINED_FILE))
    state = model.state_dict()
    digests = tensor_digests({k: v for k, v in state.items() if k not in trained})
    if fingerprint(digests, list(digests)) != info["fingerprint"]:
        raise ConfigError(f"{trial_dir}: the recipe's starting weights differ from those the trial "
                          "started from (fingerprint mismatch); the backbone's weights changed")
    missing = [k for k in trained if k not in state]
    if missing:
        raise ConfigError(f"{trial_dir / TRAINED_FILE}: tensors the model does not have: "
                          f"{', '.join(missing[:3])}")
    model.load_state_dict({**state, **trained})
    return model


def evaluate_folder(model: Any, recipe_data: dict[str, Any], folder: str,
                    pm: ThawkitPluginManager) -> float:
    """Top-1 of ``model`` on an ImageFolder with the recipe's evaluation preprocessing."""
    import torch
    from thawkit import data_config, validate_recipe
    from thawkit.plugins.train.data import FolderDataset, Preprocess, scan_folder
    from torch.utils.data import DataLoader

    from thawkit.plugins.train.session import pick_device

    recipe = validate_recipe(recipe_data, where="search", pm=pm)
    device = pick_device(recipe.train.device)
    prep = Preprocess.resolve(data_config(model, pm=pm), recipe.data)
    samples = scan_folder(folder, "data.val", check_headers=False).samples
    loader = DataLoader(FolderDataset(samples, prep.eval_transform()), batch_size=recipe.data.batch_size)
    model.to(device).eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(samples)
