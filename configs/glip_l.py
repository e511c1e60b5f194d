"""GLIP-L (Swin-L, 8 DyHead layers, weight decay 0.01).

  python -m glipjax.train --config configs/glip_l.py --workdir gs://bucket/glip_l \
      --config.data.name=<dataset> --config.data.tokenizer_path=<bert-base-uncased vocab.txt>
"""
from configs import base, model


def get_config():
  c = base.get_config(model=model.glip_model("glip_l"))
  c.optim.weight_decay = 0.01
  return c
