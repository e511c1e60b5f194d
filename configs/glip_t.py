"""GLIP-T(A/B/C): Swin-T + BERT-base + 6-layer VL-DyHead, pre-trained on Objects365 (+ GoldG for C).

  python -m glipjax.train --config configs/glip_t.py:c --workdir runs/glip_t_c
  python -m glipjax.summary --config configs/glip_t.py:c

`arg` selects the variant: a (DyConv only, no deep fusion; O365), b (deep fusion; O365), c (deep fusion;
O365 + GoldG, official `configs/pretrain/glip_Swin_T_O365_GoldG.yaml`), optionally with a data preset
(`:c_o365_goldg`, `:b_o365`; see DATA). Values not set here are the official
recipe as configs/base.py encodes it (AdamW 1e-4, language x0.1, weight decay 1e-4, batch 64, warmup 2000, ...).
"""
import ml_collections

from configs import base
from configs import model as model_lib

# Official pre-training data per variant (the yaml's DATASETS.TRAIN), as datasets prepared with
# `python -m glipjax.data.prepare` (README "Data"): o365 (Objects365 COCO-format json), goldg (MDETR's
# final_mixed_train_no_coco.json), flickr30k (MDETR's final_flickr_separateGT_train.json). GLIP concatenates
# them (each sampled in proportion to its size): give the weights your copies' sizes to reproduce that exactly.
DATA = {
    "o365": (("o365", 1.0),),
    "o365_goldg": (("o365", 1.0), ("goldg", 1.0), ("flickr30k", 1.0)),
}
DEFAULT_DATA = {"a": "o365", "b": "o365", "c": "o365_goldg"}


def get_config(arg: str = "c") -> ml_collections.ConfigDict:
  """`arg`: the variant, optionally with a data preset: 'c', 'c_o365_goldg', 'a_o365'."""
  variant, _, data = (arg or "c").lower().partition("_")
  data = data or DEFAULT_DATA.get(variant, "")
  if variant not in DEFAULT_DATA or data not in DATA:
    raise ValueError(f"configs/glip_t.py:{arg}: a variant of {sorted(DEFAULT_DATA)} and optionally '_' and a data "
                     f"preset of {sorted(DATA)}, e.g. c_o365_goldg")
  c = base.get_config(model=model_lib.glip_model(f"glip_t_{variant}"))
  c.data.sources = DATA[data]
  c.data.eval_source = "coco"  # COCO val2017 prepared as `--name coco --split validation`
  # AUGMENT.MULT_MIN_SIZE_TRAIN is (480, 560, 640, 720, 800), a scale per image; here one per batch from 4
  # (base.py), so that with 2 aspect-ratio buckets the run compiles 8 train steps.
  c.optim.ema_decay = 0.999                              # SOLVER.MODEL_EMA of the GLIP-T yaml
  # Repeated layers (BERT, Swin block pairs, DyHead repeats) traced once under lax.scan: the train step compiles
  # in about a minute instead of many (benchmarks/compile_time.py); weights import/export the same either way.
  c.model.scan_layers = True
  # TODO(train): the yaml trains 30 epochs (SOLVER.MAX_EPOCH) at batch 64; num_steps = 30 * len(mixture) / 64
  # once the mixture's size is known to the config.
  return c
