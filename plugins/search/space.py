"""What the search varies: the candidate strategies that apply to the model, and each one's
learning-rate range, ``layer_decay`` and main parameters. Everything else is the recipe's."""
from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, ThawkitError

if TYPE_CHECKING:
    from thawkit import Recipe

#: the built-in strategies the search tries by default, cheapest first (the tie-break order)
BUILTINS = ("head-only", "last-block", "lora", "loha", "lp-ft", "gradual", "auto-rgn", "full")
#: the study's user attribute holding the Optuna parameters of the recipe as written (its trial
#: is the incumbent of the pick, see :func:`~.report.pick`)
AS_WRITTEN = "as_written"
#: learning-rate ranges (log scale) for Adam-type optimizers; SGD-type ones get ten times more
LR_RANGES = {"head-only": (1e-3, 3e-1), "last-block": (1e-4, 3e-2), "lora": (1e-4, 3e-2),
             "loha": (1e-4, 3e-2), "lp-ft": (1e-4, 3e-2), "gradual": (1e-4, 3e-2),
             "auto-rgn": (1e-4, 3e-2), "full": (3e-5, 1e-2)}
SGD_LIKE = ("sgd", "rmsprop")
#: strategies that train several blocks, where layer-wise decay applies
DECAYED = ("last-block", "lp-ft", "gradual", "full")
#: the ranges of lp-ft's backbone_lr_scale and of layer_decay, and the adapters' ranks
SCALE_RANGE = (0.01, 1.0)
DECAY_RANGE = (0.5, 1.0)
RANKS = (4, 8, 16)


@dataclass
class Candidate:
    """A strategy the search may try; ``blocks``: how many blocks the model has."""

    name: str
    blocks: int
    lr_range: tuple[float, float]
    epochs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def bounds(self) -> dict[str, tuple[float, float]]:
        """The range of each numeric parameter this candidate varies besides ``lr``, by its
        Optuna name (``layer_decay`` where :meth:`decayed` says it applies)."""
        name = self.name
        out: dict[str, tuple[float, float]] = {}
        if name == "last-block":
            out["last-block.blocks"] = (1, self.blocks)
        elif name == "gradual":
            out["gradual.every"] = (1, max(1, min(3, self.epochs // 2)))
        elif name == "lp-ft":
            out["lp-ft.probe_epochs"] = (1, max(1, self.epochs // 2))
            out["lp-ft.backbone_lr_scale"] = SCALE_RANGE
        if name in DECAYED:
            out[f"{name}.layer_decay"] = DECAY_RANGE
        return out

    def decayed(self, blocks: int) -> bool:
        """Whether layer decay applies (to ``last-block``, from 2 blocks)."""
        return self.name in DECAYED and (self.name != "last-block" or blocks > 1)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample this candidate's parameters into ``trial``: ``{"strategy": {...},
        "optimizer": {...}}``, the parts of the recipe a trial changes."""
        name, bounds = self.name, self.bounds()
        lr = trial.suggest_float(f"{name}.lr", *self.lr_range, log=True)
        strategy: dict[str, Any] = {"name": name}
        optimizer: dict[str, Any] = {"lr": lr}
        if name == "last-block":
            strategy["blocks"] = trial.suggest_int("last-block.blocks", *bounds["last-block.blocks"])
        elif name == "gradual":
            strategy["every"] = trial.suggest_int("gradual.every", *bounds["gradual.every"])
        elif name == "lp-ft":
            strategy["probe_epochs"] = trial.suggest_int("lp-ft.probe_epochs", *bounds["lp-ft.probe_epochs"])
            strategy["backbone_lr_scale"] = trial.suggest_float(
                "lp-ft.backbone_lr_scale", *bounds["lp-ft.backbone_lr_scale"], log=True)
        elif name in ("lora", "loha"):
            strategy["rank"] = trial.suggest_categorical(f"{name}.rank", list(RANKS))
        if self.decayed(strategy.get("blocks", 1)):
            optimizer["layer_decay"] = trial.suggest_float(f"{name}.layer_decay",
                                                           *bounds[f"{name}.layer_decay"])
        return {"strategy": strategy, "optimizer": optimizer}

    def first_params(self, lr: float | None = None, strategy: dict[str, Any] | None = None,
                     layer_decay: float | None = None) -> dict[str, Any]:
        """Optuna parameters of a first trial of this candidate (``study.enqueue_trial``):
        ``lr`` (default: the geometric middle of its range), the strategy's own defaults for the
        rest unless ``strategy`` (a recipe's strategy section) gives them, and no layer decay
        unless ``layer_decay`` says otherwise; every value clipped into the search's range."""
        import math

        name, given, bounds = self.name, strategy or {}, self.bounds()

        def clip(key: str, value: float) -> Any:
            lo, hi = bounds[key]
            return type(lo)(min(max(value, lo), hi))

        lo, hi = self.lr_range
        params: dict[str, Any] = {"strategy": name,
                                  f"{name}.lr": math.sqrt(lo * hi) if lr is None else min(max(lr, lo), hi)}
        blocks = 1
        if name == "last-block":
            blocks = params["last-block.blocks"] = clip("last-block.blocks",
                                                        int(given.get("blocks", max(1, self.blocks // 2))))
        elif name == "gradual":
            params["gradual.every"] = clip("gradual.every", int(given.get("every", 1)))
        elif name == "lp-ft":
            params["lp-ft.probe_epochs"] = clip("lp-ft.probe_epochs", int(given.get("probe_epochs", 1)))
            params["lp-ft.backbone_lr_scale"] = clip("lp-ft.backbone_lr_scale",
                                                     float(given.get("backbone_lr_scale", 0.1)))
        elif name in ("lora", "loha"):
            rank = given.get("rank", 8)
            params[f"{name}.rank"] = rank if rank in RANKS else 8
        if self.decayed(blocks):
            params[f"{name}.layer_decay"] = clip(f"{name}.layer_decay",
                                                 1.0 if layer_decay is None else layer_decay)
        return params


def check_variable(recipe: Recipe) -> None:
    """A recipe whose learning rates the search cannot vary is an error."""
    if recipe.optimizer.lrs:
        raise ConfigError(f"search: optimizer.lrs fixes the learning rate of block(s) "
                          f"{', '.join(recipe.optimizer.lrs)}; the search varies optimizer.lr and "
                          "layer_decay, so remove optimizer.lrs from the recipe")
    if recipe.optimizer.lr_scale:
        raise ConfigError("search: optimizer.lr_scale (timm's form) leaves the rates to your own loop; "
                          "the search trains with thawkit's loop: remove it")


def parse_strategies(text: str | list[str] | None, known: list[str]) -> list[str] | None:
    """The names of ``--strategies a,b`` checked against the registered strategies."""
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ConfigError("--strategies: name at least one strategy, e.g. --strategies head-only,full")
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, known, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--strategies: unknown strategy {n!r}{hint} (registered: "
                              f"{', '.join(sorted(known))})")
    return list(dict.fromkeys(names))


def candidates(recipe: Recipe, wanted: list[str] | None) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that can run on the recipe's model, and ``{name: reason}`` for those that
    cannot (a strategy the search has no space for, peft missing, a model without targets...)."""
    from thawkit import adapt_recipe, validate_recipe

    pm = recipe.plugin_manager
    registered = list(pm.strategies.entries)
    names = wanted if wanted is not None else [n for n in BUILTINS if n in registered]
    sgd = recipe.optimizer.name.lower() in SGD_LIKE
    base = recipe.model_dump(mode="json")
    out, skipped = [], {}
    for name in names:
        if name not in LR_RANGES:
            skipped[name] = "the search has no search space for it (it varies the built-ins: " \
                            f"{', '.join(BUILTINS)})"
            continue
        if name in ("lora", "loha") and importlib.util.find_spec("peft") is None:
            skipped[name] = "peft is not installed (pip install 'thawkit[peft]')"
            continue
        data = {**base, "strategy": {"name": name}}
        try:
            adapted = adapt_recipe(validate_recipe(data, where="search", pm=pm), meta=True)
        except ThawkitError as exc:
            skipped[name] = str(exc).splitlines()[0]
            continue
        lo, hi = LR_RANGES[name]
        out.append(Candidate(name, len(adapted.layout.blocks), (lo * 10, hi * 10) if sgd else (lo, hi),
                             recipe.train.epochs))
    return out, skipped


def trial_recipe(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The recipe mapping of a trial: ``base`` with the trial's strategy and optimizer changes."""
    data = {**base, "strategy": changes["strategy"]}
    data["optimizer"] = {**base["optimizer"], **changes["optimizer"]}
    return data
