"""The strategy interface: a named plugin that says which parameters train, and when.

A strategy returns an ordered list of :class:`Phase` objects. Each phase names
the parameters trainable from its epoch on; phases are cumulative (a later
phase never re-freezes), and every phase includes the head. :class:`Strategy`
states the whole contract; ``thawkit.plugins.testing.check_strategy`` checks it.
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
FrozenDropout = Literal["keep", "off"]


class StrategyParams(BaseModel):
    """Parameters every strategy accepts; a strategy's ``Params`` subclasses this.

    ``norm`` decides what normalisation layers in frozen blocks do:
    ``frozen`` (default) keeps affine parameters fixed and running statistics
    fixed, even under ``model.train()``; ``affine`` trains the affine parameters
    but keeps statistics fixed; ``train`` lets statistics update (the naive
    behaviour of ``requires_grad = False``).

    ``frozen_dropout`` decides what dropout does in the frozen part: ``keep`` (default)
    leaves dropout, drop-path and stochastic depth active under ``model.train()`` everywhere,
    as PyTorch, timm and transformers training do; ``off`` keeps every layer of a block in
    which nothing trains (norm layers excepted: ``norm`` decides those) in inference mode, so
    a frozen block computes the same output for the same input at every step, until it thaws.
    Modules outside every block (a dropout between two top-level parts) keep dropout.
    """

    model_config = ConfigDict(extra="forbid")
    norm: NormMode = "frozen"
    frozen_dropout: FrozenDropout = "keep"


@dataclass(frozen=True)
class Phase:
    """After ``epoch`` epochs (0: from the first; the index ``range(epochs)`` gives), exactly the
    parameters named in ``trainable`` (as ``model.named_parameters()`` names them) train, plus,
    under ``norm="affine"``, the affine parameters of frozen norm layers. ``label``: for plans."""

    epoch: int
    trainable: frozenset[str]
    label: str = ""

    def __init__(self, epoch: int, trainable: Iterable[str], label: str = "") -> None:
        if isinstance(trainable, str):
            raise TypeError(f"Phase(trainable=...) takes parameter names, got the string {trainable!r}")
        object.__setattr__(self, "epoch", int(epoch))
        object.__setattr__(self, "trainable", frozenset(trainable))
        object.__setattr__(self, "label", label)


class Strategy:
    """Base class of freezing strategies. The contract (core enforces it when adapting):

    * Set ``name`` (unique), ``description`` (one line) and, with parameters, ``Params``: a
      :class:`StrategyParams` subclass that refuses bad values; core builds ``cls(params)``.
    * :meth:`phases` ``(layout: Layout, model: nn.Module) -> list[Phase]`` gets the model
      with its new head (possibly on the meta device) and its validated layout; it reads
      names and shapes only, changes nothing, and answers the same every time.
    * Phases: at least one, the first at epoch 0, epochs increasing, only the model's
      parameter names, each phase including the one before (cumulative).
    * The head always trains: every phase includes ``layout.head.params`` (core refuses a
      phase without it; it never freezes the head silently). The neck is pretrained:
      the strategy decides (``head-only`` freezes it, ``last-block`` trains it).
    * Norm layers: one whose weight (or, without affine parameters, whose block) is
      listed is thawed and updates its statistics; the others follow ``params.norm``:
      ``frozen``, ``affine`` (core adds their affine parameters) or ``train``.
    * Dropout: under ``params.frozen_dropout = "off"`` core keeps the layers of every block
      with no parameter in the phase in inference mode (a strategy does nothing for it).
    * ``layout.thaw_order`` lists units (blocks that thaw together) for gradual
      unfreezing: ``[head, neck]``, the blocks from last to first, then ``[stem]``.
    * Optional :meth:`lr_scales`: ``{param_name: factor}`` (model names, factors > 0).
    * Optional: :meth:`prepare` adds modules (adapters) before the phases; :meth:`describe`
      adds lines to the plan; :meth:`group_of` names a parameter's optimizer group.
    * A user's bad parameters raise :class:`~thawkit.ConfigError` naming the field
      (``strategy.blocks``); other exceptions reach the user as a
      :class:`~thawkit.PluginError` naming the plugin and the strategy.

    Example (a complete plugin)::

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
        """The cumulative phases for ``model`` described by ``layout`` (see the class docstring)."""
        raise NotImplementedError(f"strategy {self.name!r} does not implement phases()")

    def lr_scales(self, layout: Layout, model: nn.Module) -> dict[str, float]:
        """Learning-rate factors ``{param_name: factor}`` multiplied into the groups' rates (like
        layer decay; ``optimizer.lrs`` still wins for the blocks it names). Default: none."""
        return {}

    def prepare(self, model: nn.Module, layout: Layout) -> nn.Module | None:
        """Change the model (with its new head) before :meth:`phases`, e.g. add adapter modules;
        return it (core describes its layout again) or ``None`` (the default: no change)."""
        return None

    def describe(self, model: nn.Module) -> tuple[list[str], dict[str, Any]]:
        """Extra lines for the plan's table and extra data for its JSON (default: none)."""
        return [], {}

    def group_of(self, param: str) -> str | None:
        """A name for the optimizer group of ``param`` within its block (default: none)."""
        return None

    @classmethod
    def summary(cls) -> str:
        """The first line of ``description`` (or of the docstring)."""
        return (cls.description or (cls.__doc__ or "").strip()).splitlines()[0] if (
            cls.description or cls.__doc__) else ""


def strategy_instance(name: str, params: dict[str, Any], *, pm: ThawkitPluginManager,
                      where: str = "strategy") -> Strategy:
    """The registered strategy ``name`` with ``params`` validated by its ``Params`` model.

    Errors name the field as ``strategy.<field>`` and, for an unknown name, the closest names.
    """
    cls = pm.strategies.get(name, where=f"{where}: strategy.name")
    with pm.guard(pm.strategies.entry(name).plugin, f"strategy {name!r} (its Params or __init__)"):
        try:
            validated = cls.Params.model_validate(params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where=where, prefix=("strategy",),
                                                      model=cls.Params)) from None
        instance: Strategy = cls(validated)
    return instance
