"""The ``train``, ``probe``, ``demo``, ``predict`` and ``export`` subcommands (torch is imported only
when one runs)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from thawkit import ConfigError

from .rundir import RunDir

# Each command imports its machinery when it runs (torch among it): `thawkit --help` builds these
# parsers and must stay fast.

EXIT_INTERRUPTED = 130


def cmd_train(args: argparse.Namespace) -> int:
    from thawkit import load_recipe

    from .ddp import launch
    from .runs import resume, train

    pm = args.pm
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.resume:
        if overrides or args.output:
            raise ConfigError("--resume continues a run with its own recipe; --set, --epochs and "
                              "--output cannot change it (start a new run instead)")
        expect = load_recipe(args.recipe, pm=pm) if args.recipe else None
        if args.nproc is not None:
            return launch(args)
        outcome = resume(args.resume, pm=pm, stop_after=args.stop_after, expect=expect)
    else:
        if not args.recipe:
            raise ConfigError("train: name a RECIPE file, or --resume RUN_DIR")
        if args.output:
            overrides.append(output_override(args.output))
        recipe = load_recipe(args.recipe, overrides=overrides, pm=pm)
        if args.nproc is not None:  # the recipe is checked here once, before any process starts
            return launch(args, recipe.data.batch_size)
        outcome = train(recipe, stop_after=args.stop_after)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone speaks
        print(outcome.message)
    return EXIT_INTERRUPTED if outcome.status == "interrupted" else 0


def output_override(folder: str) -> str:
    """``--output DIR`` as a ``--set`` override whose value stays the text given: a folder named
    ``2024``, ``0755`` or ``null`` is a folder name, not a YAML number or nothing."""
    return f"train.output={json.dumps(str(folder))}"


def cmd_probe(args: argparse.Namespace) -> int:
    from thawkit import load_recipe

    from .ddp import launched
    from .probe import probe

    if launched():
        raise ConfigError("thawkit probe runs in one process (its features are computed once); "
                          "start it without torchrun")
    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.output:
        overrides.append(output_override(args.output))
    recipe = load_recipe(args.recipe, overrides=overrides, pm=args.pm)
    probe(recipe, args.lr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, quick=args.quick, pm=args.pm)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict

    results = predict(args.run_dir, args.images, top_k=args.top_k, best=args.best, pm=args.pm,
                      trust=args.trust_run)
    for file, top in results:
        print(file)
        for name, p in top:
            print(f"  {100 * p:6.2f}%  {name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .inference import export_run

    weights, config = export_run(args.run_dir, args.out, best=args.best, force=args.force,
                                 merge=args.merge, pm=args.pm, wise=args.wise, trust=args.trust_run)
    print(f"wrote {weights} and {config}")
    if weights.name == "adapter_model.safetensors":
        print("adapters in PEFT's format (see docs/training.md); --merge writes plain weights")
        return 0
    print("rebuild with: thawkit.load_backbone(config['spec'], weights=WEIGHTS, "
          "**config['load_options'])")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_commands(subparsers: Any) -> None:
    """Add ``train``, ``demo``, ``predict`` and ``export`` to the ``thawkit`` parser."""
    p = subparsers.add_parser(
        "train", help="fine-tune a backbone as a recipe says, or continue a run",
        description="Train RECIPE into its run directory (metrics, plot, weights, checkpoint), "
                    "or continue a stopped or interrupted run with --resume RUN_DIR.")
    p.add_argument("recipe", nargs="?", help="YAML or JSON recipe (optional with --resume)")
    p.add_argument("--output", metavar="DIR", help="run directory (overrides train.output)")
    p.add_argument("--epochs", type=_positive, metavar="N", help="overrides train.epochs")
    p.add_argument("--stop-after", type=_positive, metavar="N",
                   help="stop once N epochs of the run are done, as if interrupted (the schedule "
                        "still plans for all epochs); continue with --resume")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optimizer.lr=0.01; repeatable")
    p.add_argument("--nproc", type=_positive, metavar="N",
                   help="train in N processes with DDP on this machine (starts torchrun "
                        "--standalone --nproc_per_node N; data.batch_size stays the global batch)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "probe", help="a learning-rate sweep of linear probes on features computed once",
        description="Train one head-only linear probe per --lr on the same batches of frozen "
                    "features, computed once (the recipe needs strategy: head-only and "
                    "data.augment: false); prints and writes (probe.json) every head's accuracy.")
    p.add_argument("recipe", help="YAML or JSON recipe (strategy head-only)")
    p.add_argument("--lr", type=float, action="append", required=True, metavar="LR",
                   help="a learning rate for the head (optimizer.lr); repeat for the sweep")
    p.add_argument("--output", metavar="DIR", help="run directory (overrides train.output)")
    p.add_argument("--epochs", type=_positive, metavar="N", help="overrides train.epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set data.batch_size=256; repeatable")
    p.set_defaults(func=cmd_probe)

    p = subparsers.add_parser(
        "demo", help="offline demo: pretrain on digits 0-4, adapt to 5-9 with 10 labels per class",
        description="Pretrain a small CNN on scikit-learn's handwritten digits 0-4, save it, load it "
                    "back through thawkit.load_backbone, adapt it to digits 5-9 with about 10 "
                    "labels per class (head-only, last-block, gradual, full, lp-ft) and compare with "
                    "training from scratch. Offline, a few minutes on 2 CPU cores.")
    p.add_argument("--output", default="thawkit-demo", metavar="DIR",
                   help="where data, run directories and plots go (default: thawkit-demo)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (a smoke test, ~30 s)")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser("predict", help="print the top classes of images (texts, audio "
                              "files) with a trained run")
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files; for a run with data.reader text, texts; audio, audio files")
    p.add_argument("--top-k", type=_positive, default=5, metavar="K", help="classes per image (5)")
    p.add_argument("--best", action="store_true", help=f"use {RunDir.BEST} (best val top-1 epoch)")
    _trust_run_option(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "export", help="write standalone weights plus the config to rebuild them",
        description="Write OUT (.safetensors, config beside it as .json; or a directory with "
                    "model.safetensors and config.json) that thawkit.load_backbone rebuilds.")
    p.add_argument("run_dir", help="a finished run directory")
    p.add_argument("out", help="OUT.safetensors or a directory")
    p.add_argument("--best", action="store_true", help=f"export {RunDir.BEST} instead of the final")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing files (never the files of a run directory)")
    p.add_argument("--wise", type=float, metavar="ALPHA",
                   help="WiSE-FT: interpolate the backbone with the run's starting weights, "
                        "(1-ALPHA)*start + ALPHA*fine-tuned (0..1); the head stays fine-tuned")
    p.add_argument("--merge", action="store_true",
                   help="adapter runs (lora, ...): merge the adapters into plain weights")
    _trust_run_option(p)
    p.set_defaults(func=cmd_export)


def _trust_run_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-run", action="store_true",
                   help=f"let the run's {RunDir.RECIPE} load the plugins and python: factories it names "
                        "(their code runs); without it they are refused unless loaded with -p")
