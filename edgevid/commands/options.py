"""The CLI's one option vocabulary: every command that loads a model takes the same flags, with the same
names, choices and defaults (``-m/--model`` + ``--demo``, ``--device``, ``--precision``, generation flags).

    @click.command()
    @model_options
    @device_options
    @generation_options
    def run(model_dir, demo, device, precision, generation): ...

``model_options`` resolves the folder (``model_dir``: a Path; the bundled demo for ``--demo``);
``generation_options`` builds one :class:`GenerationOptions` (``generation``), so a bad value is one
``error:`` line naming it, exactly as the library reports it.
"""
from __future__ import annotations

import dataclasses
import functools

import click

from edgevid import bundled_demo
from edgevid.model.folder_format import RUNTIME_SUFFIXES
from edgevid.model.generate import GenerationOptions
from edgevid.model.providers import DEVICES

RUNTIME_PRECISIONS = tuple(RUNTIME_SUFFIXES)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationOptions)}


def model_options(command):
    """``-m/--model DIR`` and ``--demo``; the command receives ``model_dir`` (Path) and ``demo`` (bool)."""
    @functools.wraps(command)
    def wrapper(*args, model, demo, **kwargs):
        resolved = bundled_demo.model_dir(model, demo)
        return command(*args, model_dir=resolved, demo=demo or model == "--demo", **kwargs)

    wrapper = click.option("--demo", is_flag=True,
                           help="Use the demo model bundled with edgevid (instead of -m).")(wrapper)
    return click.option("-m", "--model", "model", metavar="DIR",
                        help="Model folder written by `edgevid export`.")(wrapper)


class PrecisionSpec(click.ParamType):
    """``q4``, or one precision per graph (``decoder=q4f16,vision=fp16``), as ``ModelFolder.select_graphs``
    takes it; ``choices`` are the single names."""

    name = "PRECISION"
    choices = RUNTIME_PRECISIONS

    def convert(self, value, param, ctx):
        from edgevid.errors import ModelFolderError
        from edgevid.model.manifest import parse_precision_spec

        try:
            parse_precision_spec(value)
        except ModelFolderError as exc:
            self.fail(str(exc), param, ctx)
        return value


def device_options(command):
    """``--device`` as a choice and ``--precision`` (a name or one per graph), the names the runtime accepts."""
    command = click.option("--precision", type=PrecisionSpec(), default="fp32", show_default=True,
                           help=f"Graph precision: {', '.join(RUNTIME_PRECISIONS)}, or per graph as "
                                "decoder=q4f16,vision=fp16; a graph the folder lacks it for takes the nearest "
                                "(docs/models.md).")(command)
    return click.option("--device", type=click.Choice(DEVICES, case_sensitive=False), default="auto",
                        show_default=True,
                        help="Execution provider; auto = CUDA, then DirectML, then OpenVINO, then CPU.")(command)


def generation_options(command):
    """``--max-tokens --temperature --top-p --top-k --seed`` -> ``generation`` (a GenerationOptions)."""
    @functools.wraps(command)
    def wrapper(*args, max_tokens, temperature, top_p, top_k, seed, **kwargs):
        generation = GenerationOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                       seed=seed)
        return command(*args, generation=generation, **kwargs)

    for option in reversed([
        click.option("--max-tokens", type=int, default=_DEFAULTS["max_tokens"], show_default=True,
                     help="Most tokens in an answer."),
        click.option("--temperature", type=float, default=_DEFAULTS["temperature"], show_default=True,
                     help="0 = greedy."),
        click.option("--top-p", type=float, default=_DEFAULTS["top_p"], show_default=True),
        click.option("--top-k", type=int, default=_DEFAULTS["top_k"], show_default=True, help="0 = off."),
        click.option("--seed", type=int, default=None, help="Seed for sampling (same seed, same answer)."),
    ]):
        wrapper = option(wrapper)
    return wrapper
