"""Robust image reading for dataset preparation: every file becomes 8-bit RGB bytes that TFDS stores, or a
`BadImage` naming the file and the reason (the caller skips and counts it)."""
from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A decompression bomb is a bad file, not a reason to stop the whole preparation.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000
_EXIF_ORIENTATION = 0x0112


class BadImage(ValueError):
  """A file that cannot be read as an image; `reason` is short ('missing file', 'unreadable or truncated')."""

  def __init__(self, reason: str, path: pathlib.Path, detail: str = ""):
    super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ReadImage:
  data: bytes        # encoded image to store (the original bytes when no repair was needed)
  height: int
  width: int
  repairs: tuple     # what was done to it, for the statistics: 'EXIF orientation applied', 'CMYK -> RGB', ...


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
  repairs = []
  if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    a = np.asarray(im, np.float64)
    hi = a.max() if a.size else 0.0
    # 16-bit / 32-bit greyscale: scale the used range to 0..255 (a 16-bit PNG of 12-bit data stays visible).
    scale = 255.0 / (65535.0 if hi > 255 and im.mode.startswith("I;16") else max(hi, 1.0))
    im = Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8), "L")
    repairs.append("16/32-bit -> 8-bit")
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    im = Image.alpha_composite(background, rgba)
    repairs.append("alpha composited on white")
  if im.mode != "RGB":
    repairs.append(f"{im.mode} -> RGB")
    im = im.convert("RGB")
  return im, repairs


def read_image(path: str | pathlib.Path, *, expected_hw: tuple[int, int] | None = None) -> ReadImage:
  """Reads `path` fully (a truncated file fails here, not in training), applies its EXIF orientation and
  converts greyscale / CMYK / palette / alpha / 16-bit to 8-bit RGB.

  `expected_hw`: the (height, width) the annotation file gives. When it matches the stored pixels but not the
  EXIF-rotated ones, the boxes were drawn on the stored pixels, so the orientation is left alone."""
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError as e:
    raise BadImage("missing file", path) from e
  except OSError as e:
    raise BadImage("unreadable file", path, str(e)) from e
  try:
    with Image.open(io.BytesIO(raw)) as im:
      im.load()
      fmt = im.format
      rotated, repairs = im, []
      if im.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
        turned = ImageOps.exif_transpose(im)
        if expected_hw is not None and tuple(expected_hw) == (im.height, im.width) != (turned.height, turned.width):
          repairs.append("EXIF orientation ignored (the annotation's size is the stored pixels')")
        else:
          rotated = turned
          repairs.append("EXIF orientation applied")
      out, conv = _to_rgb(rotated)
      repairs += conv
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadImage("unreadable or truncated image", path, str(e)) from e
  if not repairs and fmt in ("JPEG", "PNG"):
    return ReadImage(raw, out.height, out.width, ())
  buf = io.BytesIO()
  if fmt == "PNG":
    out.save(buf, format="PNG")
  else:
    out.save(buf, format="JPEG", quality=95)
  return ReadImage(buf.getvalue(), out.height, out.width, tuple(repairs))
