"""edgevid against onnxruntime-genai on the same dense Gemma 4 text decoder, each side its own process.

    python benchmarks/bench_genai.py --genai-python /path/to/venv-genai/bin/python
    python benchmarks/bench_genai.py --genai-python ... --rounds 3 --prompts 2000,100 --threads 2

onnxruntime-genai builds Gemma 4 text decoders only (no vision, no per-layer inputs, no KV sharing), and
its builder needs transformers <= 5.14 and the ``Gemma4UnifiedForConditionalGeneration`` label for a
dense decoder, so it lives in its own venv (``--genai-python``: onnxruntime-genai 0.18, transformers
5.14, torch, onnx-ir and onnxscript, which its builder imports). The model (random seeded weights, 257.5M
parameters): hidden 1024, 12 layers, 9 sliding (window 512) + 3 full, 8 query / 2 KV heads, head dim 128 (256 on full layers), vocab 65,536. edgevid
exports it with its own exporter (fp32, q4); genai builds fp32 and int4 with ``prune_lm_head=true``
(``--genai-all-logits`` builds the default, every prompt position's logits, instead).

``--checkpoint DIR`` compares on an existing dense Gemma 4 checkpoint instead (its text decoder; use a fresh
``--workdir`` per checkpoint), and ``--prompt-file F`` (repeatable) times your own prompts: a ``.npy`` of
token ids, or text, tokenised with the checkpoint's tokenizer (``<bos>`` added). Without prompt files, the
prompts are seeded random ids of the ``--prompts`` lengths.

Per run, a fresh process: load, then time to first token (embedding + prefill + first greedy token) on the
prompt, then 64 greedy tokens (decode tokens/s over the 63 steps after the first), and the process's peak
RSS. Sides interleaved A B A B for ``--rounds``; medians and ranges (min-max) reported with the load
average. fp32 greedy tokens are compared between the sides.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from peak_rss import peak_rss_mb

DECODE_TOKENS = 64
SEED = 0


# ---- model ------------------------------------------------------------------------------------------------
def dense_config():
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    from edgevid_export.demo import demo_token_ids

    ids = demo_token_ids()
    eos = [ids.eos, ids.end_of_turn]
    text = Gemma4TextConfig(
        vocab_size=65536, hidden_size=1024, intermediate_size=4096, num_hidden_layers=12,
        layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=128, global_head_dim=256, sliding_window=512,
        max_position_embeddings=8192, hidden_size_per_layer_input=0, vocab_size_per_layer_input=65536,
        num_kv_shared_layers=0, final_logit_softcapping=30.0, pad_token_id=ids.pad, bos_token_id=ids.bos,
        eos_token_id=eos,
    )
    vision = Gemma4VisionConfig(       # a small tower: the exporter writes one; nobody times it here
        hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, patch_size=16, pooling_kernel_size=3, position_embedding_size=1024,
    )
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None, boi_token_id=ids.boi, eoi_token_id=ids.eoi,
        image_token_id=ids.image, video_token_id=ids.video, audio_token_id=ids.audio, boa_token_id=ids.boa,
        eoa_token_index=ids.eoa, pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos,
        tie_word_embeddings=True,
    )


def build_checkpoint(folder: Path) -> None:
    import torch
    from transformers import Gemma4ForConditionalGeneration, GenerationConfig

    from edgevid_export.demo import build_demo_tokenizer, write_processor_config

    torch.manual_seed(SEED)
    model = Gemma4ForConditionalGeneration(dense_config()).eval()
    text_params = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n)
    model.generation_config = GenerationConfig(do_sample=False)
    model.save_pretrained(folder)
    build_demo_tokenizer(folder)
    write_processor_config(folder)
    print(f"checkpoint: {text_params / 1e6:.1f}M text parameters -> {folder}", flush=True)


def export_edgevid(checkpoint: Path, out: Path) -> None:
    from edgevid_export.convert import export_model

    export_model(checkpoint, out, precisions=("fp32", "q4"), validate=False,
                 progress=lambda line: print("  " + line, flush=True))


def build_genai(python: str, checkpoint: Path, out: Path, precision: str, all_logits: bool, threads: int) -> None:
    """onnxruntime-genai's builder on a copy of the checkpoint labelled as its dense Gemma 4 path."""
    labelled = out.parent / "genai-checkpoint"
    if not labelled.is_dir():
        shutil.copytree(checkpoint, labelled)
        config = json.loads((labelled / "config.json").read_text())
        config["architectures"] = ["Gemma4UnifiedForConditionalGeneration"]
        # transformers 5.14 reads per-type attention geometry from flat fields, not per_layer_config
        text = config["text_config"]
        overrides = {int(k): v for k, v in text.pop("per_layer_config", {}).items()}
        full = [i for i, t in enumerate(text["layer_types"]) if t == "full_attention"]
        text["global_head_dim"] = overrides.get(full[0], {}).get("head_dim", text["head_dim"])
        text["num_global_key_value_heads"] = overrides.get(full[0], {}).get("num_key_value_heads",
                                                                           text["num_key_value_heads"])
        (labelled / "config.json").write_text(json.dumps(config, indent=1))
    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-m", str(labelled), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(out.parent / "genai-cache")]
    if not all_logits:
        cmd += ["--extra_options", "prune_lm_head=true"]
    print("  " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    config_path.write_text(json.dumps(config, indent=1))


def write_random_prompt(workdir: Path, n: int) -> str:
    """``n`` seeded random ids after <bos> (both sides read the same file); returns the prompt's label."""
    from edgevid_export.demo import demo_token_ids

    rng = np.random.default_rng(SEED + n)
    np.save(workdir / f"prompt-{n}.npy",
            np.concatenate([[demo_token_ids().bos], rng.integers(300, 60000, n - 1)]).astype(np.int64))
    return str(n)


def write_file_prompt(workdir: Path, source: Path, checkpoint: Path, index: int) -> str:
    """A user's prompt: ``.npy`` token ids as they are, anything else read as text and tokenised with the
    checkpoint's tokenizer. Returns its label (its place on the command line and the file's stem)."""
    if source.suffix == ".npy":
        ids = np.load(source).reshape(-1).astype(np.int64)
    else:
        from transformers import AutoTokenizer

        text = source.read_text(encoding="utf-8")
        ids = np.asarray(AutoTokenizer.from_pretrained(checkpoint)(text)["input_ids"], dtype=np.int64)
    if ids.size == 0:
        raise SystemExit(f"{source}: empty prompt")
    label = f"file{index}-{source.stem.replace(':', '_')}"
    np.save(workdir / f"prompt-{label}.npy", ids)
    return label


def prompt_ids(workdir: Path, label: str) -> np.ndarray:
    return np.load(workdir / f"prompt-{label}.npy")


def use_checkpoint(workdir: Path, checkpoint: Path | None) -> Path:
    """The checkpoint both sides are built from: ``checkpoint`` (recorded, so a workdir holding another
    model's exports is refused) or the seeded one built into ``workdir``."""
    record = workdir / "source.json"
    source = str(checkpoint.resolve()) if checkpoint else "seeded"
    if record.is_file() and json.loads(record.read_text())["checkpoint"] != source:
        raise SystemExit(f"{workdir} holds exports of {json.loads(record.read_text())['checkpoint']}; "
                         f"use another --workdir for {source}")
    record.write_text(json.dumps({"checkpoint": source}))
    if checkpoint:
        if not (checkpoint / "config.json").is_file():
            raise SystemExit(f"{checkpoint}: no config.json (a Gemma 4 checkpoint folder)")
        return checkpoint
    built = workdir / "checkpoint"
    if not (built / "config.json").is_file():
        build_checkpoint(built)
    return built


# ---- sides (each in its own process) ---------------------------------------------------------------------
def run_edgevid(model: Path, precision: str, ids: np.ndarray, threads: int, spinning: bool,
                profile: Path | None = None) -> dict:
    import edgevid.model.sessions as sessions
    from edgevid.model.generate import PromptInputs, decode_steps, prefill, prompt_embeddings
    from edgevid.model.manifest import ModelFolder
    from edgevid.model.providers import select_providers
    from edgevid.model.sampling import greedy
    from edgevid.model.sessions import DecoderSession, EmbedSession, SessionConfig

    folder = ModelFolder.load(model)
    choice = select_providers("cpu", ["CPUExecutionProvider"])
    config = SessionConfig(threads=threads, spinning=spinning)
    if profile:                 # onnxruntime's profiler on the decoder only
        options = sessions.session_options

        def profiled(config, **kw):
            so = options(config, **kw)
            if kw.get("label", "").startswith("decoder"):
                so.enable_profiling, so.profile_file_prefix = True, str(profile / "edgevid")
            return so
        sessions.session_options = profiled
    embed = EmbedSession(folder.graph_path("embed_tokens", precision), choice, config,
                         placeholder_ids=[folder.special.image, folder.special.video], pad_id=folder.special.pad)
    decoder = DecoderSession(folder.graph_path("decoder", precision), choice, config)
    t = time.perf_counter()
    prompt = PromptInputs(ids, prompt_embeddings(embed, decoder, ids))
    # as Pipeline.chat does: the cache is sized for the prompt and the tokens to come (genai: max_length)
    steps = decode_steps(decoder, embed, prompt, greedy, prefilled=prefill(decoder, prompt, room=DECODE_TOKENS))
    tokens = [next(steps)]
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    tokens += [next(steps) for _ in range(DECODE_TOKENS - 1)]
    decode = time.perf_counter() - t
    steps.close()
    result = _result(ttft, decode, tokens)
    if profile:
        result["profile"] = decoder.session.end_profiling()
    return result


def run_genai(model: Path, ids: np.ndarray, profile: Path | None = None) -> dict:
    import onnxruntime_genai as og

    if profile:                 # a copy of the model folder whose config turns onnxruntime's profiler on
        copy = profile / "genai-model"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        for f in model.iterdir():
            if f.is_file() and f.name != "genai_config.json":
                os.link(f, copy / f.name)
        config = json.loads((model / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["enable_profiling"] = str(profile / "genai")
        (copy / "genai_config.json").write_text(json.dumps(config, indent=1))
        model = copy
    m = og.Model(str(model))
    params = og.GeneratorParams(m)
    params.set_search_options(max_length=max(len(ids) + DECODE_TOKENS, 512), do_sample=False)
    generator = og.Generator(m, params)
    t = time.perf_counter()
    generator.append_tokens(ids.astype(np.int32))
    generator.generate_next_token()
    tokens = [int(generator.get_next_tokens()[0])]
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(DECODE_TOKENS - 1):
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    decode = time.perf_counter() - t
    result = _result(ttft, decode, tokens)
    if profile:
        del generator, params, m            # the profile is written when the session closes
        result["profile"] = str(max(profile.glob("genai*.json"), key=lambda f: f.stat().st_mtime))
        shutil.rmtree(model)
    return result


def step_profile(path: str, steps: int = 50) -> dict:
    """Per decode step, from an onnxruntime profile: run wall time, kernel time by operator type and
    node count, over the last ``steps`` runs (all decode steps: the prefill runs come first)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-steps:]
    first = runs[0]["ts"]
    ops: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            op = ops.setdefault(e["args"].get("op_name", "?"), [0.0, 0])
            op[0] += e["dur"] / 1000 / len(runs)
            op[1] += 1 / len(runs)
    return {"run_ms": sum(r["dur"] for r in runs) / 1000 / len(runs), "ops": ops}


def _result(ttft: float, decode: float, tokens: list[int]) -> dict:
    return {"ttft_s": ttft, "decode_tok_s": (DECODE_TOKENS - 1) / decode, "tokens": tokens,
            "peak_rss_mb": peak_rss_mb()}


# ---- parent -------------------------------------------------------------------------------------------------
def side_command(args, side: str, precision: str, label: str, spinning: bool = True,
                 profile: Path | None = None) -> list[str]:
    python = sys.executable if side == "edgevid" else args.genai_python
    cmd = [python, __file__, "--side", side, "--precision", precision, "--label", label, "--workdir",
           str(args.workdir), "--threads", str(args.threads)]
    return cmd + (["--spin"] if spinning else []) + (["--profile-dir", str(profile)] if profile else [])


def print_profiles(label: str, n: int, ours: str, theirs: str, a: dict, b: dict) -> None:
    print(f"\nPer decode step, {label} ({n} tokens), {ours} / {theirs} (onnxruntime profiler, last 50 steps; "
          f"kernel ms, nodes):\n")
    print("| operator | edgevid ms | edgevid nodes | genai ms | genai nodes |")
    print("|---|---|---|---|---|")
    ops = sorted(set(a["ops"]) | set(b["ops"]), key=lambda op: -max(a["ops"].get(op, [0])[0], b["ops"].get(op, [0])[0]))
    cell = lambda p, op: (f"{p['ops'][op][0]:.3f} | {p['ops'][op][1]:.0f}" if op in p["ops"] else "- | -")  # noqa: E731
    for op in ops:
        print(f"| {op} | {cell(a, op)} | {cell(b, op)} |")
    total = lambda p: (sum(v[0] for v in p["ops"].values()), sum(v[1] for v in p["ops"].values()))  # noqa: E731
    print(f"| all kernels | {total(a)[0]:.3f} | {total(a)[1]:.0f} | {total(b)[0]:.3f} | {total(b)[1]:.0f} |")
    print(f"| run (wall) | {a['run_ms']:.3f} | | {b['run_ms']:.3f} | |")


def run_side(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def paired(a_rows, b_rows) -> str:
    """The decode ratio of each round's A B pair (run minutes apart, so one machine phase): min-max."""
    ratios = [a["decode_tok_s"] / b["decode_tok_s"] for a, b in zip(a_rows, b_rows)]
    return f"rounds {min(ratios):.2f}-{max(ratios):.2f}x"


def spread(rows, key, digits: int) -> str:
    """``median (min-max)`` of one measure over the rounds."""
    values = [r[key] for r in rows]
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-genai"))
    parser.add_argument("--genai-python", help="python of a venv with onnxruntime-genai 0.18 + transformers 5.14")
    parser.add_argument("--checkpoint", type=Path, help="an existing dense Gemma 4 checkpoint (default: build the "
                        "seeded 257.5M one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", default="2000,100", help="random prompt lengths in tokens, comma-separated")
    parser.add_argument("--prompt-file", type=Path, action="append", default=[],
                        help="a prompt of your own (.npy token ids, or text); repeatable; replaces --prompts")
    parser.add_argument("--precisions", default="fp32:fp32,q4:int4", help="edgevid:genai pairs")
    parser.add_argument("--genai-all-logits", action="store_true", help="genai without prune_lm_head")
    parser.add_argument("--no-spin", action="store_true", help="edgevid with intra-op spinning off")
    parser.add_argument("--compare-spinning", action="store_true",
                        help="A = edgevid spinning on, B = edgevid spinning off (no genai)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: one profiled run per side, where a decode step's time goes")
    parser.add_argument("--json", type=Path, help="also write every run here")
    parser.add_argument("--side", choices=["edgevid", "genai"], help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--spin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    genai_dir = lambda p: args.workdir / f"genai-{p}{'-all' if args.genai_all_logits else ''}"  # noqa: E731
    if args.side == "edgevid":
        print(json.dumps(run_edgevid(args.workdir / "edgevid", args.precision, prompt_ids(args.workdir, args.label),
                                     args.threads, args.spin, args.profile_dir)))
        return
    if args.side == "genai":
        print(json.dumps(run_genai(genai_dir(args.precision), prompt_ids(args.workdir, args.label), args.profile_dir)))
        return
    if not args.genai_python and not args.compare_spinning:
        raise SystemExit("--genai-python is required (a venv with onnxruntime-genai 0.18 and transformers 5.14)")
    missing = [str(f) for f in args.prompt_file if not f.is_file()]
    if missing:
        raise SystemExit(f"prompt file not found: {', '.join(missing)}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = use_checkpoint(args.workdir, args.checkpoint)
    if not (args.workdir / "edgevid" / "edgevid.json").is_file():
        export_edgevid(checkpoint, args.workdir / "edgevid")
    pairs = [tuple(p.split(":")) for p in args.precisions.split(",")]
    for _, genai_precision in ([] if args.compare_spinning else pairs):
        if not (genai_dir(genai_precision) / "genai_config.json").is_file():
            build_genai(args.genai_python, checkpoint, genai_dir(genai_precision), genai_precision,
                        args.genai_all_logits, args.threads)
    if args.prompt_file:
        labels = [write_file_prompt(args.workdir, f, checkpoint, i) for i, f in enumerate(args.prompt_file, 1)]
    else:
        labels = [write_random_prompt(args.workdir, int(n)) for n in args.prompts.split(",")]
    if args.profile:
        profiles = args.workdir / "profiles"
        profiles.mkdir(exist_ok=True)
        for label in labels:
            for ours, theirs in pairs:
                a = run_side(side_command(args, "edgevid", ours, label, not args.no_spin, profiles))
                b = run_side(side_command(args, "genai", theirs, label, profile=profiles))
                print_profiles(label, len(prompt_ids(args.workdir, label)), ours, theirs,
                               step_profile(a["profile"]), step_profile(b["profile"]))
        return
    runs: dict = {}
    for label in labels:
        n = len(prompt_ids(args.workdir, label))
        for ours, theirs in pairs:
            a = side_command(args, "edgevid", ours, label, spinning=not args.no_spin)
            b = side_command(args, "genai", theirs, label)
            if args.compare_spinning:
                a, b = side_command(args, "edgevid", ours, label, True), side_command(args, "edgevid", ours, label, False)
                theirs = f"{ours} (no spin)"
            rows = runs.setdefault(f"{label}:{ours}:{theirs}", {"tokens": n, "edgevid": [], "genai": [], "load": []})
            for _ in range(args.rounds):
                rows["edgevid"].append(run_side(a))
                rows["genai"].append(run_side(b))
                rows["load"].append(os.getloadavg()[0])
                print(f"  {label} ({n} tokens), {ours} / {theirs}: " + " | ".join(
                    f"TTFT {r['ttft_s']:.2f} s, {r['decode_tok_s']:.1f} tok/s, {r['peak_rss_mb']:.0f} MB"
                    for r in (rows["edgevid"][-1], rows["genai"][-1])) + f" (load {rows['load'][-1]:.1f})", flush=True)
    if args.compare_spinning:
        print(f"\n{args.threads} threads, {args.rounds} rounds A B interleaved, medians (min-max); A = edgevid "
              f"spinning on, B = off; {os.cpu_count()} CPUs\n")
    else:
        print(f"\n{args.threads} threads, {args.rounds} rounds A B interleaved, medians (min-max); edgevid spinning "
              f"{'off' if args.no_spin else 'on'}; genai "
              f"{'all-position logits' if args.genai_all_logits else 'prune_lm_head'}; {os.cpu_count()} CPUs\n")
    print("| prompt tokens | A | B | TTFT A s | TTFT B s | decode A tok/s | decode B tok/s | decode ratio A/B |"
          " peak RSS A / B MB | tokens | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, rows in runs.items():
        _, ours, theirs = key.split(":")
        e, g = rows["edgevid"], rows["genai"]
        same = e[0]["tokens"] == g[0]["tokens"]
        print(f"| {rows['tokens']} | {ours} | {theirs} | {spread(e, 'ttft_s', 2)} | {spread(g, 'ttft_s', 2)} | "
              f"{spread(e, 'decode_tok_s', 1)} | {spread(g, 'decode_tok_s', 1)} | "
              f"{median(e, 'decode_tok_s') / median(g, 'decode_tok_s'):.2f}x ({paired(e, g)}) | "
              f"{median(e, 'peak_rss_mb'):.0f} / {median(g, 'peak_rss_mb'):.0f} | {'same' if same else 'differ'} | "
              f"{min(rows['load']):.1f}-{max(rows['load']):.1f} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
