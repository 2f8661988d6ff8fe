"""The training loop: phases, schedules, metrics, checkpoints, stop/resume, Ctrl-C and NaN stops.

Where batches come from and how logits are computed is the :class:`Pipeline`'s
business, not the loop's: the cache of frozen-prefix features
(:class:`~thawkit.plugins.train.cache.CachedPipeline`, the default) is another
pipeline (``train_batches`` yielding cached features, ``forward`` running only
the rest, ``phase_changed`` rebuilding or dropping the cache when a gradual phase
thaws part of the prefix), with the loop unchanged.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from thawkit import ThawkitError

from .cache import CachedPipeline
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_jsonl,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    write_json,
)
from . import extras  # (extras.available is looked up at each call: tests stand in for it)
from .data import DataError
from .ddp import DDPPipeline, restore_message
from .pipeline import Pipeline
from .plot import plot_run
from .rundir import RunDir, RunDirError, describe_os_error
from .schedules import end_epoch
from .start import CHANGED_ONLY, changed_only, changing_keys, complete_state, read_start
from .wise import sweep, sweep_line
from .events import Run, ValOutputs, run_failed, run_plugins

if TYPE_CHECKING:
    from .session import Session

# tqdm (the `train` extra) is imported when a progress bar is shown.


class DivergedError(ThawkitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

@dataclass
class Progress:
    """What the loop has done so far; all of it goes into the checkpoint."""

    epoch: int = 0           # epochs completed
    step: int = 0            # optimizer steps done within ``epoch``
    loss_sum: float = 0.0    # running sums of the current epoch
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    lrs: dict[str, float] = field(default_factory=dict)
    best_top1: float = -1.0
    best_epoch: int = -1


@dataclass
class Outcome:
    status: str              # finished | stopped | interrupted
    epochs_done: int
    message: str = ""


class Trainer:
    """Runs a prepared :class:`Session`, from scratch or from its run directory's checkpoint.

    ``stop_after``: end (as if interrupted) once that many epochs of the run are done.
    ``on_step(trainer)``: called after every optimizer step (tests use it to interrupt).
    ``callbacks``: plugin objects registered for this run only (:func:`~.events.run_plugins`).
    ``scratch``: a run nobody resumes or reads back, such as a search's trial: it writes no
    checkpoint, best or final weights and no plot (events, metrics and divergence checks as usual).
    Its events reach plugins as hooks (:mod:`~.hookspecs`), with :attr:`run` as ``run``.
    """

    def __init__(self, session: Session, *, stop_after: int | None = None,
                 log: Callable[[str], None] = print, progress_bar: bool | None = None,
                 on_step: Callable[[Trainer], None] | None = None, pipeline: Pipeline | None = None,
                 callbacks: Sequence[object] = (), scratch: bool = False):
        self.s = session
        #: a run nobody resumes or reads back (a search's trial): no checkpoint, best or final
        #: weights and no plot; the events, metrics.jsonl and the divergence checks are the same
        self.scratch = scratch
        self.run = Run(self)
        self.callbacks = list(callbacks)
        self.hook = session.recipe.plugin_manager.hook
        self.stop_after = stop_after
        self.log = log
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self._plot_skipped = False
        self.on_step = on_step
        self.world = session.world
        if pipeline is None:
            pipeline = (DDPPipeline if self.world.distributed else CachedPipeline)(session, log=log)
        self.pipeline = pipeline
        self.state = Progress()
        self.wise: list[dict[str, Any]] = []  # the WiSE-FT sweep (train.wise_alphas), when done
        self._saved: tuple[int, int] | None = None  # (epoch, step) of the last checkpoint written
        self._changes: bool | None = None  # files hold only what changed (see _changed_only)
        # a buffer that holds inf by design (a mask) is no sign of divergence
        self._nonfinite_from_start = set(self._nonfinite())
        self.interrupt_requested = False
        self._all_stop = False  # under DDP: a Ctrl-C some process had when the step began
        label_smoothing = session.recipe.train.label_smoothing
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.num_classes = len(session.loaders.classes)
        #: per-sample results of the latest :meth:`evaluate` (this process's samples)
        self.val_outputs: ValOutputs | None = None

    # ------------------------------------------------------------ state
    def checkpoint_state(self) -> dict[str, Any]:
        s = self.s
        model, partial = self._changed_state(s.adapted.phase)  # grows as blocks thaw
        return {"epoch": self.state.epoch, "step": self.state.step,
                "progress": {k: v for k, v in vars(self.state).items() if k not in ("epoch", "step")},
                "model": model, "model_changed_only": partial,
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(), "scaler": s.scaler.state_dict(),
                "strategy": s.adapted.state_dict(), "rng": rng_state(),
                "recipe": s.recipe.model_dump(mode="json"), **self._world_state()}

    def _changed_only(self) -> bool:
        """Whether this run's files hold only what training changed: yes, unless the run
        directory comes from a thawkit that wrote full checkpoints (its start record says)."""
        if self._changes is None:
            try:
                self._changes = changed_only(read_start(self.s.run_dir))
            except ThawkitError:
                self._changes = False
        return self._changes

    def _changed_state(self, upto: int) -> tuple[dict[str, Any], bool]:
        """The model's tensors that training can have changed by the end of phase ``upto``, and
        True; or all of them and False, in a run directory that keeps full files (from before)."""
        state = self.s.model.state_dict()
        if not self._changed_only():
            return state, False
        keep = changing_keys(self.s.adapted, upto)
        return {k: v for k, v in state.items() if k in keep}, True

    def _world_state(self) -> dict[str, Any]:
        """Under DDP: the number of processes and every process's RNG state (a collective call)."""
        if not self.world.distributed:
            return {}
        return {"world_size": self.world.size, "rng_ranks": self.world.gather(rng_state())}

    def restore(self) -> None:
        """Load the run directory's checkpoint into model, optimizer, schedule, strategy and RNGs."""
        s = self.s
        ckpt = load_checkpoint(s.run_dir)
        try:
            self._load_model(ckpt)
            s.optimizer.load_state_dict(ckpt["optimizer"])
            s.scheduler.load_state_dict(ckpt["scheduler"])
            s.scaler.load_state_dict(ckpt["scaler"])
            s.adapted.load_state_dict(ckpt["strategy"])
            self.state = Progress(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), **ckpt["progress"])
            saved = int(ckpt.get("world_size", 1))
            if saved == self.world.size and "rng_ranks" in ckpt:
                set_rng_state(ckpt["rng_ranks"][self.world.rank])
            else:
                set_rng_state(ckpt["rng"])
            self._saved = (self.state.epoch, self.state.step)
        except ThawkitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(f"checkpoint {str(s.files.checkpoint)!r} does not fit the run "
                                  f"its {RunDir.RECIPE} describes ({type(exc).__name__}: {first}); it was "
                                  "changed, or the recipe was") from None
        self.run.resumed = True

        changed = restore_message(saved, self.world)
        if changed:
            self.log(changed)

    def _load_model(self, ckpt: dict[str, Any]) -> None:
        """The checkpoint's tensors into the model; with only the changed ones, the others (as
        prepare built them) must be the run's start, digest for digest (a changed weights file
        is an error here, before any training)."""
        s = self.s
        state = ckpt["model"]
        if ckpt.get("model_changed_only"):
            state = complete_state(s.run_dir, state, list(s.model.state_dict()),
                                   file=s.files.checkpoint, have=s.model.state_dict(),
                                   rebuild=False, pm=s.recipe.plugin_manager, what="--resume")
        s.model.load_state_dict(state)

    def save(self) -> None:
        self._check_finite()
        if self.scratch:
            self._saved = (self.state.epoch, self.state.step)
            return
        state = self.checkpoint_state()  # on every process: it gathers their RNG states
        if self.world.is_main:
            save_checkpoint(self.s.run_dir, state)
        self._saved = (self.state.epoch, self.state.step)
        self.hook.thawkit_checkpoint_saved(run=self.run, path=self.s.files.checkpoint,
                                           epoch=self.state.epoch)

    def _check_finite(self, val: dict[str, float] | None = None) -> None:
        """A :class:`DivergedError` when the validation loss or a weight is NaN or infinite:
        non-finite weights are never saved, as checkpoint, best or final weights."""
        st = self.state
        if val is not None and not math.isfinite(val["val_loss"]):
            what = f"the validation loss is {val['val_loss']} after epoch {st.epoch + 1}"
        else:
            # a tensor training cannot change is bit-identical to the start: no need to scan it
            keys = changing_keys(self.s.adapted, self.s.adapted.phase)
            bad = [k for k in self._nonfinite(keys) if k not in self._nonfinite_from_start]
            if not bad:
                return
            what = (f"{len(bad)} tensor{'s' if len(bad) > 1 else ''} of the model "
                    f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) hold NaN or infinite "
                    f"values in epoch {st.epoch + 1}")
        raise DivergedError(f"{what}; the run stopped and {self._kept()}, nothing of this epoch "
                            "was saved; lower optimizer.lr, set train.grad_clip, or check the data")

    # ------------------------------------------------------------- loop
    def fit(self) -> Outcome:
        """Run (or finish) the run, with its callbacks and loggers registered meanwhile; it ends
        with ``thawkit_run_end``, or ``thawkit_run_failed`` and the error raised again."""
        with run_plugins(self.run, self.callbacks):
            try:
                outcome = self._fit()
            except BaseException as exc:
                run_failed(self.run, exc)
                raise
            self.hook.thawkit_run_end(run=self.run, status=outcome.status)
            return outcome

    def _fit(self) -> Outcome:
        """``run.json`` ends ``finished``, ``stopped``, ``interrupted`` or ``failed`` (with the
        reason) however the run ends, as long as the directory is writable."""
        self._status("running")
        try:
            with _sigint_to_flag(self):
                outcome = self._run()
        except DataError as exc:
            msg = _worker_message(exc)
            self._ended("failed", msg)
            raise DataError(msg) from None
        except OSError as exc:  # a full or read-only disk (RunDirError), or an OSError elsewhere

            cause = str(exc) if isinstance(exc, RunDirError) else describe_os_error(exc)
            msg = (f"{cause}; the run stopped and {self._kept()}; once the disk takes writes "
                   f"again, continue with: thawkit train --resume {self.s.run_dir}")
            self._ended("failed", msg)
            raise RunDirError(exc.errno, msg) from exc
        except ThawkitError as exc:
            self._ended("failed", str(exc))
            raise
        except KeyboardInterrupt:
            self._ended("interrupted", f"aborted by a second Ctrl-C without saving; the run "
                        f"{self._kept()}; continue with: thawkit train --resume {self.s.run_dir}")
            raise
        except Exception as exc:
            self._ended("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.pipeline.close()
        self._status(outcome.status, outcome.message)
        self._plot()
        return outcome

    def _ended(self, status: str, message: str) -> None:
        """Record how a run ended badly, if the directory still takes writes."""
        try:
            self._status(status, message)
            self._plot()
        except Exception:  # noqa: BLE001 - a full or read-only disk: the error already says so
            pass

    def _run(self) -> Outcome:
        s, st = self.s, self.state
        self.pipeline.phase_changed(s.adapted)
        self.hook.thawkit_run_start(run=self.run)
        while st.epoch < s.epochs:
            if self.stop_after is not None and st.epoch >= self.stop_after:
                return Outcome("stopped", st.epoch, f"stopped after {st.epoch} of {s.epochs} epochs "
                               f"as asked; continue with: thawkit train --resume {s.run_dir}")
            if s.adapted.on_epoch_start(st.epoch):
                self.pipeline.phase_changed(s.adapted)
                self.hook.thawkit_phase_change(run=self.run, phase=s.adapted.phase, epoch=st.epoch + 1)
            if not self._train_epoch():
                return Outcome("interrupted", st.epoch, self._interrupted_message())
            self.log(self._line(self._end_epoch()))
            if self.world.any(self.interrupt_requested) and st.epoch < s.epochs:
                return Outcome("interrupted", st.epoch, self._interrupted_message())
            asked = [r for r in self.world.gather(self.run.stop_reason) if r is not None]
            if asked and st.epoch < s.epochs:  # a plugin's request_stop, in any process
                self.run.stop_reason = asked[0]
                return Outcome("stopped", st.epoch, f"stopped after {st.epoch} of {s.epochs} epochs: "
                               f"{asked[0]}; continue with: thawkit train --resume {s.run_dir}")
        self._check_finite()
        if self.world.is_main and not self.scratch:
            save_weights(s.files.model, s.model.state_dict())
        if s.recipe.train.wise_alphas:
            try:
                self.wise = sweep(self, s.recipe.train.wise_alphas)
                self.log(sweep_line(self.wise, read_jsonl(s.files.metrics)[-1]["val_top1"]))
            except ThawkitError as exc:  # the run itself is done and saved: say why, and end
                self.log(f"no WiSE-FT sweep: {exc}")
        best = f"; best val top-1 {100 * st.best_top1:.2f}% at epoch {st.best_epoch + 1}" \
            if st.best_epoch >= 0 else ""
        return Outcome("finished", st.epoch, f"finished {s.epochs} epochs{best}; weights in "
                       f"{s.files.model}")

    def _forward(self, x, validating: bool = False):
        """The pipeline's forward pass; an exception the model raises becomes a message that names
        the model, the input shape and the field to change (:func:`~.model_input.model_error`)."""
        import torch

        try:
            return self.pipeline.forward(x)
        except (ThawkitError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own code: worded, not a plugin's bug
            from .model_input import model_error

            st = self.state
            when = f" in validation after epoch {st.epoch + 1}" if validating else \
                f" at epoch {st.epoch + 1}, step {st.step + 1}"
            shape = self.s.reader.shape(x)
            raise model_error(self.s.recipe, self.s.model, shape, exc, when,
                              hint=self.s.reader.error_hint(self.s.recipe, shape)) from exc

    def _interrupted_message(self) -> str:
        st = self.state
        where = f"epoch {st.epoch + 1}, step {st.step}" if st.step else f"the end of epoch {st.epoch}"
        return f"interrupted at {where}; checkpoint saved; continue with: thawkit train " \
               f"--resume {self.s.run_dir}"

    def _train_epoch(self) -> bool:
        """One epoch (or its rest); False when Ctrl-C stopped it (checkpoint already saved)."""
        s, st = self.s, self.state
        model, opt = s.model, s.optimizer
        model.train()
        if st.step == 0:
            st.lrs = {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(opt.param_groups)}
        trainable = [p for p in model.parameters() if p.requires_grad]
        clip = s.recipe.train.grad_clip
        total = s.loaders.steps_per_epoch
        bar = self._bar(total, st.step)
        started = time.perf_counter()
        try:
            for x, y in self.pipeline.train_batches(st.epoch, st.step):
                with torch.autocast(s.device.type, dtype=s.amp_dtype or torch.float32,
                                    enabled=s.amp_dtype is not None):
                    logits = self._forward(x)
                    loss = self.criterion(logits.float(), y)
                value, n = float(loss.detach()), int(y.shape[0])
                correct = int((logits.detach().argmax(1) == y).sum())
                if self.world.distributed:
                    loss, value, n, correct = self._reduce_step(loss, value, n, correct)
                if not math.isfinite(value):
                    raise DivergedError(
                        f"loss is {value} at epoch {st.epoch + 1}, step {st.step + 1}; the run "
                        f"stopped and {self._kept()}; lower optimizer.lr, set train.grad_clip, "
                        "or check the data")
                opt.zero_grad(set_to_none=True)
                s.scaler.scale(loss).backward()
                if clip:
                    s.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(trainable, clip)
                s.scaler.step(opt)
                s.scaler.update()
                if s.interval == "step":
                    s.scheduler.step()
                st.step += 1
                st.loss_sum += value * n
                st.correct += correct
                st.seen += n
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                if self.on_step is not None:
                    self.on_step(self)
                if (self._all_stop if self.world.distributed else self.interrupt_requested) \
                        and st.step < total:
                    st.seconds += time.perf_counter() - started
                    self.save()
                    return False
        finally:
            if bar is not None:
                bar.close()
        st.seconds += time.perf_counter() - started
        return True

    def _reduce_step(self, loss, value: float, n: int, correct: int):
        """Under DDP: the step's loss, count and correct over every process (so that all of them
        decide alike on NaN and Ctrl-C), and this process's loss weighted by its share of the
        global batch (DDP averages gradients over processes; weighted, the average is the
        gradient of the global batch's mean loss, whatever the shares)."""
        total, n_all, correct_all, stop = self.world.sum(
            [value * n, float(n), float(correct), float(self.interrupt_requested)])
        self._all_stop = stop > 0  # every process stops after this same step
        return loss * (n * self.world.size / n_all), total / n_all, int(n_all), int(correct_all)

    def evaluate(self) -> dict[str, float]:
        """Validation loss (plain cross-entropy), top-1 and, with more than 5 classes, top-5 (with
        5 or fewer it would always read 100%)."""
        s = self.s
        s.model.eval()
        loss_sum, top1, top5, n = 0.0, 0, 0, 0
        losses, hits = [], []
        with torch.no_grad(), torch.autocast(s.device.type, dtype=s.amp_dtype or torch.float32,
                                             enabled=s.amp_dtype is not None):
            for x, y in self.pipeline.val_batches():
                logits = self._forward(x, validating=True).float()
                each = F.cross_entropy(logits, y, reduction="none")
                right = logits.argmax(1) == y
                losses.append(each.cpu())
                hits.append(right.cpu())
                loss_sum += float(each.sum())
                top1 += int(right.sum())
                if self.num_classes > 5:
                    top5 += int((logits.topk(5, dim=1).indices == y[:, None]).any(1).sum())
                n += int(y.shape[0])
        self.val_outputs = ValOutputs(torch.cat(losses) if losses else torch.zeros(0),
                                      torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool))
        if self.world.distributed:  # each process evaluated its own images: sum the counts
            loss_sum, top1, top5, n = self.world.sum([loss_sum, top1, top5, n])
        out = {"val_loss": loss_sum / n, "val_top1": top1 / n}
        if self.num_classes > 5:
            out["val_top5"] = top5 / n
        return out

    def _end_epoch(self) -> dict[str, float]:
        s, st = self.s, self.state
        started = time.perf_counter()
        val = self.evaluate()
        self._check_finite(val)
        end_epoch(s.scheduler, s.interval, val["val_loss"])
        metrics = {"train_loss": st.loss_sum / max(st.seen, 1), "train_top1": st.correct / max(st.seen, 1),
                   **val, **{f"lr/{name}": lr for name, lr in st.lrs.items()}, "phase": s.adapted.phase,
                   "trainable_params": sum(p.numel() for p in s.model.parameters() if p.requires_grad),
                   "seconds": round(st.seconds + time.perf_counter() - started, 3)}
        self.hook.thawkit_epoch_end(run=self.run, epoch=st.epoch + 1, metrics=metrics)  # metrics.jsonl
        if val["val_top1"] > st.best_top1:
            st.best_top1, st.best_epoch = val["val_top1"], st.epoch
            if self.world.is_main and not self.scratch:
                # what the whole run can change, so that the final weights complete it too
                best, partial = self._changed_state(s.adapted.phase_at(s.epochs - 1))
                save_weights(s.files.best, best, {CHANGED_ONLY: "1"} if partial else None)
        st.epoch += 1
        st.step, st.loss_sum, st.correct, st.seen, st.seconds = 0, 0.0, 0, 0, 0.0
        self.save()
        return metrics

    # ---------------------------------------------------------- output
    def _line(self, r: dict[str, float]) -> str:
        """The log line of the epoch that just ended (``r``: its metrics)."""
        epoch, phase = self.state.epoch, int(r["phase"])
        lrs = [v for k, v in r.items() if k.startswith("lr/")]
        lr = max(lrs) if lrs else float("nan")
        top5 = f" top5 {100 * r['val_top5']:.2f}%" if "val_top5" in r else ""
        phases = self.s.adapted.phases
        label = f" ({phases[phase].label})" if len(phases) > 1 and phases[phase].label and \
            phases[phase].epoch == epoch - 1 else ""  # the first epoch of each phase
        return (f"epoch {epoch}/{self.s.epochs} phase {phase}{label} "
                f"trainable {r['trainable_params']:,} lr {lr:.3g} train_loss {r['train_loss']:.4f} "
                f"val_loss {r['val_loss']:.4f} top1 {100 * r['val_top1']:.2f}%{top5} "
                f"{r['seconds']:.1f}s")

    def _bar(self, total: int, initial: int):
        if not self.progress_bar or not extras.available("tqdm"):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, leave=False, dynamic_ncols=True,
                    desc=f"epoch {self.state.epoch + 1}/{self.s.epochs}")

    def _nonfinite(self, keys: frozenset[str] | None = None) -> list[str]:
        return [k for k, v in self.s.model.state_dict().items()
                if (keys is None or k in keys) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())]

    def _kept(self) -> str:
        """Which checkpoint a run that stops now keeps: the last one it wrote (or read)."""
        path = self.s.files.checkpoint
        if self._saved is None:
            return f"keeps {path}" if path.exists() else "had not written a checkpoint yet"
        epoch, step = self._saved
        where = f"at epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
        return f"keeps its last good checkpoint ({path}, {where})"

    def _status(self, status: str, message: str = "") -> None:
        if not self.world.is_main:
            return
        st = self.state
        write_json(self.s.files.status, {
            "status": status, "message": message, "epochs": self.s.epochs,
            "epochs_done": st.epoch, "best_top1": st.best_top1 if st.best_epoch >= 0 else None,
            "best_epoch": st.best_epoch + 1 if st.best_epoch >= 0 else None,  # counted from 1
            "device": str(self.s.device),
            "amp": str(self.s.amp_dtype).replace("torch.", "") if self.s.amp_dtype else None,
            **({"wise": self.wise} if self.wise else {})})

    def _plot(self) -> None:
        if not self.world.is_main or self.scratch:
            return

        if extras.available("matplotlib"):
            plot_run(self.s.run_dir)
        elif not self._plot_skipped:
            self._plot_skipped = True
            self.log(f"no {self.s.files.plot}: matplotlib is not installed ({extras.INSTALL})")


@contextmanager
def _sigint_to_flag(trainer: Trainer):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second: abort at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer.interrupt_requested = True
        signal.signal(signal.SIGINT, previous)
        print("\nthawkit: stopping after this step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_message(exc: DataError) -> str:
    """The original message of a DataError re-raised from a DataLoader worker."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith((f"{DataError.__module__}.DataError:", "DataError:")):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else str(exc)
