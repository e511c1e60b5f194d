"""The whole GLIP detector as an ONNX model, with the text encoder live (`glipjax.export --format onnx`).

Inputs (static shapes, fixed at export):
  images          float32 [B, H, W, 3]  normalised BGR, NHWC, as `glipjax.data.transforms` makes them
  input_ids       int32   [B, T]        token ids of the prompt (any prompt: BERT runs inside the graph)
  attention_mask  int32   [B, T]        1 for tokens, 0 for padding
Outputs, over all anchors of P3..P7 (row-major within a level, levels concatenated):
  dot_product_logits [B, A, T], box_regression [B, A, 4] (deltas for `glipjax.ops.boxes.decode`), centerness [B, A]

Converted by jax2onnx, which lowers the jitted function's jaxpr op by op into ONNX (opset 23; the parameters are
initializers). Limits:
- Shapes are static: batch, image size and prompt length are chosen at export (one file per canvas; glipjax's
  own aspect-ratio buckets are a handful of canvases). The anchors depend only on the canvas.
- The deformable convs convert as glipjax computes them (glipjax/models/dcn.py): the four bilinear corners
  gathered from the flattened input, weighted, masked and contracted with the kernel, so the official kernel's
  offset-read quirk is kept. ONNX's DeformConv op (opset 19) is not used: runtimes without it run the model.
- Post-processing (score aggregation per phrase, top-k, box decoding, NMS) stays outside: run
  `glipjax.ops.postprocess` semantics in the caller.
- Conversion time: a few seconds for the tiny model, ~45 s for GLIP-T(C)'s 23.8 k nodes on 2 CPU cores (with
  `_linear_time_checks`: jax2onnx 0.17.1 alone is quadratic in the op count); the file holds float32 parameters
  (GLIP-T: ~0.9 GB; above 2 GB the weights go to an external file). `convert` of a model with abstract
  parameters gives the graph alone, the parameters as inputs.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import time

import jax
import numpy as np

INPUTS = ("images", "input_ids", "attention_mask")
OUTPUTS = ("dot_product_logits", "box_regression", "centerness")
_TWO_GB = 2 ** 31


def _converter():
  try:
    from jax2onnx import to_onnx
  except ImportError as e:  # an optional dependency: test extras
    raise ImportError("--format onnx needs jax2onnx, onnx and onnxruntime: "
                      "pip install -r requirements-test.txt (jax2onnx==0.17.1 --no-deps, see the Makefile)") from e
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  return to_onnx


@contextlib.contextmanager
def _linear_time_checks():
  """jax2onnx 0.17.1 spends most of a large conversion in two O(nodes) scans made once per op, so O(nodes^2) in
  all: the check that each lowered value is connected to the graph (`output_binding._value_is_graph_connected`)
  and the optimizer's producer lookup (`optimizer_graph_utils._producer_node`, a set of every node's id per
  call). Both get an O(1) answer for the common case here and fall back to the original scan otherwise, so
  the graph written is the same, byte for byte (checked on the tiny model: conversion 33 s -> 3 s): GLIP-T(C)
  converts in ~45 s instead of ~20 min (estimated from the quadratic). Restored on exit; a jax2onnx without
  these functions converts unpatched."""
  import onnx_ir as ir
  from jax2onnx.converter import conv_transpose_bias_folding, ir_optimizations, optimizer_graph_utils, \
      output_binding
  connected = getattr(output_binding, "_value_is_graph_connected", None)
  producer = getattr(optimizer_graph_utils, "_producer_node", None)
  if connected is None or producer is None:
    yield
    return

  def fast_connected(ctx, value):
    graph = getattr(ctx.builder, "graph", None)
    if (isinstance(value, ir.Value) and graph is not None and value.graph is graph and
        (value.producer() is not None or value.is_graph_input() or value.is_initializer())):
      return True  # produced by a node of the graph, or one of its inputs / initializers
    return connected(ctx, value)

  node_ids = {}  # id(list) -> (the list, its length, the ids of its nodes): the optimizer's node snapshots

  def fast_producer(nodes, value):
    if isinstance(value, ir.Value) and isinstance(nodes, list):
      node = value.producer()
      if isinstance(node, ir.Node):
        hit = node_ids.get(id(nodes))
        if hit is None or hit[0] is not nodes or hit[1] != len(nodes):
          if len(node_ids) > 8:
            node_ids.clear()
          hit = node_ids[id(nodes)] = (nodes, len(nodes), {id(n) for n in nodes})
        if id(node) in hit[2]:
          return node
      elif node is None and (value.is_initializer() or value.is_graph_input()):
        return None  # value names are unique: no node output is named as an input or initializer
    return producer(nodes, value)

  users = [m for m in (optimizer_graph_utils, ir_optimizations, conv_transpose_bias_folding)
           if getattr(m, "_producer_node", None) is producer]
  output_binding._value_is_graph_connected = fast_connected
  for m in users:
    m._producer_node = fast_producer
  try:
    yield
  finally:
    output_binding._value_is_graph_connected = connected
    for m in users:
      m._producer_node = producer


def check_shapes(model_cfg, *, batch: int, image_size: tuple[int, int], text_len: int) -> None:
  h, w = image_size
  if batch < 1:
    raise ValueError(f"--batch must be >= 1, got {batch}")
  if h < 32 or w < 32 or h % 32 or w % 32:
    raise ValueError(f"--image_size {h},{w}: both sides must be multiples of 32 (the stride of P5; glipjax pads "
                     "canvases to it)")
  if not 1 <= text_len <= model_cfg.max_query_len:
    raise ValueError(f"--text_len {text_len}: must be between 1 and model.max_query_len {model_cfg.max_query_len}")


def _param_name(path) -> str:
  """'param:backbone/layers/0/...' of a parameter's pytree path (the Variable's `.value` dropped)."""
  parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
  return "param:" + "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def convert(model, model_cfg, *, batch: int, image_size: tuple[int, int], text_len: int):
  """(onnx.ModelProto, conversion seconds) of a GLIP `model` at static shapes (checked first).

  A model with concrete parameters gives a self-contained graph, its parameters initializers. A model whose
  parameters are all abstract (`nnx.eval_shape`) converts too, its parameters then graph inputs after the three
  data inputs, named `param:<path>`: the graph and its declared shapes without materialising any weight (how the
  tests convert GLIP-T(C)); onnxruntime can run it only if fed every weight.
  """
  from flax import nnx
  check_shapes(model_cfg, batch=batch, image_size=image_size, text_len=text_len)
  to_onnx = _converter()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  abstract = [isinstance(leaf, jax.ShapeDtypeStruct) for _, leaf in paths_leaves]
  if any(abstract) and not all(abstract):
    raise ValueError("the model's parameters are partly abstract: give all concrete or all abstract")
  h, w = image_size
  specs = [jax.ShapeDtypeStruct((batch, h, w, 3), np.float32), jax.ShapeDtypeStruct((batch, text_len), np.int32),
           jax.ShapeDtypeStruct((batch, text_len), np.int32)]
  names = list(INPUTS)
  if all(abstract) and paths_leaves:
    specs += [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for _, leaf in paths_leaves]
    names += [_param_name(path) for path, _ in paths_leaves]

    def detector(images, input_ids, attention_mask, *weights):
      m = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights), rest)
      o = m(images, input_ids, attention_mask, deterministic=True)
      return tuple(o[k] for k in OUTPUTS)
  else:
    def detector(images, input_ids, attention_mask):
      o = model(images, input_ids, attention_mask, deterministic=True)
      return tuple(o[k] for k in OUTPUTS)

  start = time.time()
  with _linear_time_checks():
    proto = to_onnx(detector, specs, return_mode="proto", input_names=names, output_names=list(OUTPUTS))
  return proto, time.time() - start


def declared_shapes(values) -> dict[str, list[int]]:
  """name -> static shape of a graph's inputs or outputs (`proto.graph.input`, `proto.graph.output`)."""
  return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def export_onnx(model, model_cfg, out: str | pathlib.Path, *, batch: int = 1, image_size: tuple[int, int],
                text_len: int) -> dict:
  """Writes `out` (.onnx) for a GLIP `model` with concrete parameters; returns a summary."""
  out = pathlib.Path(out)
  if out.suffix != ".onnx":
    raise ValueError(f"--out {out}: the file name must end in .onnx")
  if out.exists():
    raise FileExistsError(f"--out {out} exists: choose a new file")
  import onnx
  from flax import nnx
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model, nnx.Param))):
    raise ValueError("the model's parameters are abstract: restore them before exporting (convert() gives the "
                     "graph alone)")
  proto, seconds = convert(model, model_cfg, batch=batch, image_size=image_size, text_len=text_len)
  out.parent.mkdir(parents=True, exist_ok=True)
  external = proto.ByteSize() >= _TWO_GB
  onnx.save_model(proto, str(out), save_as_external_data=external, location=out.name + ".data" if external else None)
  return dict(out=str(out), inputs=declared_shapes(proto.graph.input), outputs=declared_shapes(proto.graph.output),
              opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
              nodes=len(proto.graph.node), bytes=out.stat().st_size, convert_seconds=round(seconds, 1))


def run_onnx(path: str | pathlib.Path, images, input_ids, attention_mask) -> dict[str, np.ndarray]:
  """The ONNX model's outputs by name, with onnxruntime on the CPU."""
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  feeds = dict(images=np.asarray(images, np.float32), input_ids=np.asarray(input_ids, np.int32),
               attention_mask=np.asarray(attention_mask, np.int32))
  return dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))
