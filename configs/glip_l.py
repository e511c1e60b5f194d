"""GLIP-L: Swin-L (window 12, drop path 0.4) + BERT-base + 8-layer VL-DyHead.

  python -m glipjax.train --config configs/glip_l.py --workdir /tmp/glip_l
  python -m glipjax.summary --config configs/glip_l.py

Official recipe: `configs/pretrain/glip_Swin_L.yaml` of microsoft/GLIP. Only what differs from the GLIP-T recipe
in configs/base.py is set here.
"""
import ml_collections

from configs import base
from configs import model as model_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = base.get_config(model=model_lib.glip_model("glip_l"))
  # TODO(optim owner): keep these key names in sync with configs/base.py's optim/train/data sections.
  c.optim.weight_decay = 0.01
  # The yaml leaves MODEL.BACKBONE.FREEZE_CONV_BODY_AT at its default 2: Swin patch_embed and stage 1 frozen
  # (1,222,876 parameters with cls_logits; state_dict_shapes_summary.json).
  c.optim.freeze_backbone_at = 2
  # FourODs (O365, OpenImages, Visual Genome, ImageNetBoxes) + GoldG + Cap24M; the yaml uses per-set copies
  # O365 x2, OI x1, VG x3, IN x2, GoldG("mixed") x4, Flickr30k x8, and trains by iterations, not epochs.
  c.data.train_datasets = ("objects365", "openimages", "visual_genome", "imagenet_boxes", "goldg_mixed",
                           "flickr30k_entities", "cap24m")
  c.data.train_dataset_copies = (2, 1, 3, 2, 4, 8, 1)
  c.train.num_steps = 1_000_000
  return c
