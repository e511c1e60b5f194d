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
- Post-processing (per-phrase scores, top-k, box decoding, class-aware NMS: `glipjax.ops.postprocess`) is in the
  graph only when asked (`postprocess=`, `--postprocess`), with the run's `eval` thresholds and L phrases per
  prompt fixed at export; the exact greedy NMS becomes an ONNX Loop over the candidates (not ONNX's
  NonMaxSuppression, whose box and tie conventions differ). Mapping boxes back to the original image and
  phrases to categories stays with the caller.
- Conversion time: a few seconds for the tiny model, ~45 s for GLIP-T(C)'s 23.4 k nodes on 2 CPU cores (with
  `_linear_time_checks`: jax2onnx 0.17.1 alone is quadratic in the op count; peak memory of the export, an
  onnxruntime run and a JAX reference run together: 6 GB at 256x256, 11 GB at 800x1344); the file holds float32
  parameters (GLIP-T(C): 0.94 GB at 256x256, 0.96 GB at 800x1344;
  above 2 GB the weights would go to an external `.data` file). `convert` of a model with abstract parameters
  gives the graph alone, the parameters as inputs.
- Measured against glipjax (float32, random weights): tiny model max |diff| 1e-6 on logits, 1e-7 on boxes and
  centerness; GLIP-T(C) 2e-6 at 256x256 / T=32 and 2.5e-5 at 800x1344 / T=256 on logits of magnitude ~5,
  1e-5 on box deltas; onnxruntime runs GLIP-T(C) at 800x1344 in ~50 s on 2 shared CPU cores (session included).
- A run with `model.scan_layers` converts too, its stacked layers ONNX loops (tiny: 628 nodes, not 3.6 k;
  same outputs to 1e-6). Only float32 models are tested: a run computing in bfloat16 would export bfloat16 ops (not tried with
  onnxruntime).
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
# With post-processing (`postprocess=`, `--postprocess`): what `glipjax.ops.postprocess` reads and gives.
POSTPROCESS_INPUTS = ("phrase_map", "phrase_mask", "image_hw")
DETECTIONS = ("boxes", "scores", "labels", "valid")
_TWO_GB = 2 ** 31


def _converter():
  try:
    from jax2onnx import to_onnx
  except ImportError as e:  # an optional dependency: test extras
    raise ImportError("--format onnx needs jax2onnx, onnx and onnxruntime: "
                      "pip install -r requirements-test.txt (jax2onnx==0.17.1 --no-deps, see the Makefile)") from e
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)  # e.g. its unused equinox plugins
  logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)  # value infos of loop bodies it leaves untyped
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


def postprocess_options(config, *, max_phrases: int | None = None) -> dict:
  """The post-processing a run evaluates with (its `eval` thresholds), for `convert(postprocess=...)`;
  `max_phrases` (L, default the config's `data.max_phrases`): the phrases one prompt may hold."""
  e = config.eval
  phrases = config.data.max_phrases if max_phrases is None else max_phrases
  return dict(max_phrases=int(phrases), pre_nms_thresh=float(e.pre_nms_thresh),
              pre_nms_top_n=int(e.pre_nms_top_n), nms_thresh=float(e.nms_thresh),
              detections_per_img=int(e.detections_per_img))


def check_postprocess(options: dict) -> None:
  for key, flag in (("max_phrases", "--max_phrases"), ("pre_nms_top_n", "eval.pre_nms_top_n"),
                    ("detections_per_img", "eval.detections_per_img")):
    if options[key] < 1:
      raise ValueError(f"post-processing: {flag} must be >= 1, got {options[key]}")


def _detections(model_cfg, image_size, options, out, phrase_map, phrase_mask, image_hw):
  """`glipjax.ops.postprocess` image by image (jax2onnx's NMS loop has no batching rule: no vmap)."""
  import jax.numpy as jnp
  from glipjax.ops import anchors as anchor_ops
  from glipjax.ops.postprocess import postprocess_image
  a = model_cfg.anchors
  anchors, counts = anchor_ops.for_canvas(tuple(image_size), tuple(a.strides), tuple(a.sizes))
  kw = {k: v for k, v in options.items() if k != "max_phrases"}
  per_image = [postprocess_image(*(x[i] for x in (out["dot_product_logits"], out["box_regression"],
                                                  out["centerness"], phrase_map, phrase_mask, image_hw)),
                                 anchors=anchors, level_counts=counts, **kw)
               for i in range(phrase_map.shape[0])]
  return tuple(jnp.stack([d[k] for d in per_image]) for k in DETECTIONS)


def _param_name(path) -> str:
  """'param:backbone/layers/0/...' of a parameter's pytree path (the Variable's `.value` dropped)."""
  parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
  return "param:" + "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def convert(model, model_cfg, *, batch: int, image_size: tuple[int, int], text_len: int,
            postprocess: dict | None = None):
  """(onnx.ModelProto, conversion seconds) of a GLIP `model` at static shapes (checked first).

  `postprocess` (`postprocess_options`): the graph also takes `phrase_map` float32 [B, L, T] (1 where a token
  belongs to a phrase), `phrase_mask` bool [B, L] and `image_hw` int32 [B, 2] (the image's size on the canvas)
  and also gives `glipjax.ops.postprocess`'s detections: boxes [B, K, 4] (xyxy on the canvas), scores [B, K],
  labels int32 [B, K] (1-based phrase rows), valid bool [B, K], sorted by score.

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
  names, outputs = list(INPUTS), list(OUTPUTS)
  n_data = len(INPUTS)
  if postprocess is not None:
    check_postprocess(postprocess)
    phrases = postprocess["max_phrases"]
    specs += [jax.ShapeDtypeStruct((batch, phrases, text_len), np.float32),
              jax.ShapeDtypeStruct((batch, phrases), np.bool_), jax.ShapeDtypeStruct((batch, 2), np.int32)]
    names += POSTPROCESS_INPUTS
    outputs += DETECTIONS
    n_data += len(POSTPROCESS_INPUTS)
  weighted = all(abstract) and bool(paths_leaves)
  if weighted:
    specs += [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for _, leaf in paths_leaves]
    names += [_param_name(path) for path, _ in paths_leaves]

  def detector(*args):
    data, weights = args[:n_data], args[n_data:]
    m = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights), rest) if weighted else model
    o = m(*data[:3], deterministic=True)
    raw = tuple(o[k] for k in OUTPUTS)
    return raw if postprocess is None else raw + _detections(model_cfg, image_size, postprocess, o, *data[3:])

  start = time.time()
  with _linear_time_checks():
    proto = to_onnx(detector, specs, return_mode="proto", input_names=names, output_names=outputs)
  return proto, time.time() - start


def declared_shapes(values) -> dict[str, list[int]]:
  """name -> static shape of a graph's inputs or outputs (`proto.graph.input`, `proto.graph.output`)."""
  return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def export_onnx(model, model_cfg, out: str | pathlib.Path, *, batch: int = 1, image_size: tuple[int, int],
                text_len: int, postprocess: dict | None = None) -> dict:
  """Writes `out` (.onnx) for a GLIP `model` with concrete parameters (`convert`); returns a summary."""
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
  proto, seconds = convert(model, model_cfg, batch=batch, image_size=image_size, text_len=text_len,
                           postprocess=postprocess)
  out.parent.mkdir(parents=True, exist_ok=True)
  external = proto.ByteSize() >= _TWO_GB
  onnx.save_model(proto, str(out), save_as_external_data=external, location=out.name + ".data" if external else None)
  return dict(out=str(out), inputs=declared_shapes(proto.graph.input), outputs=declared_shapes(proto.graph.output),
              opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
              nodes=len(proto.graph.node), bytes=out.stat().st_size, convert_seconds=round(seconds, 1))


def run_onnx(path: str | pathlib.Path, images, input_ids, attention_mask, **postprocess_inputs) -> dict:
  """Every output of the ONNX model by name, with onnxruntime on the CPU; `postprocess_inputs`: phrase_map,
  phrase_mask, image_hw for a model exported with post-processing."""
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  dtypes = dict(images=np.float32, input_ids=np.int32, attention_mask=np.int32, phrase_map=np.float32,
                phrase_mask=np.bool_, image_hw=np.int32)
  given = dict(images=images, input_ids=input_ids, attention_mask=attention_mask, **postprocess_inputs)
  feeds = {k: np.asarray(v, dtypes.get(k)) for k, v in given.items()}
  names = [o.name for o in session.get_outputs()]
  return dict(zip(names, session.run(names, feeds)))
