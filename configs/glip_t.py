"""GLIP-T (Swin-T, 6 DyHead layers). `:a` GLIP-T(A) (no fusion), `:b`, `:c` (default) with deep fusion.

  python -m glipjax.train --config configs/glip_t.py:c --workdir gs://bucket/glip_t_c \
      --config.data.name=<dataset> --config.data.tokenizer_path=<bert-base-uncased vocab.txt>
  python -m glipjax.summary --config configs/glip_t.py:a
"""
from configs import base, model


def get_config(arg: str = "c"):
  if arg not in ("a", "b", "c"):
    raise ValueError(f"configs/glip_t.py takes a, b or c (GLIP-T(A/B/C)), got {arg!r}")
  c = base.get_config(model=model.glip_model(f"glip_t_{arg}"))
  c.data.update(tokenizer="wordpiece")
  return c
