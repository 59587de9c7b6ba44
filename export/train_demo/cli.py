"""``python -m edgevid_export.train_demo``: train, export and optionally package the demo model."""
from __future__ import annotations

import argparse
from dataclasses import replace

from .packaging import build_trained_demo, package_demo
from .recipe import DemoRecipe, RECIPES


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgevid_export.train_demo",
                                     description="Train the demo model, export it and optionally package it.")
    parser.add_argument("--output", required=True, help="folder for checkpoint/ and the exported model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DemoRecipe.steps)
    parser.add_argument("--precisions", default="fp32,q4")
    parser.add_argument("--stage1-checkpoint", metavar="DIR", default=None,
                        help="resume after stage 1 (a checkpoint built with --stage2-steps 0 and the same recipe)")
    parser.add_argument("--stage2-steps", type=int, default=DemoRecipe.stage2_steps)
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="start from a checkpoint saved after stage --resume-after of the same recipe")
    parser.add_argument("--resume-after", type=int, default=2)
    parser.add_argument("--package", metavar="DIR",
                        help="also copy the runtime files (fp32 + q4) and the sample clip here, e.g. edgevid/demo")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="shipped",
                        help="shipped: the recipe of edgevid/demo (default); first: the first shipped model's")
    parser.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                        help="override a DemoRecipe field (experiments; the shipped model uses the defaults)")
    args = parser.parse_args(argv)
    recipe = replace(RECIPES[args.recipe], seed=args.seed, steps=args.steps, stage2_steps=args.stage2_steps)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in DemoRecipe.__dataclass_fields__:
            parser.error(f"--set {item}: DemoRecipe has no field {name!r}")
        kind = type(getattr(recipe, name))
        recipe = replace(recipe, **{name: value.lower() in ("1", "true", "yes") if kind is bool else kind(value)})
    folder = build_trained_demo(args.output, seed=args.seed, recipe=recipe, stage1_checkpoint=args.stage1_checkpoint,
                                resume=args.resume, resume_after=args.resume_after,
                                precisions=tuple(args.precisions.split(",")))
    if args.package:
        package_demo(folder, args.package)
