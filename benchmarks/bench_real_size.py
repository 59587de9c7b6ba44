"""Real size, one command: build an E2B-size random checkpoint, export it (fp32 + q4) under a 12 GB budget,
and run it against PyTorch eager on a 32-frame 720p clip.

    python benchmarks/bench_real_size.py --workdir /path/with/60GB            # everything
    python benchmarks/bench_real_size.py --workdir W --skip-torch-fp32         # on a machine < 32 GB

Steps (each skipped when its output is already in ``--workdir``):
1. checkpoint: ``real_size_checkpoint.build`` (transformers' default Gemma 4 text + vision configs, 5.25 B
   parameters, bf16 safetensors, 10.5 GB);
2. export: ``edgevid export --precision fp32,q4`` under ``/usr/bin/time -v`` (its peak RSS, wall time, and the
   per-stage lines with their peak-so-far), disk per precision;
3. clip: 32 synthetic 1280x720 frames as H.264 MP4 (``edgevid_export.synthetic.write_mp4``);
4. sides, each in its own process on the same preprocessed input (32 frames -> 288x528 -> 66 soft tokens
   each, ~2,150-token prompt): PyTorch eager bf16 and fp32 (transformers' own forward), edgevid's sessions
   fp32 and q4: vision time, prefill (embed + decoder over the prompt), TTFT (vision + prefill + first
   token), decode tokens/s over ``DECODE_TOKENS`` greedy steps, peak RSS (the process's high-water mark);
5. ``edgevid run --precision q4 --video clip.mp4 -i ... --json`` under ``/usr/bin/time -v``: the user's peak.
Goals (issue 16): export peak <= 12 GB; q4 run peak <= 3 GB; q4 decode >= 2.5x PyTorch eager (bf16 and fp32).
The load average is printed beside the numbers: on a shared machine absolute times are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from peak_rss import peak_rss_mb

HERE = Path(__file__).resolve().parent
NUM_FRAMES = 32
FRAME_SIZE = (720, 1280)
DECODE_TOKENS = 16
QUESTION = "What happens in this video?"
GB = 1024 ** 3


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` (stdout+stderr to ``log``): wall seconds, peak RSS, exit code."""
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t, 1),
            "peak_rss_gb": round(int(peak.group(1)) / 1024 ** 2, 2) if peak else None}


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def make_clip(path: Path) -> Path:
    from edgevid_export.synthetic import write_mp4

    h, w = FRAME_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([
        np.stack([(xx // 4 + 9 * i) % 256, (yy // 4 + 5 * i) % 256, ((xx + yy) // 8 + 3 * i) % 256], -1)
        for i in range(NUM_FRAMES)]).astype(np.uint8)
    return write_mp4(path, frames, 24.0)


def make_inputs(clip: Path, path: Path) -> None:
    """The clip's 32 frames through edgevid's preprocessing, a prompt with their soft tokens."""
    import cv2

    from edgevid.model.preprocess import preprocess_video
    from edgevid_export.demo import demo_token_ids

    capture = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < NUM_FRAMES:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    vision = preprocess_video(np.stack(frames))
    ids = demo_token_ids()
    prompt = [ids.bos, 5, 600, 601]
    for k in vision.soft_tokens:
        prompt += [700, 701, ids.boi] + [ids.video] * k + [ids.eoi]
    prompt += [300 + i for i in range(24)] + [6, 5, 602]
    np.savez(path, pixel_values=vision.pixel_values, position_ids=vision.position_ids,
             input_ids=np.asarray(prompt, dtype=np.int64))


# ---- sides (each in its own process) ---------------------------------------------------------------------
def _passes(vision, prefill, decode) -> dict:
    t = time.perf_counter()
    vision()
    vision_s = time.perf_counter() - t
    t = time.perf_counter()
    started = prefill()
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    tokens = decode(started)
    decode_s = time.perf_counter() - t
    return {"vision_s": round(vision_s, 2), "prefill_s": round(prefill_s, 2),
            "ttft_s": round(vision_s + prefill_s, 2), "decode_tok_s": round(DECODE_TOKENS / decode_s, 3),
            "tokens": tokens, "peak_rss_gb": round(peak_rss_mb() / 1024, 2)}


def run_torch(workdir: Path, threads: int, dtype_name: str) -> dict:
    import torch
    from transformers import Gemma4ForConditionalGeneration

    from edgevid_export.parity import cache_of, with_cache

    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    data = np.load(workdir / "inputs.npz")
    model = Gemma4ForConditionalGeneration.from_pretrained(workdir / "checkpoint", dtype=dtype).eval()
    pv = torch.from_numpy(data["pixel_values"]).to(dtype)
    pos = torch.from_numpy(data["position_ids"])
    ids = torch.from_numpy(data["input_ids"])[None]
    frames = torch.tensor([pv.shape[0]])
    video = model.config.video_token_id
    state = {}
    with torch.inference_mode():
        def vision():
            state["features"] = model.model.get_video_features(pv, pos, num_frames_per_video=frames)

        def prefill():
            out = model(input_ids=ids, pixel_values_videos=pv, video_position_ids=pos, num_frames_per_video=frames,
                        mm_token_type_ids=(ids == video).long() * 2, use_cache=True, logits_to_keep=1)
            return out.logits[0, -1].argmax(), cache_of(out)

        def decode(started):
            token, cache = started
            tokens = [int(token)]
            for _ in range(DECODE_TOKENS):
                out = model(input_ids=token.view(1, 1), **with_cache(model, cache), use_cache=True)
                cache = cache_of(out)
                token = out.logits[0, -1].argmax()
                tokens.append(int(token))
            return tokens

        # transformers' prefill re-encodes the video: its vision time is inside "prefill" too
        result = _passes(vision, prefill, decode)
    result["ttft_s"] = result["prefill_s"]
    return result


def run_onnx(workdir: Path, threads: int, precision: str) -> dict:
    from edgevid.model.generate import PromptInputs, decode_steps, prompt_embeddings
    from edgevid.model.manifest import ModelFolder
    from edgevid.model.providers import select_providers
    from edgevid.model.sampling import greedy
    from edgevid.model.sessions import (
        DecoderSession, EmbedSession, SessionConfig, VisionEncoderSession, merge_vision_features,
    )

    folder = ModelFolder.load(workdir / "model")
    choice = select_providers("cpu", ["CPUExecutionProvider"])
    config = SessionConfig(threads=threads)
    vision_session = VisionEncoderSession(folder.graph_path("vision_encoder", precision), choice, config)
    embed = EmbedSession(folder.graph_path("embed_tokens", precision), choice, config,
                         placeholder_ids=[folder.special.image, folder.special.video], pad_id=folder.special.pad)
    decoder = DecoderSession(folder.graph_path("decoder", precision), choice, config)
    data = np.load(workdir / "inputs.npz")
    pv, pos, ids = data["pixel_values"], data["position_ids"], data["input_ids"]
    positions = np.flatnonzero(ids == folder.special.video)
    state = {}

    def vision():
        state["features"] = vision_session.encode(pv, pos)

    def prefill():
        embeddings = prompt_embeddings(embed, decoder, ids)
        merge_vision_features(embeddings.inputs_embeds, [positions], [state["features"]])
        steps = decode_steps(decoder, embed, PromptInputs(ids, embeddings), greedy)
        return steps, next(steps)

    def decode(started):
        steps, first = started
        tokens = [first] + [next(steps) for _ in range(DECODE_TOKENS)]
        steps.close()
        return tokens

    return _passes(vision, prefill, decode)


def side(kind: str, precision: str, workdir: Path, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--side", kind, "--precision", precision, "--workdir", str(workdir),
           "--threads", str(threads)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - t, 1)
    return result


# ---- parent ---------------------------------------------------------------------------------------------
def load_line() -> str:
    import psutil

    one, five, fifteen = psutil.getloadavg()
    return (f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {psutil.cpu_count()} cores, "
            f"{psutil.virtual_memory().available / GB:.1f} GB RAM available")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-torch-fp32", action="store_true",
                        help="PyTorch eager fp32 holds 21 GB of weights: skip it on smaller machines")
    parser.add_argument("--keep-fp32-graphs", action="store_true",
                        help="keep the fp32 ONNX graphs (23 GB) after measuring them")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--side", choices=["torch", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if args.side == "torch":
        print(json.dumps(run_torch(workdir, args.threads, args.precision)))
        return
    if args.side == "onnx":
        print(json.dumps(run_onnx(workdir, args.threads, args.precision)))
        return

    sys.path.insert(0, str(HERE))
    from real_size_checkpoint import build

    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine_at_start": load_line()}
    print(results["machine_at_start"], flush=True)
    checkpoint = workdir / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        results["checkpoint"] = timed([sys.executable, str(HERE / "real_size_checkpoint.py"), "--output",
                                       str(checkpoint)], workdir / "checkpoint.log")
    results["checkpoint_gb"] = round(folder_bytes(checkpoint, "*.safetensors") / GB, 2)
    model = workdir / "model"
    if not (model / "edgevid.json").is_file():
        results["export"] = timed([sys.executable, "-m", "edgevid", "export", "--model", str(checkpoint),
                                   "--output", str(model), "--precision", "fp32,q4"], workdir / "export.log")
        results["export"]["stages"] = [line.split("edgevid export: ", 1)[1] for line in
                                       (workdir / "export.log").read_text().splitlines() if " done in " in line]
        results["export"]["load"] = load_line()
        print(json.dumps(results["export"], indent=2), flush=True)
    manifest = json.loads((model / "edgevid.json").read_text())
    results["disk_gb"] = {p: round(e["size_bytes"] / GB, 2) for p, e in manifest["precisions"].items()}
    results["parity"] = manifest.get("parity")
    clip = workdir / "clip_720p.mp4"
    if not clip.is_file():
        make_clip(clip)
    if not (workdir / "inputs.npz").is_file():
        make_inputs(clip, workdir / "inputs.npz")
    results["prompt_tokens"] = int(len(np.load(workdir / "inputs.npz")["input_ids"]))
    sides = {"onnx q4": ("onnx", "q4"), "onnx fp32": ("onnx", "fp32"), "torch bf16": ("torch", "bf16")}
    if not args.skip_torch_fp32:
        sides["torch fp32"] = ("torch", "fp32")
    results["sides"] = {}
    for name, (kind, precision) in sides.items():
        if kind == "onnx" and precision not in manifest["precisions"]:
            continue
        results["sides"][name] = side(kind, precision, workdir, args.threads)
        results["sides"][name]["load"] = load_line()
        print(name, json.dumps(results["sides"][name]), flush=True)
    run_cmd = [sys.executable, "-m", "edgevid", "run", "--model", str(model), "--precision", "q4", "--video",
               str(clip), "-i", QUESTION, "--max-tokens", "16", "--json"]
    results["run_q4"] = timed(run_cmd, workdir / "run_q4.log")
    results["run_q4"]["load"] = load_line()
    print("edgevid run q4", json.dumps(results["run_q4"]), flush=True)
    print("\n".join(table(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep_fp32_graphs:
        for path in model.glob("*.onnx*"):
            if not any(tag in path.name for tag in ("_q4", "_quantized", "_fp16")):
                path.unlink()


def table(results: dict) -> list[str]:
    lines = [f"{'side':<12}{'vision':>9}{'prefill':>9}{'TTFT':>9}{'decode':>12}{'peak RSS':>10}"]
    for name, r in results["sides"].items():
        if "error" in r:
            lines.append(f"{name:<12} {r['error']}")
            continue
        lines.append(f"{name:<12}{r['vision_s']:>8.1f}s{r['prefill_s']:>8.1f}s{r['ttft_s']:>8.1f}s"
                     f"{r['decode_tok_s']:>8.2f} t/s{r['peak_rss_gb']:>7.2f} GB")
    q4 = results["sides"].get("onnx q4", {})
    for name in ("torch bf16", "torch fp32"):
        base = results["sides"].get(name, {})
        if "decode_tok_s" in q4 and "decode_tok_s" in base:
            lines.append(f"q4 decode vs {name}: {q4['decode_tok_s'] / base['decode_tok_s']:.2f}x (goal 2.5x)")
    if "export" in results:
        lines.append(f"export fp32,q4: peak RSS {results['export']['peak_rss_gb']} GB (goal <= 12), "
                     f"{results['export']['wall_s']:.0f} s")
    lines.append(f"edgevid run q4: peak RSS {results['run_q4']['peak_rss_gb']} GB (goal <= 3), "
                 f"{results['run_q4']['wall_s']:.0f} s")
    lines.append(f"disk: checkpoint {results['checkpoint_gb']} GB, " +
                 ", ".join(f"{p} {gb} GB" for p, gb in results["disk_gb"].items()))
    return lines


if __name__ == "__main__":
    main()
