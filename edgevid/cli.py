"""The ``edgevid`` command: a click group whose subcommands live in ``edgevid.commands.*``.

Subcommand modules are imported only when their command is invoked, so ``edgevid run`` never pays for
the server and ``edgevid export`` alone touches torch. Every :class:`edgevid.errors.EdgevidError`
becomes one readable line on stderr and exit status 1 (2 for usage errors, as click does).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from edgevid import __version__
from edgevid.errors import EdgevidError

# command name -> (module, attribute, one-line help)
COMMANDS = {
    "export": ("edgevid.commands.export", "export", "Convert a Gemma 4 checkpoint into a verified ONNX model folder."),
    "run": ("edgevid.commands.run", "run", "Ask a model folder about videos and images."),
    "serve": ("edgevid.commands.serve", "serve", "Serve the OpenAI chat-completions API with video input."),
    "frames": ("edgevid.commands.frames", "frames", "Show the frames (and timestamps) the model would see."),
    "batch": ("edgevid.commands.batch", "batch", "Ask the same questions about every video of an archive (local or Ray)."),
    "watch": ("edgevid.commands.watch", "watch", "Ask a question about a live stream every few seconds."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (mod, _, _) in COMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None
            raise

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgevidError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="edgevid")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """edgevid: Gemma 4 video understanding on edge machines."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
