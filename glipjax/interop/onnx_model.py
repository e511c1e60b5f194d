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
- Conversion time grows with the op count (about a minute for the tiny model on 2 CPU cores, much more for
  GLIP-T); the file holds float32 parameters (GLIP-T: ~0.9 GB; above 2 GB the weights go to an external file).
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
  the graph written is the same: GLIP-T(C) converts in ~1 min instead of ~30. Restored on exit; a jax2onnx
  without these functions converts unpatched."""
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


def export_onnx(model, model_cfg, out: str | pathlib.Path, *, batch: int = 1, image_size: tuple[int, int],
                text_len: int) -> dict:
  """Writes `out` (.onnx) for a GLIP `model` with concrete parameters; returns a summary."""
  out = pathlib.Path(out)
  if out.suffix != ".onnx":
    raise ValueError(f"--out {out}: the file name must end in .onnx")
  if out.exists():
    raise FileExistsError(f"--out {out} exists: choose a new file")
  check_shapes(model_cfg, batch=batch, image_size=image_size, text_len=text_len)
  to_onnx = _converter()
  import onnx

  def detector(images, input_ids, attention_mask):
    o = model(images, input_ids, attention_mask, deterministic=True)
    return tuple(o[k] for k in OUTPUTS)

  h, w = image_size
  specs = [jax.ShapeDtypeStruct((batch, h, w, 3), np.float32), jax.ShapeDtypeStruct((batch, text_len), np.int32),
           jax.ShapeDtypeStruct((batch, text_len), np.int32)]
  start = time.time()
  with _linear_time_checks():
    proto = to_onnx(detector, specs, return_mode="proto", input_names=list(INPUTS), output_names=list(OUTPUTS))
  seconds = time.time() - start
  out.parent.mkdir(parents=True, exist_ok=True)
  external = proto.ByteSize() >= _TWO_GB
  onnx.save_model(proto, str(out), save_as_external_data=external, location=out.name + ".data" if external else None)
  outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
  return dict(out=str(out), inputs={i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
                                    for i in proto.graph.input}, outputs=outputs,
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
