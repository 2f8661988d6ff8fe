"""thawkit inside the Hugging Face ``Trainer``: :class:`ThawkitCallback` and :func:`thawkit_trainer`.

The callback moves an :class:`~thawkit.Adapted` model through its strategy's phases at epoch
boundaries (or every ``steps_per_epoch`` optimizer steps, for runs of one long epoch), and keeps
its state in the ``Trainer``'s checkpoints::

    adapted = thawkit.adapt(model, "gradual", num_classes=3, every=1)
    trainer = Trainer(model=adapted.model, args=args, train_dataset=ds,
                      optimizers=(adapted.optimizer("adamw", lr=2e-5, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted)])

or, the same in one call, :func:`thawkit_trainer`.

* **Optimizer.** Parameters that thaw later must be in the optimizer from the start:
  ``adapted.optimizer(...)`` holds every parameter that trains in any phase, in named groups
  (layer decay, no weight decay on biases and norms). The ``Trainer``'s own optimizer works too:
  the callback makes every parameter that will ever train require gradients until the
  ``Trainer`` has built its optimizer and wrapped the model (so DDP also registers them), then
  applies the phase. An optimizer that lacks a parameter that thaws later is refused.
* **Resume.** The phase (strategy, parameters, epoch, trainable set) is written into the
  ``Trainer``'s state, ``trainer_state.json`` of every checkpoint; ``resume_from_checkpoint``
  restores it and checks that the checkpoint was made with the same strategy.
* **Processes.** Under ``torchrun``/``accelerate launch`` every rank applies the same phase at
  the same step; thawed parameters are synchronised because DDP registered them at the wrap.
* **Dropout.** The strategy's ``frozen_dropout`` decides it, as everywhere:
  ``thawkit.adapt(model, "gradual", frozen_dropout="off")`` runs the layers frozen in the
  current phase without dropout until they thaw.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from thawkit import ConfigError

if TYPE_CHECKING:
    import torch
    from thawkit import Adapted
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

__all__ = ["ThawkitCallback", "thawkit_trainer"]

#: the key of thawkit's state in the Trainer's ``state.stateful_callbacks`` (trainer_state.json)
STATE_KEY = "thawkit"


class ThawkitCallback(TrainerCallback):
    """Apply ``adapted``'s phases in a Hugging Face ``Trainer`` (see the module docstring).

    Args:
        adapted: what :func:`thawkit.adapt` returned; its model is the ``Trainer``'s model.
        steps_per_epoch: move phases at step boundaries instead: the strategy's epoch ``e`` starts
            after ``e * steps_per_epoch`` optimizer steps (``None``: at the Trainer's epochs).
        frozen_dropout: deprecated: the strategy's ``frozen_dropout`` decides it
            (``thawkit.adapt(model, "gradual", frozen_dropout="off")``). ``"off"`` still sets
            ``adapted``'s policy to off.
    """

    def __init__(self, adapted: Adapted, *, steps_per_epoch: int | None = None,
                 frozen_dropout: str | None = None) -> None:
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ConfigError(f"ThawkitCallback: steps_per_epoch must be a positive integer or None, "
                              f"got {steps_per_epoch!r}")
        if frozen_dropout is not None:
            _deprecated_frozen_dropout(adapted, frozen_dropout, "ThawkitCallback")
        self.adapted = adapted
        self.steps_per_epoch = steps_per_epoch

    # ------------------------------------------------------------ helpers
    def epoch_of(self, state: TrainerState) -> int:
        """The strategy's epoch at this point of training."""
        if self.steps_per_epoch is not None:
            return state.global_step // self.steps_per_epoch
        # state.epoch is fractional (1.5: half-way through the second epoch) and exact at boundaries
        return max(0, math.floor((state.epoch or 0.0) + 1e-9))

    def _move(self, state: TrainerState) -> None:
        if self.adapted.on_epoch_start(self.epoch_of(state)) or STATE_KEY not in state.stateful_callbacks:
            state.stateful_callbacks[STATE_KEY] = self.adapted.state_dict()
        else:
            state.stateful_callbacks[STATE_KEY]["epoch"] = self.adapted.epoch

    def _check_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            return
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = dict(self.adapted.model.named_parameters())
        missing = sorted(n for n in self.adapted.ever_trainable if id(params[n]) not in held)
        if missing:
            raise ConfigError(
                f"ThawkitCallback: the Trainer's optimizer lacks {len(missing)} parameters that train in "
                f"a phase of strategy {self.adapted.strategy.name!r} ({', '.join(missing[:3])}...); pass "
                "optimizers=(adapted.optimizer(...), None) to the Trainer")

    # ------------------------------------------------------------ events
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # until the Trainer builds its optimizer and wraps the model (DDP registers only parameters
        # that require gradients), every parameter that will ever train requires them
        params = dict(self.adapted.model.named_parameters())
        for name in self.adapted.ever_trainable:
            params[name].requires_grad_(True)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        self._check_optimizer(optimizer)
        saved = (state.stateful_callbacks or {}).get(STATE_KEY)
        if saved is not None:  # resuming: the checkpoint's phase, checked against this strategy
            self.adapted.load_state_dict(saved)
        epoch = self.epoch_of(state)
        if saved is not None and self.adapted.epoch > epoch:
            raise ConfigError(f"ThawkitCallback: the checkpoint's phase was set at epoch "
                              f"{self.adapted.epoch}, after the Trainer's epoch {epoch} of that "
                              "checkpoint; resume with the steps_per_epoch it was saved with")
        # a checkpoint saved at the end of an epoch holds that epoch's phase: the next one starts now
        target = self.adapted.phase_at(epoch)
        state_now = {k: v for k, v in self.adapted.state_dict().items() if k != "trainable"}
        self.adapted.load_state_dict({**state_now, "epoch": epoch, "phase": target})  # re-applies it
        state.stateful_callbacks[STATE_KEY] = self.adapted.state_dict()

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.steps_per_epoch is None:
            self._move(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.steps_per_epoch is not None:
            self._move(state)


def _deprecated_frozen_dropout(adapted: Adapted, value: str, who: str) -> None:
    """The ``frozen_dropout=`` argument of ``who``, from before the policy moved to the strategy."""
    warnings.warn(f"{who}(frozen_dropout=...) is deprecated: dropout in frozen layers is "
                  "the strategy's setting frozen_dropout, e.g. thawkit.adapt(model, \"gradual\", "
                  "frozen_dropout=\"off\") or strategy: {name: gradual, frozen_dropout: off} in a "
                  "recipe", DeprecationWarning, stacklevel=3)
    if value not in ("keep", "off"):
        raise ConfigError(f"{who}: frozen_dropout must be 'keep' or 'off', got {value!r}")
    if value == "keep" and adapted.frozen_dropout == "off":
        raise ConfigError(f"{who}: frozen_dropout='keep' contradicts the strategy's "
                          "frozen_dropout='off'; leave the argument out (the strategy decides)")
    adapted.frozen_dropout = value  # applied with the phase, when training begins


def thawkit_trainer(adapted: Adapted, args: TrainingArguments, *, optimizer: str = "adamw",
                    steps_per_epoch: int | None = None, frozen_dropout: str | None = None,
                    trainer_class: type[Trainer] | None = None, **kwargs: Any) -> Trainer:
    """A ``Trainer`` for ``adapted`` with thawkit's optimizer and callback, in one call.

    ``optimizer``: the optimizer name; its settings come from ``args`` (``learning_rate``,
    ``weight_decay``, ``adam_beta1/2``, ``adam_epsilon``), plus ``layer_decay``, ``head_lr_mult``
    and ``lrs`` when given here. The learning-rate schedule is the ``Trainer``'s own
    (``args.lr_scheduler_type``, warmup); ``steps_per_epoch`` and ``frozen_dropout`` (deprecated:
    the strategy's ``frozen_dropout`` decides it) go to :class:`ThawkitCallback`. Other keyword
    arguments go to the ``Trainer``::

        trainer = thawkit_trainer(adapted, args, train_dataset=ds, layer_decay=0.8)
    """
    from transformers import Trainer

    settings = {k: kwargs.pop(k) for k in ("layer_decay", "min_scale", "head_lr_mult", "lrs") if k in kwargs}
    extra = {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon} \
        if optimizer.startswith("adam") else {}
    built = adapted.optimizer(optimizer, lr=args.learning_rate, weight_decay=args.weight_decay,
                              **extra, **settings)
    if frozen_dropout is not None:
        _deprecated_frozen_dropout(adapted, frozen_dropout, "thawkit_trainer")
    callbacks = [*kwargs.pop("callbacks", []), ThawkitCallback(adapted, steps_per_epoch=steps_per_epoch)]
    return (trainer_class or Trainer)(model=adapted.model, args=args, optimizers=(built, None),
                                      callbacks=callbacks, **kwargs)
