"""``gradual``: ULMFiT-style unfreezing from the head down, one more block every ``every`` epochs.

Phases are cumulative and computed up front, so the plan shows the whole
schedule before training and the optimizer holds every parameter that will
ever thaw from the start. Explicit ``phases`` name blocks or parameter regexes
per epoch; ``rest: true`` thaws everything not yet thawed.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from thawkit import ConfigError, Phase, Strategy, StrategyParams, UnknownNameError, hookimpl

from .pattern import match_patterns


class PhaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epoch: int = Field(ge=0, description="Epochs done before this phase starts (0: from the first epoch).")
    blocks: list[str] = Field(default_factory=list, description="Block names to thaw.")
    params: list[str] = Field(default_factory=list, description="Regexes of parameter names to thaw.")
    rest: bool = Field(False, description="Thaw everything not thawed yet.")

    @model_validator(mode="after")
    def _something(self) -> PhaseSpec:
        if not (self.blocks or self.params or self.rest):
            raise ValueError("a phase needs blocks, params or rest: true")
        return self


class GradualParams(StrategyParams):
    every: int = Field(1, ge=1, description="Epochs between thawing steps.")
    start: int = Field(0, ge=0, description="Blocks thawed (besides neck and head) from the first epoch.")
    phases: list[PhaseSpec] | None = Field(None, description="Explicit schedule instead of every/start.")


class Gradual(Strategy):
    name = "gradual"
    description = "Thaw from the head down: one more block every `every` epochs, until the stem."
    Params = GradualParams

    def phases(self, layout, model):
        if self.params.phases:
            return self._explicit(layout, model)
        units = layout.thaw_order
        start = self.params.start
        if start > len(units) - 1:
            raise ConfigError(f"strategy.start: {start} is more than the {len(units) - 1} blocks "
                              "that can thaw below the head")
        out = []
        for k in range(len(units) - start):
            thawed = units[: start + 1 + k]
            label = "+".join(b.name for b in thawed[-1]) if k else \
                ", ".join(b.name for unit in thawed for b in unit)
            out.append(Phase(k * self.params.every, [p for u in thawed for b in u for p in b.params],
                             label))
        return out

    def _explicit(self, layout, model):
        names = [n for n, _ in model.named_parameters()]
        block_names = [b.name for b in layout.all_blocks]
        specs = self.params.phases
        if specs[0].epoch != 0:
            raise ConfigError(f"strategy.phases.0.epoch: the first phase must start at epoch 0, "
                              f"not {specs[0].epoch}")
        thawed: dict[str, int] = dict.fromkeys(layout.head.params, 0)
        out = []
        for i, spec in enumerate(specs):
            where = f"strategy.phases.{i}"  # the path style of every recipe error
            if i and spec.epoch <= specs[i - 1].epoch:
                raise ConfigError(f"{where}.epoch: {spec.epoch} must be after the previous phase's "
                                  f"epoch {specs[i - 1].epoch}")
            added: set[str] = set()
            twice = sorted({b for b in spec.blocks if spec.blocks.count(b) > 1})
            if twice:
                raise ConfigError(f"{where}.blocks: {', '.join(map(repr, twice))} named twice; "
                                  "name each block once")
            for bname in spec.blocks:
                if bname not in block_names:
                    raise UnknownNameError("block", bname, block_names, where=f"{where}.blocks")
                params = layout.block(bname).params
                if bname == "head" and i == 0:
                    continue
                if params and all(p in thawed for p in params):
                    raise ConfigError(f"{where}.blocks: {bname!r} is already thawed in phase "
                                      f"{thawed[params[0]]}; phases are cumulative, name each block once")
                added.update(params)
            if spec.params:
                new = match_patterns(names, spec.params, f"phases.{i}.params") - set(thawed)
                if not new and i:  # in phase 0 the head is thawed already (it always trains)
                    raise ConfigError(f"{where}.params: every parameter these patterns match is already "
                                      "thawed by an earlier phase")
                added |= new
            if spec.rest:
                added |= set(names) - set(thawed) - added
            if i and not (added - set(thawed)):
                raise ConfigError(f"{where}: thaws nothing that is not thawed already")
            for n in added:
                thawed.setdefault(n, i)
            label = ", ".join(spec.blocks + spec.params + (["rest"] if spec.rest else []))
            out.append(Phase(spec.epoch, thawed, label))
        return out


@hookimpl
def thawkit_register_strategies(register):
    register(Gradual)
