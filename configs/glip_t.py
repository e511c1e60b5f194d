"""GLIP-T(A/B/C): Swin-T + BERT-base + 6-layer VL-DyHead, pre-trained on Objects365 (+ GoldG for C).

  python -m glipjax.train --config configs/glip_t.py:c --workdir /tmp/glip_t_c
  python -m glipjax.summary --config configs/glip_t.py:c

`arg` selects the variant: a (no deep fusion, O365), b (deep fusion, O365), c (deep fusion, O365 + GoldG;
official `configs/pretrain/glip_Swin_T_O365_GoldG.yaml`). Everything not set here is the official recipe as
encoded in configs/base.py (AdamW 1e-4 / 1e-5 language, weight decay 1e-4, 30 epochs at batch 64, ...).
"""
import ml_collections

from configs import base
from configs import model as model_lib

# Official training sets of each variant (GLIP paper Table 1 / the pretrain yamls).
TRAIN_DATA = {
    "a": ("objects365",),
    "b": ("objects365",),
    # "mixed_train_no_coco" is GoldG without COCO images (Flickr30k + VG captions, MDETR-style).
    "c": ("objects365", "goldg_mixed_no_coco", "flickr30k_entities"),
}


def get_config(arg: str = "c") -> ml_collections.ConfigDict:
  arg = (arg or "c").lower()
  if arg not in TRAIN_DATA:
    raise ValueError(f"configs/glip_t.py:{arg}: choose one of {sorted(TRAIN_DATA)}")
  c = base.get_config(model=model_lib.glip_model(f"glip_t_{arg}"))
  # TODO(data owner): rename to the data section's key for the training mixture once configs/base.py has it.
  c.data.train_datasets = TRAIN_DATA[arg]
  return c
