"""The batch spec: the arrays a batch carries from the host to the device — names, per-example shapes, dtypes —
defined once for the input pipeline, predict, the benchmarks and the parity tool; and `model_images`, the
device-side step that turns the batch's uint8 canvases into the model's input.

Images leave the host as uint8 RGB canvases (a quarter of the bytes of float32 ones, host->device and in the
prefetch buffers) with the image in the top-left `image_hw` corner; `model_images` normalises them on the device
the way GLIP's transforms do (BGR in 0..255, minus the pixel mean, over the pixel std) and zeroes the padding,
as maskrcnn_benchmark's `to_image_list` pads normalised images with 0.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)
PIXEL_STD_BGR = (57.375, 57.12, 58.395)

# What the model and post-processing read; the rest (boxes, maps, ids) feeds the loss or the evaluators.
MODEL_INPUTS = ("image", "image_hw", "input_ids", "attention_mask", "phrase_map", "phrase_mask")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Static per-example shapes of a batch. `canvas` (H, W) may differ between batches (aspect-ratio buckets,
  glipjax/data/buckets.py); everything else is fixed by the config."""
  canvas: tuple[int, int]
  max_boxes: int
  max_phrases: int
  max_query_len: int

  @classmethod
  def from_config(cls, config, canvas: tuple[int, int] | None = None) -> "BatchSpec":
    d = config.data
    return cls(tuple(canvas or d.canvas), d.max_boxes, d.max_phrases, config.model.max_query_len)

  def fields(self, train: bool = True) -> dict[str, tuple[tuple[int, ...], type]]:
    """name -> (per-example shape, numpy dtype). Evaluation batches add what the evaluators need to map
    detections back: each phrase's category and whether a row is a real example (`valid`)."""
    (h, w), n, p, t = self.canvas, self.max_boxes, self.max_phrases, self.max_query_len
    out = dict(
        image=((h, w, 3), np.uint8), image_hw=((2,), np.int32),           # resized image size on the canvas
        input_ids=((t,), np.int32), attention_mask=((t,), np.int32),
        boxes=((n, 4), np.float32), box_mask=((n,), np.bool_),              # xyxy on the canvas
        box_labels=((n,), np.int32), positive_map=((n, t), np.float32),     # box -> phrase (1-based), tokens
        phrase_map=((p, t), np.float32), phrase_mask=((p,), np.bool_),      # phrase -> tokens
        image_id=((), np.int32), orig_hw=((2,), np.int32))                  # the record's id and image size
    if not train:
      out.update(phrase_categories=((p,), np.int32), valid=((), np.bool_))
    return out

  def zeros(self, batch_size: int, train: bool = True) -> dict[str, np.ndarray]:
    return {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in self.fields(train).items()}

  def abstract(self, batch_size: int, train: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, *shape), dtype) for k, (shape, dtype) in self.fields(train).items()}

  def check(self, example: dict, train: bool = True) -> None:
    """Raises ValueError naming the first field whose shape or dtype differs from the spec (one example)."""
    fields = self.fields(train)
    if set(example) != set(fields):
      raise ValueError(f"batch fields {sorted(example)} differ from the spec's {sorted(fields)}")
    for k, (shape, dtype) in fields.items():
      v = np.asarray(example[k])
      if v.shape != shape or v.dtype != dtype:
        raise ValueError(f"batch field {k!r}: {v.dtype}{list(v.shape)}, the spec says {np.dtype(dtype)}{list(shape)}")


def model_images(images: jax.Array, image_hw: jax.Array) -> jax.Array:
  """uint8 RGB canvases [B, H, W, 3] + image sizes [B, 2] -> normalised float32 BGR, zero outside each image."""
  if images.dtype != jnp.uint8:
    raise TypeError(f"batch images must be uint8 canvases (glipjax/data/batch.py), got {images.dtype}")
  x = (images[..., ::-1].astype(jnp.float32) - jnp.float32(PIXEL_MEAN_BGR)) / jnp.float32(PIXEL_STD_BGR)
  h, w = images.shape[1:3]
  inside = ((jnp.arange(h)[None, :, None] < image_hw[:, 0, None, None]) &
            (jnp.arange(w)[None, None, :] < image_hw[:, 1, None, None]))
  return jnp.where(inside[..., None], x, 0.0)
