"""Builders run with a user's keyword arguments: their exceptions, one clear error.

A builder (``torchvision.models.get_model``, ``timm.create_model``, a ``python:`` factory, a
``torch.optim`` class) is where ``backbone.kwargs`` and the optimizer's own settings are
really checked: ``num_classes: -1``, ``global_pool: 2`` or ``momentum: abc`` fail inside it
with whatever the library raises (``RuntimeError``, ``AssertionError``, ``TypeError``, ...).
:func:`user_arguments` turns that into a :class:`~thawkit.ConfigError` naming what was built
and with which arguments, so the CLI answers with one message (``--debug`` shows the original
traceback).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from thawkit import ConfigError, ThawkitError, quote, shorten


@contextmanager
def user_arguments(subject: str, kwargs: dict[str, Any], section: str,
                   catch: tuple[type[Exception], ...] = (Exception,)) -> Iterator[None]:
    """Run ``subject`` (e.g. ``backbone 'timm:resnet18': the builder``) called with ``kwargs``
    from recipe ``section``; an exception of ``catch`` is reported as the arguments' fault."""
    try:
        yield
    except ThawkitError:
        raise
    except catch as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        verb, hint = (f"rejected kwargs {quote(kwargs)}", f"; check {section}") if kwargs else ("failed", "")
        raise ConfigError(f"{subject} {verb}: {type(exc).__name__}"
                          f"{': ' + shorten(text) if text else ''}{hint}") from exc


def builder_errors(spec: str, kwargs: dict[str, Any], what: str = "builder") -> Any:
    """:func:`user_arguments` for a model builder of backbone ``spec``."""
    return user_arguments(f"backbone {spec!r}: the {what}", kwargs, "backbone.kwargs")


def optimizer_errors(name: str, kwargs: dict[str, Any]) -> Any:
    """:func:`user_arguments` for an optimizer class checking its settings (TypeError, ValueError)."""
    return user_arguments(f"optimizer {name!r}", kwargs, "the optimizer section",
                          catch=(TypeError, ValueError))


def weight_options(opts: dict[str, Any], where: str) -> tuple[bool, Any, Any]:
    """Pop a source's ``pretrained``, ``weights`` and ``device`` options from ``opts``, checked:
    ``pretrained`` is true or false, and never given together with a weights file."""
    pretrained = opts.pop("pretrained", False)
    weights = opts.pop("weights", None)
    device = opts.pop("device", None)
    if not isinstance(pretrained, bool):
        raise ConfigError(f"{where}: pretrained must be true or false, got {pretrained!r}")
    if pretrained and weights is not None:
        raise ConfigError(f"{where}: give either pretrained=True or weights=FILE, not both")
    return pretrained, weights, device
