"""Compare glipjax with numbers produced by the official GLIP PyTorch code.

  python -m glipjax.tools.parity --reference ../shared/glip_reference/tiny_glip_t_c

Reads a fixture folder (format: its README), imports the official weights, runs the forward pass (every recorded
intermediate), the ATSS assignment and losses, their gradients, and the post-processing; prints max abs / rel
error per output and exits non-zero when any exceeds its tolerance.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import glipjax  # noqa: F401
from configs.model import fixture_model
from glipjax.data.batch import BatchSpec
from glipjax.interop.official import export_official, import_official
from glipjax.models.glip import GLIP
from glipjax.ops import anchors as anchor_ops
from glipjax.ops.losses import atss_targets, glip_loss
from glipjax.ops.postprocess import postprocess

# Intermediates are O(1-10) and pass through ~40 float32 layers in a different summation order: atol 1e-4
# (fixture README). Losses: rtol 1e-4. Gradients of the loss w.r.t. head parameters: rtol 1e-3 relative to the
# tensor's max magnitude, because they sum ~10^4 focal terms. Assignments and post-processing are exact decisions.
ATOL_INTERMEDIATE, RTOL_LOSS, RTOL_GRAD = 1e-4, 1e-4, 1e-3


@dataclasses.dataclass
class Row:
  name: str
  shape: tuple
  abs_err: float
  rel_err: float
  tol: str
  ok: bool


def _nhwc(a: np.ndarray) -> np.ndarray:
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _compare(name, ours, ref, *, atol=None, rtol=None) -> Row:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return Row(name, ref.shape, np.inf, np.inf, f"shape {ours.shape}", False)
  abs_err = float(np.abs(ours - ref).max()) if ref.size else 0.0
  scale = float(np.abs(ref).max()) if ref.size else 0.0
  rel_err = abs_err / max(scale, 1e-12)
  ok = (atol is not None and abs_err <= atol) or (rtol is not None and rel_err <= rtol)
  tol = f"atol {atol:g}" if atol is not None else f"rtol {rtol:g}"
  return Row(name, ref.shape, abs_err, rel_err, tol, ok)


def fixture_batch(loss_npz, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
  """The loss fixture's flat GT list as our batch (glipjax/data/batch.py), boxes padded to the most per image."""
  b, t = input_ids.shape
  owners = loss_npz["target_image_index"]
  g = max(int(np.bincount(owners, minlength=b).max()), 1)
  batch = BatchSpec(canvas=(1, 1), max_boxes=g, max_phrases=1, max_query_len=t).zeros(b)
  filled = [0] * b
  for box, owner, row in zip(loss_npz["target_boxes_xyxy"], owners, loss_npz["positive_map"]):
    j = filled[owner]
    batch["boxes"][owner, j], batch["box_mask"][owner, j], batch["positive_map"][owner, j] = box, True, row
    filled[owner] += 1
  return {k: batch[k] for k in ("boxes", "box_mask", "positive_map")} | dict(attention_mask=attention_mask)


def run(reference: pathlib.Path, dcn_impl: str = "xla") -> list[Row]:
  cfg_json = json.loads((reference / "config.json").read_text())
  cfg = fixture_model(cfg_json["tiny_hparams"], cfg_json.get("yacs_cfg"))  # the variant the fixture was made with
  cfg.dyhead.dcn_impl = dcn_impl
  weights = dict(np.load(reference / "weights.npz"))
  inputs, outputs = np.load(reference / "inputs.npz"), np.load(reference / "outputs.npz")
  model = nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(0)))  # no eager init: weights come from the fixture
  import_official(model, weights)
  images = jnp.asarray(_nhwc(inputs["images"]))
  ids, mask = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
  rows = []

  # The fixture records loss gradients of the head's own parameters only. Differentiating just those lets XLA
  # drop the backward pass through the tower and encoders: one compile of forward + loss instead of two.
  head_own = nnx.All(nnx.Param, lambda path, _: path[0] == "head" and path[1] != "dyhead_tower")
  graphdef, head_params, other_params, rest = nnx.split(model, head_own, nnx.Param, ...)
  apply = lambda hp, **kw: nnx.merge(graphdef, hp, other_params, rest)(images, ids, mask, **kw)

  hw = tuple(int(v) for v in inputs["image_sizes_hw"][0])
  anchors, counts = anchor_ops.for_canvas(hw, tuple(cfg.anchors.strides), tuple(cfg.anchors.sizes))
  start = 0
  for lvl, n in enumerate(counts):
    rows.append(_compare(f"anchors_l{lvl}", anchors[start:start + n], outputs[f"anchors_l{lvl}"], atol=0.0))
    start += n

  loss_npz = np.load(reference / "loss.npz")
  batch = fixture_batch(loss_npz, inputs["input_ids"], inputs["attention_mask"])
  tg = atss_targets(anchors, counts, batch)
  for b in range(images.shape[0]):
    pos = loss_npz[f"atss_labels_img{b}"] > 0
    rows.append(_compare(f"atss_positive_img{b}", np.asarray(tg["positive"][b]), pos, atol=0.0))
    rows.append(_compare(f"atss_token_labels_img{b}", tg["token_targets"][b], loss_npz[f"atss_token_labels_img{b}"],
                         atol=0.0))
    rows.append(_compare(f"atss_reg_targets_img{b}(pos)", np.asarray(tg["box_targets"][b])[pos],
                         loss_npz[f"atss_reg_targets_img{b}"][pos], atol=1e-5))

  def loss_fn(hp):
    out = apply(hp, capture=True)
    total, metrics = glip_loss(out, batch, anchors, counts)
    return total, (metrics, out)

  (total, (metrics, out)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(head_params)
  inter = out.pop("intermediates")
  # Every recorded output is compared; one we do not produce is a failure, not a silent skip.
  rows = [_compare(name, inter[name], _nhwc(outputs[name]), atol=ATOL_INTERMEDIATE) if name in inter
          else Row(name, outputs[name].shape, np.inf, np.inf, "not produced", False)
          for name in outputs.files if not name.startswith("anchors_")] + rows
  # A fixture may record only the assignment (losses and gradients depend on every weight; the assignment not).
  for key in ("loss_reg", "loss_centerness", "loss_dot_product_token"):
    if key in loss_npz.files:
      rows.append(_compare(key, metrics[key], loss_npz[key], rtol=RTOL_LOSS))
  if "total_loss" in loss_npz.files:
    rows.append(_compare("total_loss", total, loss_npz["total_loss"], rtol=RTOL_LOSS))
  grad_state = export_official(nnx.merge(graphdef, grads, other_params, rest))
  for key in loss_npz.files:
    if key.startswith("grad."):
      rows.append(_compare(key, grad_state[key[5:]].reshape(loss_npz[key].shape), loss_npz[key], rtol=RTOL_GRAD))

  pp_path = reference / "postprocess.npz"
  if pp_path.exists():
    pp = np.load(pp_path)
    hyper = dict(pre_nms_thresh=float(pp["pre_nms_thresh"]), pre_nms_top_n=int(pp["pre_nms_top_n"]),
                 nms_thresh=float(pp["nms_thresh"]), detections_per_img=int(pp["detections_per_img"]))
    label_map = jnp.asarray(pp["positive_map"])
    dets = jax.jit(lambda o: postprocess(o, anchors, counts, label_map, jnp.ones(len(label_map), bool),
                                         jnp.asarray(inputs["image_sizes_hw"]), **hyper))(out)
    label_ids = pp["positive_map_labels"]
    for b in range(images.shape[0]):
      valid = np.asarray(dets["valid"][b])
      rows.append(_compare(f"post_img{b}_count", valid.sum(), len(pp[f"img{b}_scores"]), atol=0))
      if valid.sum() == len(pp[f"img{b}_scores"]):
        rows.append(_compare(f"post_img{b}_scores", np.asarray(dets["scores"][b])[valid], pp[f"img{b}_scores"],
                             atol=ATOL_INTERMEDIATE))
        rows.append(_compare(f"post_img{b}_boxes", np.asarray(dets["boxes"][b])[valid], pp[f"img{b}_boxes"],
                             atol=1e-3))  # pixels (values up to ~160)
        labels = label_ids[np.asarray(dets["labels"][b])[valid] - 1]
        rows.append(_compare(f"post_img{b}_labels", labels, pp[f"img{b}_labels"], atol=0))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", required=True, type=pathlib.Path, help="a fixture folder (e.g. tiny_glip_t_c)")
  parser.add_argument("--dcn-impl", choices=("xla", "pallas"), default="xla",
                      help="the deformable conv under test (model.dyhead.dcn_impl)")
  args = parser.parse_args(argv)
  if not (args.reference / "weights.npz").is_file():
    print(f"error: {args.reference} is not a reference fixture folder (no weights.npz)", file=sys.stderr)
    return 2
  rows = run(args.reference, args.dcn_impl)
  width = max(len(r.name) for r in rows)
  print(f"{'output':<{width}}  {'shape':<18} {'max abs err':>12} {'max rel err':>12}  {'tolerance':<10} ok")
  for r in rows:
    print(f"{r.name:<{width}}  {str(r.shape):<18} {r.abs_err:12.3e} {r.rel_err:12.3e}  {r.tol:<10} "
          f"{'yes' if r.ok else 'NO'}")
  failed = [r.name for r in rows if not r.ok]
  print(f"\n{len(rows) - len(failed)}/{len(rows)} outputs within tolerance"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
