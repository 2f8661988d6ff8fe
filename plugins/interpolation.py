"""WiSE-FT: interpolate fine-tuned weights with the weights fine-tuning started from.

Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot models": a weighted average
``(1 - alpha) * start + alpha * fine_tuned`` of the two weight sets keeps much of the starting
model's robustness under distribution shift while keeping most of the fine-tuned accuracy.
The new head has no counterpart in the starting model (it was created for the new classes),
so it always comes from the fine-tuned model. For your own loop::

    from thawkit.plugins.interpolation import interpolate

    start = {k: v.clone() for k, v in adapted.model.state_dict().items()}   # before training
    ...                                                                     # fine-tune
    tuned = adapted.model.state_dict()
    adapted.model.load_state_dict(interpolate(start, tuned, 0.5, head=adapted.layout))

``thawkit train`` records what a run started from, so ``thawkit export RUN OUT --wise 0.5``
and ``thawkit.plugins.train.wise.wise_model(run_dir, 0.5)`` need no more than the run directory.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, Layout, WeightsError

if TYPE_CHECKING:
    import torch


def check_alpha(alpha: Any, where: str = "alpha") -> float:
    """``alpha`` as a float in [0, 1], else a :class:`~thawkit.ConfigError` naming ``where``."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(alpha, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: the WiSE-FT weight must be a number from 0 (the starting "
                          f"weights) to 1 (the fine-tuned weights), got {alpha!r}")
    return value


def head_keys(state: Iterable[str], head: Layout | Iterable[str]) -> set[str]:
    """The keys of ``state`` that belong to the head: a layout's head parameters and everything
    under its classifier modules, or the keys equal to (or under) the names given."""
    if isinstance(head, Layout):
        names = set(head.head.params) | set(head.classifiers) | set(head.aux)
    else:
        names = set(head)
    return {k for k in state if k in names or any(k.startswith(n + ".") for n in names)}


def interpolate(start: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor],
                alpha: float, *, head: Layout | Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """A state dict with the keys of ``finetuned``: ``(1 - alpha) * start + alpha * finetuned``
    for every floating-point tensor outside ``head``; head tensors from ``finetuned``.

    ``alpha=0`` gives the starting tensors and ``alpha=1`` the fine-tuned ones, exactly; a tensor
    that fine-tuning left unchanged (a frozen block) stays bit-identical at every ``alpha``.
    Integer tensors (BatchNorm's ``num_batches_tracked``) come from the nearer end. ``head``: the
    :class:`~thawkit.Layout` of the adapted model, or key names / module paths. ``start`` may
    hold more keys (an old classifier); a key it lacks outside the head, or a shape that differs,
    is a :class:`~thawkit.WeightsError`.
    """
    import torch

    alpha = check_alpha(alpha)
    own = head_keys(finetuned, head)
    missing = sorted(k for k in finetuned if k not in own and k not in start)
    if missing:
        raise WeightsError(f"WiSE-FT: the starting weights lack {len(missing)} tensors of the "
                           f"fine-tuned model outside its head ({', '.join(missing[:5])}); they are "
                           "not the weights this model was fine-tuned from")
    wrong = [f"{k} {tuple(start[k].shape)} vs {tuple(v.shape)}" for k, v in finetuned.items()
             if k not in own and start[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"WiSE-FT: starting and fine-tuned shapes differ: {', '.join(wrong[:5])}")
    out: dict[str, torch.Tensor] = {}
    for key, tuned in finetuned.items():
        if key in own:
            out[key] = tuned
            continue
        begin = start[key].to(device=tuned.device, dtype=tuned.dtype)
        if not tuned.is_floating_point():
            out[key] = begin if alpha < 0.5 else tuned
        elif torch.equal(begin, tuned):
            out[key] = tuned
        else:
            wide = torch.float64 if tuned.dtype == torch.float64 else torch.float32
            mixed = (1.0 - alpha) * begin.to(wide) + alpha * tuned.to(wide)
            out[key] = mixed.to(tuned.dtype)
    return out


def state_digest(state: Mapping[str, torch.Tensor], keys: Iterable[str]) -> str:
    """SHA-256 over ``keys`` of ``state``: names, dtypes, shapes and bytes (CPU copies)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(keys):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
