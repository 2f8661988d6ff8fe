"""The strategy interface: a named plugin that says which parameters train, and when.

A strategy returns an ordered list of :class:`Phase` objects. Each phase names
the parameters trainable from its epoch on; phases are cumulative (a later
phase never re-freezes). Static strategies return one phase at epoch 0.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, format_validation_error

if TYPE_CHECKING:
    from torch import nn

    from .layout import Layout
    from .plugin_manager import ThawkitPluginManager

NormMode = Literal["frozen", "affine", "train"]


class StrategyParams(BaseModel):
    """Parameters every strategy accepts; a strategy's ``Params`` subclasses this.

    ``norm`` decides what normalisation layers in frozen blocks do:
    ``frozen`` (default) keeps affine parameters fixed and running statistics
    fixed, even under ``model.train()``; ``affine`` trains the affine parameters
    but keeps statistics fixed; ``train`` lets statistics update (the naive
    behaviour of ``requires_grad = False``).
    """

    model_config = ConfigDict(extra="forbid")
    norm: NormMode = "frozen"


@dataclass(frozen=True)
class Phase:
    """From ``epoch`` on, exactly the parameters in ``trainable`` train."""

    epoch: int
    trainable: frozenset[str]
    label: str = ""

    def __init__(self, epoch: int, trainable: Iterable[str], label: str = "") -> None:
        object.__setattr__(self, "epoch", int(epoch))
        object.__setattr__(self, "trainable", frozenset(trainable))
        object.__setattr__(self, "label", label)


class Strategy:
    """Base class of freezing strategies.

    Subclasses set ``name`` and ``description``, optionally a ``Params`` model,
    and implement :meth:`phases`. Example (a complete plugin)::

        class EveryOtherBlock(thawkit.Strategy):
            name = "every-other"
            description = "Train every other block and the head."

            def phases(self, layout, model):
                return [thawkit.Phase(0, layout.params_of(layout.blocks[::2] + [layout.head]))]

        @thawkit.hookimpl
        def thawkit_register_strategies(register):
            register(EveryOtherBlock)
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: StrategyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strategy) and type(other) is type(self) and other.params == self.params

    def __hash__(self) -> int:
        return hash((type(self), self.params.model_dump_json()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def phases(self, layout: Layout, model: nn.Module) -> list[Phase]:
        raise NotImplementedError(f"strategy {self.name!r} does not implement phases()")

    @classmethod
    def summary(cls) -> str:
        return (cls.description or (cls.__doc__ or "").strip()).splitlines()[0] if (
            cls.description or cls.__doc__) else ""


def strategy_instance(name: str, params: dict[str, Any], *, pm: ThawkitPluginManager,
                      where: str = "strategy") -> Strategy:
    """The registered strategy ``name`` with ``params`` validated by its ``Params`` model.

    Errors name the field as ``strategy.<field>`` and, for an unknown name, the closest names.
    """
    cls = pm.strategies.get(name, where=f"{where}: strategy.name")
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where=where, prefix=("strategy",),
                                                  model=cls.Params)) from None
    instance: Strategy = cls(validated)
    return instance
