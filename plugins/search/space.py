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
#: learning-rate ranges (log scale) for Adam-type optimizers; SGD-type ones get ten times more
LR_RANGES = {"head-only": (1e-3, 3e-1), "last-block": (1e-4, 3e-2), "lora": (1e-4, 3e-2),
             "loha": (1e-4, 3e-2), "lp-ft": (1e-4, 3e-2), "gradual": (1e-4, 3e-2),
             "auto-rgn": (1e-4, 3e-2), "full": (3e-5, 1e-2)}
SGD_LIKE = ("sgd", "rmsprop")
#: strategies that train several blocks, where layer-wise decay applies
DECAYED = ("last-block", "lp-ft", "gradual", "full")


@dataclass
class Candidate:
    """A strategy the search may try; ``blocks``: how many blocks the model has."""

    name: str
    blocks: int
    lr_range: tuple[float, float]
    epochs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample this candidate's parameters into ``trial``: ``{"strategy": {...},
        "optimizer": {...}}``, the parts of the recipe a trial changes."""
        name = self.name
        lr = trial.suggest_float(f"{name}.lr", *self.lr_range, log=True)
        strategy: dict[str, Any] = {"name": name}
        optimizer: dict[str, Any] = {"lr": lr}
        if name == "last-block":
            strategy["blocks"] = trial.suggest_int("last-block.blocks", 1, self.blocks)
        elif name == "gradual":
            strategy["every"] = trial.suggest_int("gradual.every", 1, max(1, min(3, self.epochs // 2)))
        elif name == "lp-ft":
            strategy["probe_epochs"] = trial.suggest_int("lp-ft.probe_epochs", 1, max(1, self.epochs // 2))
            strategy["backbone_lr_scale"] = trial.suggest_float("lp-ft.backbone_lr_scale", 0.01, 1.0,
                                                                log=True)
        elif name in ("lora", "loha"):
            strategy["rank"] = trial.suggest_categorical(f"{name}.rank", [4, 8, 16])
        if name in DECAYED and (name != "last-block" or strategy["blocks"] > 1):
            optimizer["layer_decay"] = trial.suggest_float(f"{name}.layer_decay", 0.5, 1.0)
        return {"strategy": strategy, "optimizer": optimizer}


    def first_params(self, lr: float | None = None, strategy: dict[str, Any] | None = None,
                     layer_decay: float | None = None) -> dict[str, Any]:
        """Optuna parameters of a first trial of this candidate (``study.enqueue_trial``):
        ``lr`` (default: the geometric middle of its range, clipped into it), the strategy's own
        defaults for the rest unless ``strategy`` (a recipe's strategy section) gives them, and
        no layer decay unless ``layer_decay`` says otherwise."""
        import math

        lo, hi = self.lr_range
        name, given = self.name, strategy or {}
        value = math.sqrt(lo * hi) if lr is None else min(max(lr, lo), hi)
        params: dict[str, Any] = {"strategy": name, f"{name}.lr": value}
        blocks = 1
        if name == "last-block":
            blocks = min(max(int(given.get("blocks", max(1, self.blocks // 2))), 1), self.blocks)
            params["last-block.blocks"] = blocks
        elif name == "gradual":
            top = max(1, min(3, self.epochs // 2))
            params["gradual.every"] = min(max(int(given.get("every", 1)), 1), top)
        elif name == "lp-ft":
            params["lp-ft.probe_epochs"] = min(max(int(given.get("probe_epochs", 1)), 1),
                                               max(1, self.epochs // 2))
            scale = float(given.get("backbone_lr_scale", 0.1))
            params["lp-ft.backbone_lr_scale"] = min(max(scale, 0.01), 1.0)
        elif name in ("lora", "loha"):
            rank = given.get("rank", 8)
            params[f"{name}.rank"] = rank if rank in (4, 8, 16) else 8
        if name in DECAYED and (name != "last-block" or blocks > 1):
            decay = 1.0 if layer_decay is None else layer_decay
            params[f"{name}.layer_decay"] = min(max(decay, 0.5), 1.0)
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
