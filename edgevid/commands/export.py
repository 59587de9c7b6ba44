"""``edgevid export``: convert a Gemma 4 checkpoint into a verified ONNX model folder.

``edgevid_export`` (torch + transformers) is imported only when the command runs; without the ``export``
extra the command fails with one line naming the install command.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from edgevid.errors import ExportError
from edgevid.model.folder_format import PRECISIONS
INSTALL_HINT = 'edgevid export needs torch and transformers: pip install "edgevid[export]"'


def _missing_backend() -> str | None:
    """The first export dependency that is not installed (checked without importing it)."""
    for name in ("torch", "transformers", "onnx", "onnxscript"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def _load_export_backend():
    """The ``edgevid_export.convert`` module; ExportError with the install hint when torch is missing."""
    missing = _missing_backend()
    if missing:
        raise ExportError(f"{INSTALL_HINT} (missing {missing})")
    try:
        return importlib.import_module("edgevid_export.convert")
    except ImportError as exc:
        raise ExportError(f"{INSTALL_HINT} ({exc})") from exc


def _optional_module(name: str, what: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(f"{what} ({name}) is not available: {exc}") from exc


def _precisions(value: str) -> tuple[str, ...]:
    chosen = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown or not chosen:
        raise click.BadParameter(f"{', '.join(unknown) or value!r}: choose from {', '.join(PRECISIONS)} "
                                 "(comma-separated)", param_hint="--precision")
    return chosen


def _progress(line: str) -> None:
    click.echo(line, err=True)


@click.command("export")
@click.option("-m", "--model", "model", metavar="HF_ID_OR_DIR", help="Gemma 4 checkpoint: hub id or local folder.")
@click.option("--output", "output", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Model folder to write (e.g. models/gemma-4-e2b).")
@click.option("--precision", "precision", default="fp32", show_default=True, metavar="LIST",
              help=f"Comma-separated, from {','.join(PRECISIONS)} (fp32 is always written).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: the exporter's).")
@click.option("--no-validate", is_flag=True, help="Skip the parity gate against PyTorch.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Parity gate: largest allowed prefill logit difference (fp32), raised to 10x PyTorch's own "
                   "spread (sdpa vs eager) when that is larger.")
@click.option("--force", is_flag=True,
              help="Start even when the estimated memory or disk need exceeds what this machine has.")
@click.option("--verify", is_flag=True, help="Only re-run the parity gate on an existing --output folder.")
@click.option("--demo", is_flag=True,
              help="Retrain the demo model from scratch and export it: about 95 minutes of CPU. The trained demo "
                   "already ships with edgevid (`edgevid run --demo`); this is for changing its recipe.")
@click.option("--random-demo", is_flag=True,
              help="The demo architecture with random weights (seconds): for trying the export; answers are noise.")
def export(model, output, precision, opset, no_validate, tolerance, force, verify, demo, random_demo):
    """Convert a Gemma 4 checkpoint into a verified ONNX model folder."""
    precisions = _precisions(precision)
    if demo and random_demo:
        raise click.UsageError("choose one of --demo and --random-demo")
    if (demo or random_demo) and model:
        raise click.UsageError("--demo/--random-demo build their own checkpoint; drop --model")
    if not (demo or random_demo or model):
        raise click.UsageError("give -m/--model HF_ID_OR_DIR (or --random-demo to try the export in seconds)")
    convert = _load_export_backend()
    out = Path(output)
    if demo:
        trainer = _optional_module("edgevid_export.train_demo", "the demo trainer")
        _progress(f"edgevid export: retraining the demo model into {out / 'checkpoint'}: about 95 minutes of CPU "
                  "(the trained demo already ships with edgevid: `edgevid run --demo`; Ctrl-C stops)")
        click.echo(str(trainer.build_trained_demo(out, precisions=precisions, progress=_progress)))
        return
    if random_demo:
        builder = _optional_module("edgevid_export.demo", "the demo checkpoint builder")
        _progress(f"edgevid export: building the random-weight demo checkpoint in {out / 'checkpoint'}")
        model = str(builder.build_demo_checkpoint(out / "checkpoint"))
    if verify:
        report = convert.verify_export(model, output, progress=_progress, tolerance=tolerance)
        click.echo(f"parity ok: prefill max|diff| {report.prefill_max_abs_diff:.2e} (limit {report.limit:.2e}), "
                   f"{report.greedy_steps} greedy tokens identical")
        return
    folder = convert.export_model(model, output, precisions=precisions, opset=opset,
                                  validate=not no_validate, progress=_progress, tolerance=tolerance, force=force)
    click.echo(str(folder))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(export())
