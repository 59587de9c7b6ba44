"""`edgevid frames`: table, --json, --out, --sheet, and one-line errors with exit status 1."""
from __future__ import annotations

import base64
import json

from click.testing import CliRunner
from clips import frame_id, write_clip
from PIL import Image

from edgevid.cli import main


def run(*args):
    return CliRunner().invoke(main, ["frames", *map(str, args)])


def test_json_output(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=50, fps=25)
    result = run(clip, "--num-frames", 5, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"source", "width", "height", "fps", "duration", "frame_count", "frames"}
    assert (data["width"], data["height"], data["fps"], data["frame_count"]) == (160, 120, 25.0, 50)
    assert data["duration"] == 2.0
    assert [f["index"] for f in data["frames"]] == [0, 10, 20, 30, 40]
    assert [f["timestamp"] for f in data["frames"]] == [0.0, 0.4, 0.8, 1.2, 1.6]


def test_table_out_and_sheet(tmp_path):
    clip = write_clip(tmp_path / "a.mkv", frames=90, fps=1)
    sheet, out = tmp_path / "sheet.png", tmp_path / "frames"
    result = run(clip, "-n", 4, "--out", out, "--sheet", sheet)
    assert result.exit_code == 0, result.output
    assert "160x120" in result.output and "90 frames" in result.output
    assert "01:07" in result.output                      # frame 67 at 67 s -> mm:ss
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["frame_000_000000.png", "frame_001_000022.png",
                                       "frame_002_000045.png", "frame_003_000067.png"]
    assert [frame_id(__import__("numpy").asarray(Image.open(f).convert("RGB"))) for f in files] == [0, 22, 45, 67]
    image = Image.open(sheet)
    assert image.format == "PNG" and image.width == 4 * 240


def test_fast_mode_and_data_url(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=96, gop=24)
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    result = run(url, "--mode", "fast", "-n", 8, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [f["index"] for f in data["frames"]] == [0, 24, 48, 72]
    assert data["source"].startswith("data:video/mp4;base64,") and len(data["source"]) < 100


def test_errors_are_one_line_and_exit_1(tmp_path):
    (tmp_path / "fake.mp4").write_text("hello, I am only text\n" * 3)
    for source in (tmp_path / "fake.mp4", tmp_path / "missing.mp4", "data:video/mp4;base64,%%%"):
        result = run(source)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
    assert run(tmp_path / "fake.mp4", "-n", 0).exit_code == 2             # usage error, as click does
