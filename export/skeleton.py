"""Export graphs from a weightless model, with the weights streamed from the checkpoint into the data file.

The exporter needs only the shapes of the weights: the model is built with fake parameters
(``FakeTensorMode``), traced and translated to ONNX without a byte of weight data, and every initializer is
then bound to a reader of the checkpoint tensor it came from (:class:`CheckpointTensor`). Saving writes the
initializers one at a time (row chunks for the big ones), bf16 -> fp32 on the way, so an export costs about
one tensor of memory beyond the graph structure, whatever the model's size. Loading a 5 B-parameter
checkpoint in fp32 and exporting it through torch held ~3x its fp32 weights (24 GB and the OOM killer on a
24 GB machine); this path peaks at a few GB (numbers in docs/real-size.md).

Two things the exporter would otherwise do with real weights are done here lazily instead:
- ``Transpose`` of a weight (every ``nn.Linear``) is folded into a transposed reader, not into an in-memory
  copy (the optimiser's constant folding would materialise every weight).
- Non-persistent buffers (rotary inverse frequencies) are computed by the model's own code at build time:
  parameters go to the meta device, buffers stay real (:func:`parameters_on_meta`).
"""
from __future__ import annotations

import contextlib
import functools
import logging

import numpy as np

from edgevid.errors import ExportError

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024 ** 2
FOLD_LIMIT = 8192          # constant folding of nodes reading a bigger weight is left to onnxruntime


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get their parameters on the meta device (buffers stay real: rotary tables)."""
    import torch
    from torch import nn

    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        with torch.no_grad():
            yield
    finally:
        nn.Module.register_parameter = original


class Skeleton:
    """A ``Gemma4ForConditionalGeneration`` whose parameters and buffers are fake tensors of ``mode``.

    ``sources`` maps each fake tensor (by id) to the checkpoint key it stands for; ``buffers`` maps the
    fake buffers to their real values.
    """

    def __init__(self, config):
        import torch
        from torch import nn
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers import Gemma4ForConditionalGeneration

        self.mode = FakeTensorMode()
        with parameters_on_meta():
            self.model = Gemma4ForConditionalGeneration(config).eval()
        self.config = self.model.config
        self.sources: dict[int, str] = {}
        self.buffers: dict[int, np.ndarray] = {}
        fakes: dict[int, nn.Parameter] = {}          # tied parameters stay tied
        for module_name, module in self.model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                fake = fakes.get(id(param))
                if fake is None:
                    with self.mode:
                        fake = nn.Parameter(torch.empty(param.shape, dtype=param.dtype), requires_grad=False)
                    fakes[id(param)] = fake
                    self.sources[id(fake)] = prefix + name
                module._parameters[name] = fake
            for name, buffer in list(module._buffers.items()):
                if buffer is None:
                    continue
                fake = self.mode.from_tensor(buffer)
                self.sources[id(fake)] = prefix + name
                self.buffers[id(fake)] = buffer.detach().cpu().numpy().copy()
                module._buffers[name] = fake
        self.generation_config = self.model.generation_config

    def example(self, fn):
        """Run ``fn()`` (which builds example inputs) inside the fake mode."""
        with self.mode:
            return fn()


def checkpoint_key(name: str, checkpoint) -> str:
    """The checkpoint key of a model state name (the tied lm_head reads the embedding table)."""
    if name in checkpoint:
        return name
    if name == "lm_head.weight" and "model.language_model.embed_tokens.weight" in checkpoint:
        return "model.language_model.embed_tokens.weight"
    raise ExportError(f"the checkpoint has no tensor for {name}", source=str(checkpoint.folder))


@functools.cache
def _checkpoint_tensor_class():
    import onnx_ir as ir

    class CheckpointTensor(ir.LazyTensor):
        """A checkpoint tensor as fp32 (optionally permuted), written to files in row chunks."""

        def __init__(self, checkpoint, key: str, shape, perm=None, name=None):
            self.checkpoint, self.key, self.perm = checkpoint, key, perm
            super().__init__(self._load, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape), name=name)

        def _load(self):
            array = self.checkpoint.read(self.key).astype(np.float32, copy=False)
            if self.perm is not None:
                array = np.ascontiguousarray(np.transpose(array, self.perm))
            return ir.Tensor(array, name=self.name)

        def tofile(self, file) -> None:
            info = self.checkpoint.infos[self.key]
            if self.perm is not None or len(info.shape) < 2:
                return super().tofile(file)
            rows = max(1, CHUNK_BYTES // max(1, (info.numel // info.shape[0]) * 4))
            for start in range(0, info.shape[0], rows):
                chunk = self.checkpoint.read(self.key, start, start + rows)
                file.write(np.ascontiguousarray(chunk, dtype=np.float32).data)

    return CheckpointTensor


def bind_weights(onnx_model, module, skeleton: Skeleton, checkpoint) -> int:
    """Point every initializer of ``onnx_model`` (exported from ``module`` of ``skeleton``) at its checkpoint
    tensor or real buffer value. Returns the number of initializers bound to the checkpoint."""
    import onnx_ir as ir
    from torch._subclasses.fake_tensor import is_fake

    CheckpointTensor = _checkpoint_tensor_class()
    by_name = {}
    for name, tensor in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)):
        by_name[name] = tensor
    bound = 0
    for name, value in onnx_model.graph.initializers.items():
        const = value.const_value
        raw = getattr(const, "raw", None)
        if raw is None or not hasattr(raw, "shape") or not is_fake(raw):
            continue
        original = value.metadata_props.get("pkg.torch.onnx.original_node_name", name)
        tensor = by_name.get(name, by_name.get(original, raw))
        key = skeleton.sources.get(id(tensor)) or skeleton.sources.get(id(raw))
        if key is None:
            raise ExportError(f"export: initializer {name} is not a weight or buffer of the model")
        is_buffer = id(tensor) in skeleton.buffers or id(raw) in skeleton.buffers
        if is_buffer and key not in checkpoint:        # computed at build time (rotary tables), not stored
            array = skeleton.buffers.get(id(tensor), skeleton.buffers.get(id(raw)))
            value.const_value = ir.Tensor(np.ascontiguousarray(array), name=name)
            continue
        value.const_value = CheckpointTensor(checkpoint, checkpoint_key(key, checkpoint), tuple(raw.shape), name=name)
        bound += 1
    return bound


def fold_weight_transposes(onnx_model) -> int:
    """``Transpose(weight)`` read by one node -> a weight read transposed from the checkpoint."""
    import onnx_ir as ir

    CheckpointTensor = _checkpoint_tensor_class()
    graph = onnx_model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        source = node.inputs[0]
        const = source.const_value if source is not None else None
        if not isinstance(const, CheckpointTensor) or const.perm is not None or len(source.uses()) != 1:
            continue
        perm_attr = node.attributes.get("perm")
        perm = tuple(perm_attr.value) if perm_attr is not None else tuple(reversed(range(len(const.shape))))
        shape = tuple(const.shape[p] for p in perm)
        out = node.outputs[0]
        name = f"{source.name}.T" if perm == (1, 0) else f"{source.name}.perm"
        replacement = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                               const_value=CheckpointTensor(const.checkpoint, const.key, shape, perm=perm, name=name))
        graph.register_initializer(replacement)
        out.replace_all_uses_with(replacement)
        graph.remove(node, safe=True)
        graph.initializers.pop(source.name, None)
        folded += 1
    return folded


def optimize_without_weights(onnx_model) -> None:
    """onnxscript's optimiser minus what would read every weight (folding big inputs, deduplication)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding

    def should_fold(node):
        for value in node.inputs:
            const = value.const_value if value is not None else None
            if const is not None and const.size > FOLD_LIMIT:
                return False
        return None

    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager([
            _constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=FOLD_LIMIT,
                                                output_size_limit=512 * 512, should_fold=should_fold),
            rewriter.RewritePass(rewriter._DEFAULT_REWRITE_RULES),
            common_passes.RemoveUnusedNodesPass(),
            common_passes.RemoveUnusedFunctionsPass(),
            common_passes.RemoveUnusedOpsetsPass(),
        ], steps=2, early_stop=True),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    passes(onnx_model)
