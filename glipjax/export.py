"""Export a glipjax run's weights out of JAX.

  python -m glipjax.export --workdir runs/quickstart --format official --out glip.pth [--checkpoint DIR] [--ema]
      [--module_prefix]

`official`: a state dict with the keys, shapes and dtypes of the official `GeneralizedVLRCNN` (microsoft/GLIP),
buffers included, so that `model.load_state_dict(sd, strict=True)` accepts it. `.pth` (torch.save of a flat
state dict; needs torch) or `.safetensors` (always; tensors only). `--module_prefix` prefixes every key with
`module.` as the official DDP training writes them. Default parameters: the checkpoint's trained ones; `--ema`
the EMA ones.

  python -m glipjax.export --workdir runs/quickstart --format hf --out glip_hf [--checkpoint DIR] [--ema]

`hf`: the image and text encoders as HF transformers model directories (`glipjax.interop.hf.write_hf_encoders`):
`glip_hf/swin/` for `SwinBackbone.from_pretrained` (feature_maps = the backbone's normalised stages, NCHW) and
`glip_hf/bert/` for `BertModel.from_pretrained(..., add_pooling_layer=False)` (last_hidden_state = the language
backbone's), each config.json + model.safetensors, plus the run's WordPiece vocab.txt + tokenizer_config.json
(BertTokenizer / BertTokenizerFast). Needs neither torch nor transformers. --out must be new or empty.

  python -m glipjax.export --workdir runs/quickstart --format onnx --out glip.onnx [--image_size H,W]
      [--text_len T] [--batch B] [--postprocess [--max_phrases L]]

`onnx`: the whole detector (normalised image + token ids + attention mask -> grounding logits, box deltas,
centerness over all anchors), the text encoder included, at the static shapes given (default: the config's
`data.canvas`, `model.max_query_len`, batch 1); `--postprocess [--max_phrases L]` adds the detections (boxes,
scores, phrase labels) of the run's evaluation post-processing; see `glipjax.interop.onnx_model` for the limits.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

import glipjax  # noqa: F401
from glipjax.interop import official, workdirs


def export_official(f) -> dict:
  out = pathlib.Path(f.out)
  if out.suffix not in (".pth", ".pt", ".safetensors"):
    raise ValueError(f"--out {out}: the file name must end in .pth, .pt or .safetensors")
  step, state = workdirs.official_state_from_workdir(f.workdir, checkpoint=f.checkpoint, ema=f.ema or False)
  if f.module_prefix:
    state = {"module." + k: v for k, v in state.items()}
  official.save_state_dict(state, out)
  return dict(out=str(out), format="official", step=int(step), tensors=len(state))


def export_hf(f) -> dict:
  from glipjax.interop import hf
  out = hf.check_output_dir(f.out)  # before the restore: never overwrites
  step, model, config = workdirs.model_from_workdir(f.workdir, checkpoint=f.checkpoint, ema=f.ema or False)
  summary = hf.write_hf_encoders(model, config, out, tokenizer_file=workdirs.tokenizer_file(config, f.workdir))
  return dict(summary, format="hf", step=int(step))


def _image_size(text: str | None, config) -> tuple[int, int]:
  if not text:
    return tuple(int(v) for v in config.data.canvas)
  try:
    h, w = (int(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--image_size {text!r}: expected H,W (e.g. 800,1344)") from None
  return h, w


def export_onnx(f) -> dict:
  from glipjax import config_utils
  from glipjax.interop import onnx_model
  config = config_utils.load_workdir_config(f.workdir)  # shapes are checked before the (slow) restore
  size = _image_size(f.image_size, config)
  text_len = f.text_len or config.model.max_query_len
  onnx_model.check_shapes(config.model, batch=f.batch, image_size=size, text_len=text_len)
  postprocess = onnx_model.postprocess_options(config, max_phrases=f.max_phrases) if f.postprocess else None
  if postprocess:
    onnx_model.check_postprocess(postprocess)
  if pathlib.Path(f.out).exists():
    raise FileExistsError(f"--out {f.out} exists: choose a new file")
  step, model, config = workdirs.model_from_workdir(f.workdir, checkpoint=f.checkpoint, ema=f.ema or False,
                                                    config=config)
  summary = onnx_model.export_onnx(model, config.model, f.out, batch=f.batch, image_size=size, text_len=text_len,
                                   postprocess=postprocess)
  return dict(summary, format="onnx", step=int(step))


# --format -> a function of the parsed flags that writes --out and returns a summary to print.
EXPORTERS = {"official": export_official, "hf": export_hf, "onnx": export_onnx}


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    summary = EXPORTERS[f.format](f)
  except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as e:
    print(f"error: {e}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "a glipjax workdir (config.json + checkpoints)")
  flags.DEFINE_string("checkpoint", None, "a checkpoints folder (<run>/best, another run's) or one step of one; "
                      "default: the newest intact one of the workdir")
  flags.DEFINE_enum("format", "official", sorted(EXPORTERS), "official: the microsoft/GLIP state dict; "
                    "hf: the Swin and BERT encoders as HF transformers model directories; "
                    "onnx: the whole detector with its text encoder, at static shapes")
  flags.DEFINE_string("out", None, "official: the file to write (.pth, .pt or .safetensors); hf: a new or empty "
                      "directory (swin/ and bert/ go in it); onnx: a new .onnx file")
  flags.DEFINE_bool("ema", False, "export the EMA parameters (the run must keep them)")
  flags.DEFINE_bool("module_prefix", False, "prefix every key with 'module.' (official DDP checkpoints)")
  flags.DEFINE_string("image_size", None, "onnx: the canvas H,W, multiples of 32 (default: the config's data.canvas)")
  flags.DEFINE_integer("text_len", None, "onnx: the prompt length in tokens (default: model.max_query_len)")
  flags.DEFINE_integer("batch", 1, "onnx: the batch size")
  flags.DEFINE_bool("postprocess", False, "onnx: also the detections (glipjax.ops.postprocess with the run's eval "
                    "thresholds); adds the phrase_map, phrase_mask and image_hw inputs")
  flags.DEFINE_integer("max_phrases", None, "onnx --postprocess: phrases per prompt (default: data.max_phrases)")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
