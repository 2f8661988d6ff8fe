"""A model's layout: stem, ordered blocks, neck and head, over parameter names.

The layout is the vocabulary every strategy speaks. Plugins describe models
they know (``thawkit_describe_layout``); :func:`generic_layout` describes any
``nn.Module`` from its top-level children. Every parameter belongs to exactly
one block, which :meth:`Layout.validate` checks.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import LayoutError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

Role = Literal["stem", "block", "neck", "head"]


@dataclass
class Block:
    """A named group of parameters that freezes and thaws together.

    ``modules`` are the module paths the block is made of (informational, and
    used to place parameter-less modules such as affine-free norms).
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
    classifier input (pre-logits), when known; ``source`` who described it.
    """

    stem: Block | None
    blocks: list[Block]
    head: Block
    neck: Block | None = None
    classifiers: list[str] = field(default_factory=list)
    aux: list[str] = field(default_factory=list)
    feeds: str | None = None
    source: str = "generic"

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
        }


def _prefix_match(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def layout_from_prefixes(
    model: nn.Module,
    *,
    stem: Sequence[str] | None,
    blocks: Sequence[tuple[str, Sequence[str]]],
    head: Sequence[str],
    neck: Sequence[str] | None = None,
    classifiers: Sequence[str] = (),
    aux: Sequence[str] = (),
    feeds: str | None = None,
    source: str = "generic",
) -> Layout:
    """Build a layout from module-path prefixes; each parameter goes to its longest matching prefix.

    ``blocks`` is a list of ``(block_name, [prefix, ...])``. Prefixes may also
    be full parameter names (for root-level parameters such as ``cls_token``).
    """
    spec: list[tuple[str, Role, list[str]]] = []
    if stem is not None:
        spec.append(("stem", "stem", list(stem)))
    spec += [(n, "block", list(p)) for n, p in blocks]
    if neck:
        spec.append(("neck", "neck", list(neck)))
    spec.append(("head", "head", list(head)))
    assigned: dict[str, list[str]] = {n: [] for n, _, _ in spec}
    for pname, _ in model.named_parameters():
        best, best_len = None, -1
        for bname, _, prefixes in spec:
            for pre in prefixes:
                if _prefix_match(pname, pre) and len(pre) > best_len:
                    best, best_len = bname, len(pre)
        if best is not None:
            assigned[best].append(pname)
    made = {n: Block(n, role, assigned[n], list(pre)) for n, role, pre in spec}
    return Layout(
        stem=made.get("stem") if stem is not None else None,
        blocks=[made[n] for n, _ in blocks],
        neck=made["neck"] if neck else None,
        head=made["head"],
        classifiers=list(classifiers),
        aux=list(aux),
        feeds=feeds,
        source=source,
    )


def last_linear(model: nn.Module) -> str | None:
    """Path of the last ``nn.Linear`` (or 1x1 ``nn.Conv2d``) registered in the model, if any."""
    from torch import nn

    found = None
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (
            isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1)
        ):
            found = path
    return found


def generic_layout(model: nn.Module) -> Layout:
    """Describe any ``nn.Module``: the last Linear is the head, top-level children are blocks.

    The first top-level child with parameters is the stem; root-level
    parameters join the stem. When the head is nested inside a top-level
    child (``classifier = Sequential(..., Linear)``), that child's other
    parameters form the neck. A model whose parameters all live in one
    container (``nn.Sequential`` at the root) is split one level deeper.
    """
    head_path = last_linear(model)
    if head_path is None:
        raise LayoutError(
            f"cannot describe {type(model).__name__}: no nn.Linear or 1x1 nn.Conv2d classifier "
            "found; write a plugin implementing thawkit_describe_layout for it")
    if head_path == "":
        raise LayoutError(f"{type(model).__name__} is a bare classifier: there is no backbone to "
                          "freeze or thaw")
    container = _split_container(model, head_path)
    prefix = f"{container}." if container else ""
    parent = model.get_submodule(container) if container else model
    children = [n for n, m in parent.named_children() if any(True for _ in m.parameters())]
    head_top = head_path[len(prefix):].split(".")[0]
    if head_top not in children:
        children.append(head_top)
    before = children[: children.index(head_top)]
    after = children[children.index(head_top) + 1:]
    # _split_container only descends through parameter-free wrappers, so root parameters
    # exist only when there is no container
    root_params = [n for n, _ in model.named_parameters(recurse=False)]
    stem_prefixes = ([prefix + before[0]] if before else []) + root_params
    blocks = [(prefix + b, [prefix + b]) for b in before[1:]]
    # the rest of the head's top-level child (classifier = Sequential(..., Linear)) and
    # anything registered after it form the neck
    neck = [prefix + a for a in after]
    if prefix + head_top != head_path:
        neck.insert(0, prefix + head_top)
    layout = layout_from_prefixes(
        model,
        stem=stem_prefixes if stem_prefixes else None,
        blocks=blocks,
        neck=neck or None,
        head=[head_path],
        classifiers=[head_path],
        source="generic",
    )
    if layout.neck is not None and not layout.neck.params:
        layout.neck = None
    if layout.stem is not None and not layout.stem.params:
        layout.stem = None
    return layout


def _split_container(model: nn.Module, head_path: str) -> str:
    """The module path whose children are the blocks: descend while one child holds everything."""
    path = ""
    mod = model
    while True:
        kids = [(n, m) for n, m in mod.named_children() if any(True for _ in m.parameters())]
        own = list(mod.named_parameters(recurse=False))
        if len(kids) == 1 and not own and head_path.startswith((path + "." if path else "") + kids[0][0]):
            name = kids[0][0]
            path = f"{path}.{name}" if path else name
            mod = kids[0][1]
            continue
        return path
