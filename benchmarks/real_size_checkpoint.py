"""A random-weight Gemma 4 checkpoint at real size (transformers' ``Gemma4TextConfig()`` and
``Gemma4VisionConfig()`` defaults: 5.25 B parameters with the per-layer embedding table), saved in bf16
like the published one, built without ever holding the model in memory.

    python benchmarks/real_size_checkpoint.py --output /work/scratch/e2b-random

The model is created with its parameters on the meta device; each module is then materialised alone,
initialised by transformers' own ``_init_weights`` (what ``Gemma4ForConditionalGeneration(config)`` draws),
cast to bf16 and streamed into safetensors shards. ``--init randomised`` also draws the norm scales, layer
scalars and zero-initialised tensors at random as tests/gemma_configs.py does; at this depth that network is
chaotic (PyTorch's sdpa and eager disagree on 5.5% of next-token argmaxes, docs/real-size.md), so no two
implementations can agree token for token and the parity gate cannot pass on it. The two embedding tables are drawn in row chunks. Peak RSS stays near
one module plus one chunk (~1 GB), not the 11.6 GB of ``Gemma4ForConditionalGeneration(config)`` +
``save_pretrained``. The tokenizer is the demo one (``edgevid_export.demo``), its special-token ids
written into the config, so ``edgevid run`` works on the export.
"""
from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

from edgevid_export.skeleton import parameters_on_meta

SHARD_BYTES = 2 * 1024 ** 3
CHUNK_ROWS = 16384
STD = 0.02


def real_size_config(text_overrides: dict | None = None, vision_overrides: dict | None = None):
    """``Gemma4Config`` with the default (E2B-size) text and vision configs and the demo tokenizer's ids."""
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    from edgevid_export.demo import demo_token_ids

    ids = demo_token_ids()
    eos = [ids.eos, ids.end_of_turn]
    text = Gemma4TextConfig(pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos, **(text_overrides or {}))
    vision = Gemma4VisionConfig(**(vision_overrides or {}))
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None, boi_token_id=ids.boi, eoi_token_id=ids.eoi,
        image_token_id=ids.image, video_token_id=ids.video, audio_token_id=ids.audio, boa_token_id=ids.boa,
        eoa_token_index=ids.eoa, pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos,
        tie_word_embeddings=True,
    )




def _randomise(tensor, generator) -> None:
    """As tests/gemma_configs.build_random_model: ones -> 1 + 0.2 N, zeros -> 0.1 N (finite tensors only)."""
    import torch

    if not tensor.is_floating_point() or not tensor.numel() or not torch.isfinite(tensor).all():
        return
    if bool((tensor == 1).all()):
        tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
    elif bool((tensor == 0).all()):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


class _ShardWriter:
    """safetensors files written tensor by tensor (header first: every shape is known up front)."""

    def __init__(self, folder: Path, plan: list[list[tuple[str, tuple, str]]]):
        self.folder, self.plan = folder, plan
        self.names = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
        self.where = {key: self.names[i] for i, shard in enumerate(plan) for key, _, _ in shard}
        self.files: dict = {}
        self.open_shard = -1

    def _open(self, index: int):
        if self.files:
            self.files.pop("handle").close()
        entries, offset = {}, 0
        for key, shape, dtype in self.plan[index]:
            size = _numel(shape) * (2 if dtype == "BF16" else 4)
            entries[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        entries["__metadata__"] = {"format": "pt"}
        header = json.dumps(entries, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        handle = open(self.folder / self.names[index], "wb")
        handle.write(struct.pack("<Q", len(header)) + header)
        self.files["handle"] = handle
        self.open_shard = index

    def write(self, key: str, data: bytes) -> None:
        index = self.names.index(self.where[key])
        if index != self.open_shard:
            self._open(index)
        self.files["handle"].write(data)

    def close(self, total_size: int) -> None:
        if self.files:
            self.files.pop("handle").close()
        index = {"metadata": {"total_size": total_size}, "weight_map": self.where}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _bf16_bytes(tensor) -> bytes:
    import torch

    return tensor.detach().to(torch.bfloat16).contiguous().view(torch.uint16).numpy().tobytes()


def build(output: Path, config=None, seed: int = 0, progress=print, init: str = "transformers") -> dict:
    """Write the checkpoint (weights, config, generation config, demo tokenizer, processor config)."""
    import torch
    from torch import nn
    from transformers import Gemma4ForConditionalGeneration, GenerationConfig

    from edgevid_export.demo import build_demo_tokenizer, demo_token_ids

    config = config or real_size_config()
    output.mkdir(parents=True, exist_ok=True)
    with parameters_on_meta():
        model = Gemma4ForConditionalGeneration(config).eval()
    state = model.state_dict(keep_vars=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    owner = {}                                        # state key -> (module, attribute)
    for module_name, module in model.named_modules():
        for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            key = f"{module_name}.{attr}" if module_name else attr
            if key in state and key not in tied:
                owner[key] = (module, attr)
    keys = [k for k in state if k in owner]
    plan, shard, size = [], [], 0
    for key in keys:
        tensor = state[key]
        dtype = "BF16" if tensor.is_floating_point() else {torch.int64: "I64", torch.bool: "BOOL"}[tensor.dtype]
        nbytes = tensor.numel() * (2 if dtype == "BF16" else tensor.element_size())
        if shard and size + nbytes > SHARD_BYTES:
            plan.append(shard)
            shard, size = [], 0
        shard.append((key, tuple(tensor.shape), dtype))
        size += nbytes
    plan.append(shard)
    writer = _ShardWriter(output, plan)
    generator = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed)
    done: set = set()
    total, t0 = 0, time.perf_counter()
    for key in keys:
        module, attr = owner[key]
        if key in done:
            continue
        if isinstance(module, nn.Embedding):
            rows, cols = module.weight.shape
            for start in range(0, rows, CHUNK_ROWS):
                chunk = torch.randn(min(CHUNK_ROWS, rows - start), cols, generator=generator) * STD
                writer.write(key, _bf16_bytes(chunk))
            total += rows * cols * 2
            done.add(key)
            module.to_empty(device="meta", recurse=False)
            continue
        module_keys = [k for k in keys if owner[k][0] is module]
        with torch.no_grad():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    module._parameters[name] = nn.Parameter(torch.zeros(param.shape, dtype=param.dtype),
                                                            requires_grad=False)
            model._init_weights(module)
            for k in module_keys:
                tensor = getattr(module, owner[k][1])
                if init == "randomised":
                    _randomise(tensor, generator)
                data = _bf16_bytes(tensor) if tensor.is_floating_point() else tensor.contiguous().numpy().tobytes()
                writer.write(k, data)
                total += len(data)
                done.add(k)
            module.to_empty(device="meta", recurse=False)
        if len(done) % 200 < len(module_keys):
            progress(f"  {len(done)}/{len(keys)} tensors, {total / 1e9:.2f} GB, {time.perf_counter() - t0:.0f} s")
    writer.close(total)
    ids = demo_token_ids()
    config.save_pretrained(output)
    GenerationConfig(bos_token_id=ids.bos, pad_token_id=ids.pad, eos_token_id=[ids.eos, ids.end_of_turn],
                     do_sample=False, max_new_tokens=64).save_pretrained(output)
    build_demo_tokenizer(output)
    params = sum(_numel(shape) for shard in plan for _, shape, _ in shard)
    return {"parameters": params, "bytes": total, "shards": len(plan), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", choices=["transformers", "randomised"], default="transformers",
                        help="transformers' own initialisation (default) or norms and scalars drawn at random too")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.output, seed=args.seed, init=args.init), indent=2))


if __name__ == "__main__":
    main()
