"""The demo checkpoint exported once (fp32, no parity gate), shared by the live/cache tests.

    model_dir = demo_model_dir()

The export takes ~1-2 minutes on a busy 2-core machine, so the folder is kept in the system temp dir
under a key made of the exporter's own source files: any change to ``export/`` exports afresh. It is
written to a scratch folder and renamed into place, so concurrent test runs never see half a folder.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

EXPORT_SOURCES = Path(__file__).resolve().parent.parent / "export"


def _exporter_key() -> str:
    digest = hashlib.sha256()
    for path in sorted(EXPORT_SOURCES.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def demo_model_dir() -> Path:
    root = Path(tempfile.gettempdir()) / "edgevid-test-models"
    model_dir = root / f"demo-{_exporter_key()}"
    if (model_dir / "edgevid.json").is_file():
        return model_dir
    from edgevid_export.convert import export_model
    from edgevid_export.demo import build_demo_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="demo-", dir=root))
    try:
        checkpoint = build_demo_checkpoint(scratch / "checkpoint")
        export_model(checkpoint, scratch / "model", precisions=("fp32",), validate=False,
                     progress=lambda *a, **k: None)
        try:
            os.replace(scratch / "model", model_dir)
        except OSError:                       # another run finished first: use theirs
            if not (model_dir / "edgevid.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return model_dir
