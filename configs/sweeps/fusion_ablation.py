"""The first ablation, on the embedded data: deep fusion, DyHead depth, negative prompts and the alignment loss,
one factor at a time around the embedded default, 3 seeds each (18 runs of 400 steps: about an hour on 2 CPU
cores with --parallel 2).

  python -m launch.sweep --sweep configs/sweeps/fusion_ablation.py --root runs/fusion_ablation --parallel 2
  python -m launch.report --root runs/fusion_ablation

Base: configs/tiny.py (late fusion, GLIP-T(A)-style DyConv tower of 2 layers, token focal loss, detection prompts
with negatives, negative captions), trained 400 steps with one evaluation at the end.
"""
from configs import tiny
from glipjax.sweeps import chain, product, seeds, sweep, zipped


def get_config():
  c = tiny.get_config()
  c.train.update(num_steps=400, eval_every=400, checkpoint_every=200, log_every=25)
  c.checkpoint.max_to_keep = 1
  c.eval.num_pictures = 2
  return c


def get_sweep():
  settings = chain(
      [{}],
      sweep("model.dyhead.fusion", [True]),                          # GLIP-T(B)-style deep fusion
      zipped(sweep("model.dyhead.num_layers", [1, 3]),               # with the official layer scale 1 / layers
             sweep("model.dyhead.layer_scale_init", [1.0, 1.0 / 3])),
      zipped(sweep("data.max_negatives", [0]), sweep("data.caption_negatives", [0])),  # no negative prompts
      sweep("model.head.alignment", ["contrastive"]),                # MDETR's contrastive alignment loss alone
  )
  return product(settings, seeds(3))
