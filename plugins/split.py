"""Splitting a model at a block boundary, so that what stays frozen is computed once.

Core defines the hook ``thawkit_split_model`` and its answer, :class:`thawkit.Split`
(``rest(prefix(x)) == model(x)``), and the helpers with which a plugin answers the hook from the
steps of a forward pass (``thawkit.split_sequential``, ``thawkit.ForwardStep``; their old names
here are deprecated aliases). This module holds :func:`frozen_prefix`, which asks for the split
below the lowest block that trains in a phase and decides whether its output is a pure
function of the input, the condition for caching it (``thawkit train``'s feature cache,
``thawkit probe`` and :class:`~thawkit.plugins.train.features.FeatureCache` use it)::

    from thawkit.plugins.split import frozen_prefix

    frozen = frozen_prefix(adapted)
    if frozen:
        features = frozen.split.prefix(images)   # once, under torch.no_grad()
        logits = frozen.split.rest(features)     # every step
    else:
        print("no cache:", frozen.reason)

Exactness rules (any one failing means no cache, with the reason):

* every parameter in the prefix is frozen in the phase (``norm: affine`` trains
  the affine parameters of norm layers in frozen blocks, so those blocks are not frozen);
* every norm layer in the prefix uses fixed running statistics: with ``norm: train``
  BatchNorm statistics move at every step, and a BatchNorm without running
  statistics normalises with the batch's own;
* no layer in the prefix is stochastic in training: dropout, drop-path or
  stochastic depth with a probability above zero (frozen blocks run in train
  mode in an uncached run, so they would draw new masks at every step), unless
  the strategy's ``frozen_dropout: off`` keeps that layer in inference mode in the
  phase (:meth:`thawkit.Adapted.inference_modules`);
* the input transform is deterministic (no random augmentation): the training
  loop decides this one, since thawkit never sees the data.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

import thawkit
from thawkit import Adapted, Split, has_running_stats, is_norm, norm_modules

__getattr__ = thawkit.moved_names(__name__, {
    name: f"thawkit:{name}" for name in ("ForwardStep", "split_sequential", "stochastic")})


@dataclass
class FrozenPrefix:
    """The answer of :func:`frozen_prefix`: the split, or why there is none.

    ``block`` is the lowest block that trains in the phase (the boundary), ``reason`` a
    sentence: what is cached when ``split`` is set, else why nothing can be. True when
    there is a split.
    """

    split: Split | None
    block: str | None
    reason: str
    phase: int = 0

    def __bool__(self) -> bool:
        return self.split is not None


# ------------------------------------------------------------------ exactness
def frozen_prefix(adapted: Adapted, phase: int | None = None) -> FrozenPrefix:
    """The frozen part below the lowest block that trains in ``phase`` (default: the current
    one), as a :class:`~thawkit.Split` whose prefix output can be cached, or the reason why
    not (the rules are in this module's docstring). True when there is a split.

    The split comes from the ``thawkit_split_model`` hook. Whether the input itself is
    deterministic (no random augmentation) is the caller's to decide.
    """
    index = adapted.phase if phase is None else phase
    layout, model = adapted.layout, adapted.model
    own = adapted.phases[index].trainable  # the strategy's own, before the norm policy adds any
    blocks = layout.all_blocks
    boundary = next((b for b in blocks if any(p in own for p in b.params)), None)
    if boundary is None:
        return FrozenPrefix(None, None, "nothing trains in this phase", index)
    if boundary is blocks[0]:
        return FrozenPrefix(None, boundary.name, f"block {boundary.name!r}, the first, trains in "
                            "this phase: nothing below it is frozen", index)
    split = adapted.pm.hook.thawkit_split_model(model=model, layout=layout, block=boundary.name)
    if split is None:
        return FrozenPrefix(None, boundary.name, f"no plugin splits {type(model).__name__} below "
                            f"block {boundary.name!r} (thawkit_split_model answered None)", index)
    problem = _check(adapted, index, split, boundary.name)
    if problem:
        return FrozenPrefix(None, boundary.name, problem, index)
    return FrozenPrefix(split, boundary.name, f"the output of everything below block "
                        f"{boundary.name!r} is computed once", index)


def _check(adapted: Adapted, index: int, split: Split, boundary: str) -> str | None:
    """Why the prefix's output is not a pure function of the input, or ``None`` when it is."""
    model, layout = adapted.model, adapted.layout
    trainable = adapted.trainable_in(index)
    norms = norm_modules(model)
    name_of = {id(p): n for n, p in model.named_parameters()}
    path_of = {id(m): p for p, m in model.named_modules()}
    order = {b.name: i for i, b in enumerate(layout.all_blocks)}
    held = {id(m) for m in adapted.inference_modules(index).values()}
    block_of = layout.block_of()
    for p in split.prefix.parameters():
        name = name_of.get(id(p))
        if name is None:
            return f"the split below {boundary!r} holds a parameter that is not the model's"
        if order[block_of[name]] >= order[boundary]:
            return (f"the split below {boundary!r} puts {name} (block {block_of[name]!r}) into the "
                    "frozen prefix")
        if name in trainable:
            if adapted.norm == "affine" and name not in adapted.phases[index].trainable:
                return (f"norm: affine trains {name} (a norm layer in a frozen block): the frozen "
                        "part's output changes at every step; use norm: frozen to cache")
            return f"{name} trains in this phase but lies below block {boundary!r}"
    rest = {id(p) for p in split.rest.parameters()}
    missing = sorted(n for n, p in model.named_parameters() if n in trainable and id(p) not in rest)
    if missing:
        return f"the split below {boundary!r} leaves trainable {missing[0]} out of the rest"
    for module in split.prefix.modules():
        path = path_of.get(id(module), type(module).__name__)
        if is_norm(module) and isinstance(module, nn.modules.batchnorm._BatchNorm) \
                and not has_running_stats(module):
            return (f"{path} normalises with each batch's own statistics (no running statistics): "
                    "its output depends on the batch")
        if is_norm(module) and has_running_stats(module) and path in norms \
                and adapted.norm_mode(path, index) == "train":
            return (f"norm: train updates the running statistics of {path} at every step: the "
                    "frozen part's output changes; use norm: frozen to cache")
        what = thawkit.stochastic(module)
        if what is not None and id(module) not in held:
            fix = ("set strategy frozen_dropout: off, or build the backbone with that rate at 0"
                   if adapted.frozen_dropout == "keep" else "it lies in no frozen block, so "
                   "frozen_dropout: off leaves it on; build the backbone with that rate at 0")
            return (f"{path} ({what}) in the frozen part is active in training, so its output "
                    f"differs at every step; {fix} (dropout, drop_path_rate, stochastic_depth_prob) "
                    "to cache")
    return None

