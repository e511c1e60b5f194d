"""Import of official GLIP (microsoft/GLIP, maskrcnn_benchmark) state dicts into `glipjax.models.glip.GLIP`."""
from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Mapping

import numpy as np

from glipjax.interop.torch_layout import load_torch_state, torch_state_from_module

# Official wrapper prefixes -> our top-level attributes, then torch Sequential indices -> our names.
RENAMES = (
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.", "fpn."),
    (r"^language_backbone\.body\.model\.", "language_backbone."),
    (r"^rpn\.head\.dyhead_tower\.", "head.dyhead_tower.dyhead_tower."),  # our tower module wraps the list
    (r"^rpn\.head\.", "head."),
    (r"\.AttnConv\.1\.", ".AttnConv."),
    (r"\.relu\.fc\.0\.", ".relu.fc1."),
    (r"\.relu\.fc\.2\.", ".relu.fc2."),
)
# Buffers we recompute, and parts we do not model (prompt-tuning linear, classic RPN leftovers).
IGNORE = (r"relative_position_index$", r"^rpn\.anchor_generator\.", r"embeddings\.position_ids$",
          r"^rpn\.tunable_linear\.")
EXPORT_RENAMES = (
    (r"^backbone\.", "backbone.body."),
    (r"^fpn\.", "backbone.fpn."),
    (r"^language_backbone\.", "language_backbone.body.model."),
    (r"^head\.dyhead_tower\.dyhead_tower\.", "rpn.head.dyhead_tower."),
    (r"^head\.", "rpn.head."),
    (r"\.AttnConv\.", ".AttnConv.1."),
    (r"\.relu\.fc1\.", ".relu.fc.0."),
    (r"\.relu\.fc2\.", ".relu.fc.2."),
)


def strip_module_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """DDP-trained checkpoints prefix every key with `module.`."""
  return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def import_official(model, state_dict: Mapping[str, np.ndarray]) -> list[str]:
  """Loads an official GLIP state dict into `model` in place (strict: every parameter must be present)."""
  return load_torch_state(model, strip_module_prefix(state_dict), renames=RENAMES, ignore=IGNORE)


def export_official(model) -> dict[str, np.ndarray]:
  """Our parameters in the official key layout (the inverse of `import_official`, without buffers)."""
  return torch_state_from_module(model, renames=EXPORT_RENAMES)


def load_official_checkpoint(path: str | pathlib.Path, *, use_ema: bool = False,
                             trusted: bool = False) -> dict[str, np.ndarray]:
  """Reads `.npz` (a flat state dict) or a torch `.pth`/`.pt` checkpoint ({"model": ..., "model_ema": ...}).

  Torch files are unpickled with `weights_only=True` (tensors, containers and numbers only) unless `trusted`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  try:
    if path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0)") from e
    ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
  except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError, RuntimeError, OSError) as e:
    raise ValueError(f"checkpoint {path} is corrupt or not a GLIP checkpoint: {e}") from e
  if isinstance(ckpt, dict) and ("model" in ckpt or "model_ema" in ckpt):
    key = "model_ema" if use_ema else "model"
    if key not in ckpt:
      raise KeyError(f"checkpoint {path} has no {key!r} entry (has {sorted(ckpt)})")
    ckpt = ckpt[key]
  if not isinstance(ckpt, dict):
    raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
  return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in ckpt.items()}
