"""The CLI's one vocabulary: the same model, device, precision and generation options (names, choices,
defaults) on every command that loads a model; `edgevid --help` lists only commands that exist."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgevid.cli import COMMANDS, main
from edgevid.model.folder_format import PRECISIONS
from edgevid.model.generate import GenerationOptions
from edgevid.model.providers import DEVICES

MODEL_COMMANDS = ("run", "serve", "watch", "batch")


EXTRA_ARGS = {"watch": ["x", "-i", "q"], "batch": ["x", "-i", "q", "-o", "results.jsonl"]}   # besides the options


def command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


def options(name: str) -> dict[str, click.Option]:
    return {p.name: p for p in command(name).params if isinstance(p, click.Option)}


def describe(option: click.Option) -> tuple:
    choices = tuple(option.type.choices) if isinstance(option.type, click.Choice) else None
    return tuple(sorted(option.opts)), option.default, choices, option.is_flag


@pytest.mark.parametrize("name", ["model", "demo", "device", "precision", "max_tokens", "temperature", "top_p",
                                  "top_k", "seed"])
def test_model_commands_share_each_option(name):
    seen = {cmd: describe(options(cmd)[name]) for cmd in MODEL_COMMANDS}
    assert len(set(seen.values())) == 1, seen


def test_choices_are_the_runtime_names_and_defaults_the_library_ones():
    opts = options("run")
    assert tuple(opts["device"].type.choices) == DEVICES
    assert set(PRECISIONS) <= set(opts["precision"].type.choices)            # what export writes, and more
    assert opts["precision"].type.convert("decoder=q4f16,vision=fp16", None, None) == "decoder=q4f16,vision=fp16"
    with pytest.raises(click.BadParameter, match="unknown precision 'int3'"):
        opts["precision"].type.convert("int3", None, None)
    assert sorted(opts["model"].opts) == ["--model", "-m"]
    defaults = GenerationOptions()
    for field in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        assert opts[field].default == getattr(defaults, field), field
    assert sorted(options("export")["model"].opts) == ["--model", "-m"]


def test_every_listed_command_exists():
    for name, (module, attr, _) in COMMANDS.items():
        assert isinstance(getattr(importlib.import_module(module), attr), click.Command), name


def test_help_without_site_imports_lists_the_commands():
    """As from a wheel install: ``site`` (whose editable-install hooks import ``importlib.util``) is not run,
    so the CLI must import what it uses itself."""
    import edgevid

    paths = [str(Path(edgevid.__file__).parent.parent)] + [p for p in sys.path if "site-packages" in p]
    code = ("import sys; sys.path[:0] = %r; assert 'importlib.util' not in sys.modules; "
            "from edgevid.cli import main; sys.argv = ['edgevid', '--help']; main()" % paths)
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("cmd", MODEL_COMMANDS)
def test_unknown_device_is_refused_with_the_choices(cmd):
    args = [cmd, "--demo", "--device", "directml"] + EXTRA_ARGS.get(cmd, [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "'directml' is not one of" in result.output and "'dml'" in result.output


@pytest.mark.parametrize("cmd", MODEL_COMMANDS)
def test_model_and_demo_together_is_one_line_exit_1(cmd, tmp_path):
    args = [cmd, "--demo", "-m", str(tmp_path)] + EXTRA_ARGS.get(cmd, [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: give either -m MODEL_DIR or --demo, not both"


@pytest.mark.parametrize("cmd", MODEL_COMMANDS)
def test_no_model_is_one_line_exit_1(cmd):
    args = [cmd] + (["-i", "q"] if cmd == "run" else EXTRA_ARGS.get(cmd, []))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "pass a model folder with -m MODEL_DIR, or --demo" in result.stderr


def test_generation_defaults_reach_the_server_request():
    from edgevid.server.request import RequestLimits, parse_chat_request

    defaults = dataclasses.replace(GenerationOptions(), max_tokens=7, temperature=0.5, seed=3)
    limits = RequestLimits(model_name="m", max_frames=8, default_frames=4, max_media_bytes=1024, defaults=defaults)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    options = parse_chat_request(body, limits).options
    assert (options.max_tokens, options.temperature, options.seed) == (7, 0.5, 3)
    options = parse_chat_request({**body, "max_tokens": 2, "temperature": 0}, limits).options
    assert (options.max_tokens, options.temperature) == (2, 0.0)
