"""Graph rewrites for the CPU decoder variant: fewer, fused nodes per decode step, the same numbers.

A decode step runs a few hundred small operators and each costs a dispatch (with intra-op threads, a
wake-up), so on the CPU the node count matters as much as the arithmetic. onnxruntime's own optimiser fuses
an RMSNorm that ends in a weight multiply into ``SimplifiedLayerNormalization``, but not a scale-free one
(Gemma 4's ``v_norm``), never a residual add into the norm that follows it (its skip fusion matches
``LayerNormalization`` only, with static shapes), and it keeps reshape chains, identity multiplies and an
attention bias that is all zeros for an unpadded prompt. These rewrites do that on the variant edgevid's
runtime alone loads (``ring_graph``), which feeds one unpadded row:

- ``Pow(x, 2) -> ReduceMean(-1) -> Add(eps) -> Sqrt -> Div(x, .) [-> Mul(., w)]`` -> ``SimplifiedLayerNormalization``
  (scale-free norms get a weight of ones).
- ``Add(a, b) -> SimplifiedLayerNormalization`` -> ``com.microsoft.SkipSimplifiedLayerNormalization``, whose
  fourth output is the sum the residual stream goes on with.
- ``Mul(x, c)`` with ``c`` a constant scalar 1 -> ``x`` (``x * 1.0`` is ``x`` bit for bit).
- ``Reshape(Reshape(x, s1), s2)`` -> ``Reshape(x, s2)``, and a Reshape to the dims its input has -> its input.
- ``GroupQueryAttention``'s ``attention_bias`` dropped: with every ``attention_mask`` entry 1 it is 0 where
  the kernel's own causal and window rules allow a key and masked where they do not.
- Nodes and initializers left without consumers are removed.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS = "com.microsoft"
GQA_BIAS = 10                       # GroupQueryAttention's attention_bias input


class _Graph:
    """Producers, consumers and constant values of a graph whose initializers may live in external data.
    The rewrites edit ``nodes`` (a plain list: protobuf's repeated field copies what it is given, so node
    identity would not survive an edit there); ``commit`` writes it back."""

    def __init__(self, graph):
        self.graph = graph
        self.nodes = [_copy(n) for n in graph.node]
        self.inits = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in self.nodes if n.op_type == "Constant"}
        self.shapes = {v.name: v.type.tensor_type.shape for v in (*graph.output, *graph.input, *graph.value_info)
                       if v.type.tensor_type.HasField("shape")}
        self.outputs = {o.name for o in graph.output}
        self.refresh()

    def refresh(self) -> None:
        self.captured = set().union(*(_subgraph_names(n) for n in self.nodes))   # read inside If/Loop bodies
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def value(self, name: str) -> np.ndarray | None:
        """A small constant's value (inline initializer or Constant node), else None."""
        tensor = self.inits.get(name)
        if tensor is None and name in self.constants:
            tensor = next((helper.get_attribute_value(a) for a in self.constants[name].attribute if a.name == "value"),
                          None)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(tensor)

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs and name not in self.captured else None

    def kept(self, name: str) -> bool:
        """Read by more than the graph's own nodes (a graph output, or a subgraph's outer-scope input)."""
        return name in self.outputs or name in self.captured

    def rank3_last(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return self.last_dim(name) if shape is not None and len(shape.dim) == 3 else None

    def last_dim(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        if shape is None or not shape.dim or not shape.dim[-1].HasField("dim_value"):
            return None
        return shape.dim[-1].dim_value

    def replace(self, removed: list, added, at) -> None:
        """Drop ``removed`` nodes and put ``added`` where ``at`` stood (inputs of ``at``'s position exist there)."""
        gone = {id(n) for n in removed}
        index = next(i for i, n in enumerate(self.nodes) if n is at)
        self.nodes = ([n for n in self.nodes[:index] if id(n) not in gone] + list(added)
                      + [n for n in self.nodes[index:] if id(n) not in gone])
        self.refresh()

    def bypass(self, node, source: str) -> None:
        """Remove ``node``; its readers read ``source`` instead of its output."""
        for user in self.consumers.get(node.output[0], []):
            user.input[:] = [source if i == node.output[0] else i for i in user.input]
        self.replace([node], [], node)

    def commit(self) -> None:
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)


def _subgraph_names(node) -> set:
    """Every name read inside ``node``'s subgraphs (their own inputs and outputs included: a superset)."""
    names = set()
    for attribute in node.attribute:
        for graph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_names(inner)
    return names


def _copy(node):
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _copy_value(value):
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    return out


def _is_scalar(value, target: float) -> bool:
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == target


def _rms_norm_at(g: _Graph, div):
    """The decomposed RMSNorm ending in ``div`` (and its weight Mul): (nodes, x, weight name, eps, output)."""
    if div.op_type != "Div":
        return None
    x, root = div.input
    sqrt = g.producer.get(root)
    add = g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
    mean = g.producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
    pow_ = g.producer.get(mean.input[0]) if mean is not None and mean.op_type == "ReduceMean" else None
    if pow_ is None or pow_.op_type != "Pow" or pow_.input[0] != x or not _is_scalar(g.value(pow_.input[1]), 2.0):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in mean.attribute}
    axes = g.value(mean.input[1]) if len(mean.input) > 1 else np.asarray(attrs.get("axes", []))
    rank = len(g.shapes[x].dim) if x in g.shapes else None
    if axes is None or axes.size != 1 or int(axes[0]) not in (-1, (rank or 0) - 1) or not attrs.get("keepdims", 1):
        return None
    eps = g.value(add.input[1])
    if eps is None or eps.size != 1 or any(g.only_consumer(n.output[0]) is None for n in (pow_, mean, add, sqrt)):
        return None
    nodes, weight, out = [pow_, mean, add, sqrt, div], None, div.output[0]
    mul = g.only_consumer(div.output[0])
    if mul is not None and mul.op_type == "Mul" and mul.input[0] == div.output[0] and mul.input[1] in g.inits:
        w = g.inits[mul.input[1]]
        if len(w.dims) == 1 and w.dims[0] == g.last_dim(x):
            nodes, weight, out = nodes + [mul], mul.input[1], mul.output[0]
    return nodes, x, weight, float(eps.reshape(-1)[0]), out


def fuse_rms_norms(g: _Graph) -> int:
    count = 0
    for div in [n for n in g.nodes if n.op_type == "Div"]:
        found = _rms_norm_at(g, div)
        if found is None:
            continue
        nodes, x, weight, eps, out = found
        if weight is None:
            width = g.last_dim(x)
            if width is None:
                continue
            weight = f"{div.name or out}_ones"
            g.graph.initializer.append(numpy_helper.from_array(np.ones(width, dtype=np.float32), weight))
            g.inits[weight] = g.graph.initializer[-1]
        norm = helper.make_node("SimplifiedLayerNormalization", [x, weight], [out], name=f"{out}_rms_norm",
                                axis=-1, epsilon=eps, stash_type=1)
        g.replace(nodes, [norm], nodes[-1])
        count += 1
    return count


def fuse_skip_norms(g: _Graph) -> int:
    count = 0
    for norm in [n for n in g.nodes if n.op_type == "SimplifiedLayerNormalization" and n.domain in ("", "ai.onnx")]:
        add = g.producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or any(i in g.inits or i in g.constants for i in add.input):
            continue
        width = g.last_dim(norm.input[0])
        if width is None or g.rank3_last(add.input[0]) != width or g.rank3_last(add.input[1]) != width:
            continue
        eps = next(helper.get_attribute_value(a) for a in norm.attribute if a.name == "epsilon")
        others = [n for n in g.consumers.get(add.output[0], []) if n is not norm]
        total = add.output[0] if others or g.kept(add.output[0]) else ""
        fused = helper.make_node("SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], norm.input[1]],
                                 [norm.output[0], "", "", total], name=f"{norm.name}_skip", domain=MS, epsilon=eps)
        g.replace([add, norm], [fused], add)
        count += 1
    return count


def drop_identity_scalars(g: _Graph) -> int:
    count = 0
    for mul in [n for n in g.nodes if n.op_type == "Mul"]:
        x, c = mul.input
        one = g.value(c)
        # x * 1 is x only when the constant does not broadcast x to a higher rank
        if not _is_scalar(one, 1.0) or g.kept(mul.output[0]) or x not in g.shapes or one.ndim > len(g.shapes[x].dim):
            continue
        g.bypass(mul, x)
        count += 1
    return count


def collapse_reshapes(g: _Graph) -> int:
    count = 0
    for outer in [n for n in g.nodes if n.op_type == "Reshape"]:
        inner = g.producer.get(outer.input[0])
        allowzero = next((helper.get_attribute_value(a) for a in outer.attribute if a.name == "allowzero"), 0)
        shape = g.value(outer.input[1])
        literal = allowzero == 1 or (shape is not None and not (shape == 0).any())
        if inner is None or inner.op_type != "Reshape" or not literal or g.only_consumer(inner.output[0]) is not outer:
            continue
        outer.input[0] = inner.input[0]
        g.replace([inner], [], inner)
        count += 1
    return count


def _dims(g: _Graph, name: str) -> list | None:
    shape = g.shapes.get(name)
    if shape is None or not shape.dim:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in shape.dim]
    return None if any(d in (None, "") for d in dims) else dims


def drop_identity_reshapes(g: _Graph) -> int:
    """A Reshape whose input and output the exporter's shape inference gave the same dims (the same sizes or
    the same symbols) returns its input."""
    count = 0
    for node in [n for n in g.nodes if n.op_type == "Reshape"]:
        dims = _dims(g, node.input[0])
        if dims is None or dims != _dims(g, node.output[0]) or g.kept(node.output[0]):
            continue
        g.bypass(node, node.input[0])
        count += 1
    return count


def drop_attention_bias(g: _Graph) -> int:
    count = 0
    for node in g.nodes:
        is_gqa = node.op_type == "GroupQueryAttention" and node.domain == MS
        if is_gqa and len(node.input) > GQA_BIAS and node.input[GQA_BIAS]:
            inputs = list(node.input)
            inputs[GQA_BIAS] = ""
            while inputs and not inputs[-1]:
                inputs.pop()
            node.input[:] = inputs
            count += 1
    g.refresh()
    return count


def remove_dead(g: _Graph) -> int:
    removed = 0
    while True:
        used = {i for n in g.nodes for i in n.input} | g.outputs | g.captured
        dead = {id(n) for n in g.nodes if not any(o in used for o in n.output if o)}
        if not dead:
            break
        g.nodes = [n for n in g.nodes if id(n) not in dead]
        removed += len(dead)
    used = {i for n in g.nodes for i in n.input} | g.captured
    kept = [t for t in g.graph.initializer if t.name in used]
    del g.graph.initializer[:]
    g.graph.initializer.extend(kept)
    g.refresh()
    return removed


def fuse_for_cpu(model, *, unpadded: bool = True) -> dict:
    """Rewrite ``model`` (a kernel decoder, weights external or inline) in place; counts per rewrite."""
    g = _Graph(model.graph)
    counts = {"rms_norm": fuse_rms_norms(g), "identity_mul": drop_identity_scalars(g),
              "skip_norm": fuse_skip_norms(g), "reshape": collapse_reshapes(g)}
    counts["reshape"] += drop_identity_reshapes(g)
    if unpadded:
        counts["attention_bias"] = drop_attention_bias(g)
    counts["dead"] = remove_dead(g)
    g.commit()
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return counts


def _rename_inputs(graph, uses: dict) -> None:
    for node in graph.node:
        node.input[:] = [uses.get(i, i) for i in node.input]
        for attribute in node.attribute:
            for inner in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                _rename_inputs(inner, uses)


def fold_embedding(model, embed) -> bool:
    """Put ``embed`` (edgevid's ``embed_tokens`` graph: ``input_ids`` -> ``inputs_embeds`` [,
    ``per_layer_inputs``], naming ``is_placeholder``) inside the decoder ``model``: the decoder then looks its
    tokens up itself and takes ``inputs_embeds`` rows only where the ids are media placeholders (a decode step
    feeds a zero row), so a generated token costs one graph run instead of two. The tables stay in the
    embedding graph's weight file (the same directory), mapped. False (``model`` untouched) when the two
    graphs do not fit together."""
    outputs = {o.name: o.type.tensor_type.elem_type for o in embed.graph.output}
    inputs = {i.name: i for i in model.graph.input}
    produced = {o for n in embed.graph.node for o in n.output}
    if ("inputs_embeds" not in outputs or "is_placeholder" not in produced or "inputs_embeds" not in inputs
            or outputs["inputs_embeds"] != inputs["inputs_embeds"].type.tensor_type.elem_type
            or ("per_layer_inputs" in inputs) != ("per_layer_inputs" in outputs)):
        return False

    def renamed(name: str) -> str:
        return name if name in ("", "input_ids") else f"embed/{name}"

    nodes = []
    for source in embed.graph.node:
        node = _copy(source)
        node.input[:] = [renamed(i) for i in node.input]
        node.output[:] = [renamed(o) for o in node.output]
        node.name = renamed(node.name or node.output[0])
        nodes.append(node)
    for source in embed.graph.initializer:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(source)
        tensor.name = renamed(tensor.name)
        model.graph.initializer.append(tensor)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "embed/column_axis"))
    nodes += [
        helper.make_node("Unsqueeze", ["embed/is_placeholder", "embed/column_axis"], ["embed/is_media_row"],
                         name="embed/is_media_row"),
        helper.make_node("Where", ["embed/is_media_row", "inputs_embeds", "embed/inputs_embeds"], ["embeds_merged"],
                         name="embed/merge_media_rows"),
    ]
    uses = {"inputs_embeds": "embeds_merged", "per_layer_inputs": "embed/per_layer_inputs"}
    _rename_inputs(model.graph, uses)
    body = [*nodes, *(_copy(n) for n in model.graph.node)]
    del model.graph.node[:]
    model.graph.node.extend(body)
    merged = onnx.ValueInfoProto()
    merged.CopyFrom(inputs["inputs_embeds"])
    merged.name = "embeds_merged"
    model.graph.value_info.append(merged)
    kept = [_copy_value(i) for i in model.graph.input if i.name != "per_layer_inputs"]
    if "input_ids" not in inputs:
        kept.insert(0, _copy_value(next(i for i in embed.graph.input if i.name == "input_ids")))
    del model.graph.input[:]
    model.graph.input.extend(kept)
    have = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in embed.opset_import if o.domain not in have)
    return True
