"""Import an official GLIP checkpoint into a glipjax workdir.

  python -m glipjax.convert --from-official glip_tiny_model_o365_goldg.pth --config configs/glip_t.py:c \
      --workdir runs/glip_t_official [--ema] [--tokenizer vocab.txt] [--config.a.b=v]

FILE is a torch checkpoint (`.pth`/`.pt`: {"model": ..., "model_ema": ...} or a flat state dict, read with
`weights_only=True`: no code from the file runs), `.safetensors` or `.npz`; keys with or without `module.`.
Strict: every key is a parameter of the config's model or on the documented ignore list
(glipjax/interop/official.py IGNORE), every shape and buffer is checked. The workdir (config.json, the tokenizer
file, an Orbax checkpoint at step 0) is what `train` fine-tunes from and `evaluate` / `predict` read.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

import glipjax  # noqa: F401
from glipjax.interop import official, workdirs


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    state = official.load_official_checkpoint(f["from-official"].value, use_ema=f.ema)
    summary = workdirs.convert_official(state, f.config, f.workdir, tokenizer=f.tokenizer)
  except (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError) as e:
    print(f"error: {e}".replace("\n", " "), file=sys.stderr)
    sys.exit(2)
  print(json.dumps(dict(summary, source=f["from-official"].value), indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("from-official", None, "an official GLIP checkpoint: .pth/.pt, .safetensors or .npz")
  config_flags.DEFINE_config_file("config", None, "the config whose model the checkpoint holds, e.g. "
                                  "configs/glip_t.py:c", lock_config=True)
  flags.DEFINE_string("workdir", None, "the glipjax workdir to create")
  flags.DEFINE_bool("ema", False, "import the checkpoint's model_ema instead of model")
  flags.DEFINE_string("tokenizer", None, "the tokenizer file the weights were trained with (default: the config's "
                      "data.tokenizer_path)")
  flags.mark_flags_as_required(["from-official", "config", "workdir"])
  app.run(main)
