"""Box ops, NMS semantics and loss robustness (the fixture parity of these is in tests/test_parity.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from glipjax.ops import anchors as anchor_ops
from glipjax.ops import boxes as box_ops
from glipjax.ops.losses import glip_loss
from glipjax.ops.postprocess import nms_keep, to_coco_results


def test_box_coder_round_trip_and_plus_one_iou():
  anchors = jnp.array([[0.0, 0.0, 63.0, 63.0], [10.0, 20.0, 40.0, 30.0]])
  gt = jnp.array([[10.0, 20.0, 40.0, 30.0], [-3.0, 5.0, 80.0, 90.0]])
  np.testing.assert_allclose(box_ops.encode(anchors, anchors), 0.0, atol=1e-6)
  np.testing.assert_allclose(box_ops.decode(box_ops.encode(gt, anchors), anchors), gt, atol=1e-4)
  # dw/dh are clamped at log(1000/16): a huge delta cannot overflow.
  assert np.isfinite(box_ops.decode(jnp.full((1, 4), 1e4), anchors[:1])).all()
  a = jnp.array([[0.0, 0.0, 63.0, 63.0]])
  b = jnp.array([[16.0, 0.0, 79.0, 63.0]])
  np.testing.assert_allclose(box_ops.pairwise_iou(a, b), 48 * 64 / (2 * 64 * 64 - 48 * 64), rtol=1e-6)
  np.testing.assert_allclose(box_ops.pairwise_iou(a, b, plus_one=False), 47 * 63 / (2 * 63 * 63 - 47 * 63),
                             rtol=1e-6)


def test_nms_is_class_aware_plus_one_and_strict():
  # Two 64-px boxes 32 px apart: "+1" IoU is exactly 0.6 in float32 (fixture README §7.3): `>` keeps both.
  boxes = jnp.array([[0.0, 0.0, 63.0, 63.0], [32.0, 0.0, 95.0, 63.0], [1.0, 1.0, 63.0, 63.0], [0.0, 0.0, 63.0, 63.0]])
  iou = float(box_ops.pairwise_iou(boxes[:1], boxes[1:2])[0, 0])
  scores = jnp.array([0.9, 0.8, 0.7, 0.6])
  labels = jnp.array([1, 1, 1, 2])
  keep = nms_keep(boxes, scores, labels, jnp.ones(4, bool), thresh=iou)
  # box 2 overlaps box 0 heavily (suppressed); box 3 is identical to box 0 but another label (kept).
  assert keep.tolist() == [True, True, False, True]
  keep = nms_keep(boxes, scores, labels, jnp.ones(4, bool), thresh=float(np.nextafter(np.float32(iou), 0)))
  assert keep.tolist() == [True, False, False, True]


def test_losses_finite_without_boxes_and_with_saturated_logits():
  shapes = anchor_ops.level_shapes((64, 64), (8, 16, 32, 64, 128))
  anchors = anchor_ops.generate_anchors(shapes, (8, 16, 32, 64, 128), (32, 64, 128, 256, 512))
  counts = anchor_ops.level_counts(shapes)
  a, t = anchors.shape[0], 8
  batch = dict(boxes=jnp.zeros((2, 3, 4)), box_mask=jnp.zeros((2, 3), bool), positive_map=jnp.zeros((2, 3, t)),
               attention_mask=jnp.ones((2, t), jnp.int32))
  batch["boxes"] = batch["boxes"].at[1, 0].set(jnp.array([10.0, 12.0, 40.0, 50.0]))
  batch["box_mask"] = batch["box_mask"].at[1, 0].set(True)
  batch["positive_map"] = batch["positive_map"].at[1, 0, 2].set(1.0)

  def loss(scale):
    out = dict(dot_product_logits=scale * jnp.ones((2, a, t)), box_regression=scale * jnp.ones((2, a, 4)),
               centerness=scale * jnp.ones((2, a)))
    return glip_loss(out, batch, anchors, counts)[0]

  for scale in (0.0, 1e3):
    value, grad = jax.value_and_grad(loss)(scale)
    assert np.isfinite(value) and np.isfinite(grad)
  none = dict(batch, box_mask=jnp.zeros((2, 3), bool))
  out = dict(dot_product_logits=jnp.zeros((2, a, t)), box_regression=jnp.zeros((2, a, 4)), centerness=jnp.zeros((2, a)))
  total, metrics = glip_loss(out, none, anchors, counts)
  assert metrics["num_pos"] == 0 and metrics["loss_reg"] == 0 and np.isfinite(total)


def test_coco_results_scale_to_the_original_image():
  dets = dict(boxes=np.array([[[10.0, 20.0, 29.0, 59.0]]]), scores=np.array([[0.5]]), labels=np.array([[2]]),
              valid=np.array([[True]]))
  (r,) = to_coco_results(dets, [7], np.array([[2.0, 0.5]]), category_ids=np.array([11, 12]))
  assert r == dict(image_id=7, score=0.5, category_id=12, bbox=[5.0, 40.0, 10.0, 80.0])
