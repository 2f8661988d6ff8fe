"""A model's layout: stem, ordered blocks, neck and head, over parameter names.

The layout is the vocabulary every strategy speaks. Plugins describe models
they know (``thawkit_describe_layout``), most easily with
:func:`thawkit.layout_from_prefixes`; the generic fallback describes any
``nn.Module`` from its top-level children. Every parameter belongs to exactly
one block, which :meth:`Layout.validate` checks.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import LayoutError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

Role = Literal["stem", "block", "neck", "head"]


@dataclass
class Block:
    """A named group of parameters that freezes and thaws together.

    ``modules`` are the module paths the block is made of (shown by ``thawkit
    describe``; a parameter-free module they list, such as a dropout between two
    parts, belongs to the block for ``frozen_dropout``).
    """

    name: str
    role: Role
    params: list[str]
    modules: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """Stem, ordered blocks (input to output), optional neck, and head.

    The contract (:meth:`validate` checks it): every parameter of the model is in
    exactly one block, and block names are unique. The ``head`` holds the final
    classifier's parameters (what ``adapt(num_classes=...)`` replaces, and what always
    trains); the ``neck`` the pretrained layers between the last block and the
    classifier (a final norm, pre-logits layers), ``None`` when there are none; the
    ``stem`` what comes before the first block. ``classifiers`` are the module paths of
    the final classifier(s) that the head replacement swaps; ``aux`` the auxiliary
    classifiers (googlenet, inception); ``feeds`` the module that produces the
    classifier input (pre-logits), when known; ``source`` who described it; ``notes`` lines the
    plan shows about the layout (what the head is when it shares weights, several stacks).
    """

    stem: Block | None
    blocks: list[Block]
    head: Block
    neck: Block | None = None
    classifiers: list[str] = field(default_factory=list)
    aux: list[str] = field(default_factory=list)
    feeds: str | None = None
    source: str = "generic"
    notes: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- access
    @property
    def all_blocks(self) -> list[Block]:
        """Every block from input to output: stem, blocks, neck, head."""
        out = [self.stem] if self.stem is not None else []
        out += self.blocks
        if self.neck is not None:
            out.append(self.neck)
        out.append(self.head)
        return out

    @property
    def thaw_order(self) -> list[list[Block]]:
        """Units in the order gradual unfreezing thaws them; a unit is the list of blocks that
        thaw together: ``[head, neck]`` (or ``[head]``), ``[last block]``, ..., ``[stem]``."""
        top = [self.head] + ([self.neck] if self.neck is not None else [])
        units = [top] + [[b] for b in reversed(self.blocks)]
        if self.stem is not None:
            units.append([self.stem])
        return units

    def block(self, name: str) -> Block:
        """The block called ``name``; :class:`UnknownNameError` (with the closest names) if none."""
        for b in self.all_blocks:
            if b.name == name:
                return b
        raise UnknownNameError("block", name, [b.name for b in self.all_blocks])

    def block_of(self) -> dict[str, str]:
        """Parameter name -> block name."""
        return {p: b.name for b in self.all_blocks for p in b.params}

    def params_of(self, blocks: Iterable[Block]) -> list[str]:
        """The parameter names of ``blocks``, in order: ``layout.params_of([layout.head])``."""
        return [p for b in blocks for p in b.params]

    # -------------------------------------------------------------- checking
    def validate(self, model: nn.Module, *, require_head: bool = True) -> Layout:
        """Raise :class:`LayoutError` unless every parameter is in exactly one block.

        ``require_head=False`` accepts an empty head (a model built with
        ``num_classes=0``, about to get a new head).
        """
        names = [n for n, _ in model.named_parameters()]
        seen: dict[str, str] = {}
        dupes = []
        for b in self.all_blocks:
            for p in b.params:
                if p in seen:
                    dupes.append(f"{p} (in {seen[p]} and {b.name})")
                seen[p] = b.name
        missing = [n for n in names if n not in seen]
        unknown = sorted(set(seen) - set(names))
        block_names = [b.name for b in self.all_blocks]
        repeated = sorted({n for n in block_names if block_names.count(n) > 1})
        problems = []
        if dupes:
            problems.append(f"parameters in two blocks: {', '.join(dupes[:10])}")
        if missing:
            problems.append(f"parameters in no block: {', '.join(missing[:10])}"
                            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
        if unknown:
            problems.append(f"names that are not parameters of the model: {', '.join(unknown[:10])}")
        if repeated:
            problems.append(f"block names used twice: {', '.join(repeated)}")
        if require_head and not self.head.params:
            problems.append("the head has no parameters (built with num_classes=0? pass "
                            "num_classes to thawkit.adapt() or thawkit.load_backbone())")
        if problems:
            raise LayoutError(f"{self.source} layout of {type(model).__name__} is invalid: "
                              + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The layout as JSON-ready data (``thawkit describe --json``)."""
        return {
            "source": self.source,
            "blocks": [{"name": b.name, "role": b.role, "modules": b.modules,
                        "params": b.params} for b in self.all_blocks],
            "classifiers": self.classifiers,
            "aux": self.aux,
            "feeds": self.feeds,
            "notes": self.notes,
        }


@dataclass
class Split:
    """A model cut just below block ``block``: ``rest(prefix(x))`` equals ``model(x)``.

    The answer of the ``thawkit_split_model`` hook. ``prefix`` registers (as submodules or
    parameters) every module and parameter it runs, so that thawkit can check them; both
    parts share the model's modules, so training ``rest`` trains the model.
    """

    prefix: nn.Module
    rest: nn.Module
    block: str
