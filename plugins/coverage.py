"""Model coverage: does every model of a source load, describe and take a new head?

Behind ``thawkit coverage``, which produces the README's coverage figures.
Models are built on the meta device where they allow it (no memory, no
download), on the CPU otherwise.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager
    from thawkit.plugins.cli import Commands
    from torch import nn

NUM_CLASSES = 7


@dataclass
class Result:
    spec: str
    ok: bool
    blocks: int = 0
    device: str = "meta"
    error: str = ""


def classifier_outputs(model: nn.Module, paths: list[str]) -> list[int]:
    """Output features of the modules at ``paths`` (the last Linear/Conv inside a wrapper)."""
    from torch import nn

    outs = []
    for path in paths:
        module = model.get_submodule(path)
        leaves = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
        last = leaves[-1] if leaves else module
        outs.append(getattr(last, "out_features", None) or getattr(last, "out_channels", None))
    return outs


def check_model(spec: str, pm: ThawkitPluginManager, num_classes: int = NUM_CLASSES) -> Result:
    from thawkit import load_backbone, replace_head

    device = "meta"
    try:
        try:
            model = load_backbone(spec, pm=pm, device="meta")
        except Exception:  # some builders cannot run on meta (torchvision regnets): use the CPU
            device = "cpu"
            model = load_backbone(spec, pm=pm)
        model, layout = replace_head(model, num_classes, pm=pm)
        outs = classifier_outputs(model, layout.classifiers + layout.aux)
        if not outs or any(o != num_classes for o in outs):
            return Result(spec, False, len(layout.blocks), device,
                          f"new classifier outputs {outs}, expected {num_classes}")
        if len(layout.blocks) < 2:
            return Result(spec, False, len(layout.blocks), device, "fewer than two blocks")
        return Result(spec, True, len(layout.blocks), device)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Result(spec, False, 0, device, f"{type(exc).__name__}: {message}"[:300])


def run(source: str, pattern: str | None, pm: ThawkitPluginManager) -> Iterator[Result]:
    for name in pm.sources.get(source, where="--source").list_models(pattern):
        yield check_model(f"{source}:{name}", pm)


def report(sources: list[str], pattern: str | None, pm: ThawkitPluginManager,
           verbose: bool = False) -> tuple[str, bool]:
    lines, figures, all_ok = [], [], True
    for source in sources:
        start = time.perf_counter()
        results = list(run(source, pattern, pm))
        ok = sum(r.ok for r in results)
        all_ok &= ok == len(results)
        figures.append(f"{ok}/{len(results)} {source}")
        lines.append(f"{source}: {ok}/{len(results)} models load, describe (>= 2 blocks, every "
                     f"parameter once) and take a {NUM_CLASSES}-class head "
                     f"({time.perf_counter() - start:.0f} s)")
        for r in results:
            if not r.ok:
                lines.append(f"  FAIL {r.spec} [{r.device}]: {r.error}")
            elif verbose:
                lines.append(f"  ok   {r.spec} [{r.device}] {r.blocks} blocks")
    lines.append("coverage: " + ", ".join(figures) + (f" (pattern {pattern!r})" if pattern else ""))
    return "\n".join(lines), all_ok



def cmd_coverage(args: argparse.Namespace) -> int:
    sources = [args.source] if args.source else ["torchvision", "timm"]
    text, ok = report(sources, args.pattern, args.pm, verbose=args.verbose)
    print(text)
    return 0 if ok else 1


@hookimpl
def thawkit_register_commands(subparsers: Commands) -> None:
    p = subparsers.add_parser("coverage", help="check that every model of a source loads, describes "
                              "and takes a new head (exit 1 if any fails)")
    p.add_argument("pattern", nargs="?", help="only models matching this wildcard")
    p.add_argument("--source", help="torchvision or timm (default: both)")
    p.add_argument("-v", "--verbose", action="store_true", help="list the models that pass too")
    p.set_defaults(func=cmd_coverage)
