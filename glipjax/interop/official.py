"""Import of official GLIP (microsoft/GLIP, maskrcnn_benchmark) state dicts into `glipjax.models.glip.GLIP`."""
from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Mapping

import numpy as np

from glipjax.interop.torch_layout import load_torch_state, torch_state_from_module
from glipjax.models.swin import relative_position_index
from glipjax.ops.anchors import cell_anchor

# Official wrapper prefixes -> our top-level attributes, then torch Sequential indices -> our names.
RENAMES = (
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.", "fpn."),
    (r"^language_backbone\.body\.model\.", "language_backbone."),
    (r"^rpn\.head\.dyhead_tower\.", "head.dyhead_tower.dyhead_tower."),  # our tower module wraps the list
    (r"^rpn\.head\.", "head."),
    (r"^rpn\.tunable_linear\.", "tunable_linear."),  # prompt tuning (model.tunable_linear_rows)
    (r"\.AttnConv\.1\.", ".AttnConv."),
    (r"\.relu\.fc\.0\.", ".relu.fc1."),
    (r"\.relu\.fc\.2\.", ".relu.fc2."),
)
# Official keys that are not parameters of ours, on import: the buffers we recompute from the config (checked
# against it when the config is given: `official_buffers`), BERT's `position_ids` (arange(512), persistent in
# the transformers releases GLIP was trained with, non-persistent since 4.31).
IGNORE = (r"relative_position_index$", r"^rpn\.anchor_generator\.", r"embeddings\.position_ids$")
EXPORT_RENAMES = (
    (r"^backbone\.", "backbone.body."),
    (r"^fpn\.", "backbone.fpn."),
    (r"^language_backbone\.", "language_backbone.body.model."),
    (r"^head\.dyhead_tower\.dyhead_tower\.", "rpn.head.dyhead_tower."),
    (r"^head\.", "rpn.head."),
    (r"^tunable_linear\.", "rpn.tunable_linear."),
    (r"\.AttnConv\.", ".AttnConv.1."),
    (r"\.relu\.fc1\.", ".relu.fc.0."),
    (r"\.relu\.fc2\.", ".relu.fc.2."),
)


def strip_module_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """DDP-trained checkpoints prefix every key with `module.`."""
  return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def official_buffers(model_cfg) -> dict[str, np.ndarray]:
  """The buffers the official `GeneralizedVLRCNN` registers in its state dict, as it computes them: each Swin
  block's window `relative_position_index` (int64) and the ATSS anchor generator's `cell_anchors` (one square
  anchor per level, float32 [1, 4])."""
  out = {}
  index = relative_position_index(model_cfg.swin.window_size).astype(np.int64)
  for stage, depth in enumerate(model_cfg.swin.depths):
    for block in range(depth):
      out[f"backbone.body.layers.{stage}.blocks.{block}.attn.relative_position_index"] = index
  for level, (stride, size) in enumerate(zip(model_cfg.anchors.strides, model_cfg.anchors.sizes)):
    out[f"rpn.anchor_generator.cell_anchors.{level}"] = cell_anchor(stride, size)[None]
  return out


def _check_buffers(state: Mapping[str, np.ndarray], model_cfg) -> None:
  """A checkpoint's buffers must be the ones this config computes: a different window size or anchor
  generator would otherwise import silently and detect differently."""
  for key, expected in official_buffers(model_cfg).items():
    if key not in state:
      continue  # buffers are recomputed: a checkpoint saved without them is fine
    found = np.asarray(state[key])
    if found.shape != expected.shape or not np.array_equal(found, expected):
      raise ValueError(f"state-dict key {key!r}: the checkpoint's buffer (shape {found.shape}) differs from the "
                       f"config's (shape {expected.shape}): the config's swin.window_size or anchors do not "
                       "match the checkpoint's model")


def import_official(model, state_dict: Mapping[str, np.ndarray], model_cfg=None) -> list[str]:
  """Loads an official GLIP state dict into `model` in place. Strict: every parameter must be present and every
  key is a parameter or on `IGNORE`; with `model_cfg`, the buffers are checked against it too."""
  state = strip_module_prefix(state_dict)
  if model_cfg is not None:
    _check_buffers(state, model_cfg)
  return load_torch_state(model, state, renames=RENAMES, ignore=IGNORE)


def export_official(model, model_cfg=None) -> dict[str, np.ndarray]:
  """Our parameters in the official key layout (the inverse of `import_official`); with `model_cfg`, plus the
  buffers the official model registers, so that `load_state_dict(strict=True)` accepts it."""
  out = torch_state_from_module(model, renames=EXPORT_RENAMES)
  if model_cfg is not None:
    out.update(official_buffers(model_cfg))
  return out


def load_official_checkpoint(path: str | pathlib.Path, *, use_ema: bool = False,
                             trusted: bool = False) -> dict[str, np.ndarray]:
  """Reads `.npz` or `.safetensors` (a flat state dict) or a torch `.pth`/`.pt` checkpoint ({"model": ...,
  "model_ema": ...} or a flat state dict).

  Torch files are unpickled with `weights_only=True` (tensors, containers and numbers only: no code from the
  file runs) unless `trusted`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  try:
    if path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    if path.suffix == ".safetensors":
      from safetensors.numpy import load_file
      return load_file(path)
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0); .safetensors and .npz "
                        "checkpoints do not") from e
    ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
  except pickle.UnpicklingError as e:
    if "unsupported global" in str(e).lower():  # a class or function reference: what runs code on unpickling
      raise ValueError(f"checkpoint {path} was refused: it holds Python objects other than tensors and numbers, "
                       "which would run code when unpickled (only weights are read)") from e
    raise ValueError(f"checkpoint {path} is corrupt or not a GLIP checkpoint: {e}") from e
  except (zipfile.BadZipFile, ValueError, EOFError, RuntimeError, OSError) as e:
    raise ValueError(f"checkpoint {path} is corrupt or not a GLIP checkpoint: {e}") from e
  if isinstance(ckpt, dict) and ("model" in ckpt or "model_ema" in ckpt):
    key = "model_ema" if use_ema else "model"
    if key not in ckpt:
      raise KeyError(f"checkpoint {path} has no {key!r} entry (has {sorted(ckpt)})")
    ckpt = ckpt[key]
  elif use_ema:
    raise KeyError(f"checkpoint {path} is a flat state dict: it has no 'model_ema' entry")
  if not isinstance(ckpt, dict):
    raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
  out = {}
  for k, v in ckpt.items():
    if not isinstance(v, torch.Tensor):
      raise ValueError(f"checkpoint {path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out[k] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
  return out


def save_state_dict(state: Mapping[str, np.ndarray], path: str | pathlib.Path) -> None:
  """`.safetensors` (tensors only) or `.pth`/`.pt` (torch.save of a flat state dict of tensors)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}  # abstract exports are zero-stride views
  if path.suffix == ".safetensors":
    from safetensors.numpy import save_file
    save_file(arrays, str(path))
    return
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"writing {path} needs PyTorch (pip install torch==2.13.0); write a .safetensors file "
                      "instead") from e
  torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
