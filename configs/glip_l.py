"""GLIP-L: Swin-L (embed 192, window 12, drop path 0.4) + BERT-base + 8-layer VL-DyHead.

  python -m glipjax.train --config configs/glip_l.py --workdir runs/glip_l
  python -m glipjax.summary --config configs/glip_l.py

Official recipe: `configs/pretrain/glip_Swin_L.yaml` of microsoft/GLIP; only what differs from configs/base.py
is set here.
"""
import ml_collections

from configs import base
from configs import model as model_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = base.get_config(model=model_lib.glip_model("glip_l"))
  # AUGMENT.MULT_MIN_SIZE_TRAIN is (480, 560, 640, 720, 800), a scale per image; here one per batch from 4
  # (base.py), so that with 2 aspect-ratio buckets the run compiles 8 train steps.
  c.optim.weight_decay = 0.01                            # SOLVER.WEIGHT_DECAY (GLIP-T: 1e-4)
  # Repeated layers (BERT, Swin block pairs, DyHead repeats) traced once under lax.scan: the train step compiles
  # in about a minute instead of many (benchmarks/compile_time.py); weights import/export the same either way.
  c.model.scan_layers = True
  c.train.num_steps = 1_000_000                          # SOLVER.MAX_ITER; steps at 0.67 / 0.89 as in base
  # TODO(optim): SOLVER.WEIGHT_DECAY_SCHEDULE=True (weight decay x0.1 together with the lr steps) has no key.
  # TODO(optim): the yaml keeps MODEL.BACKBONE.FREEZE_CONV_BODY_AT=2, i.e. Swin patch_embed and stage 1 frozen
  # (1,222,876 parameters with cls_logits); needs a freeze key in optim.
  # The yaml's FourODs (O365 x2, OpenImages x1, VG x3, ImageNetBoxes x2) + GoldG ("mixed" x4, Flickr30k x8), as
  # prepared datasets weighted by their *_COPY factors (times each copy's size to match GLIP's concatenation);
  # Cap24M needs pseudo-labels first.
  c.data.sources = (("o365", 2.0), ("openimages", 1.0), ("vg", 3.0), ("imagenet_boxes", 2.0), ("goldg", 4.0),
                    ("flickr30k", 8.0))
  c.data.eval_source = "coco"
  return c
