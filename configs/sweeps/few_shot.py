"""Few-shot transfer on the embedded task's held-out vocabulary (five circles named with colour words the
pretraining never saw): prompt tuning, linear probing and full fine-tuning of the quickstart model with 1, 5 and
10 images per category, 2 seeds each (each seed draws its own sample; the report gives mean ± std). 18 runs.

  python -m glipjax.tools.synthetic_files --out runs/files/held_out_train --seed 11 --count 1000
  python -m glipjax.tools.synthetic_files --out runs/files/held_out_val --seed 12 --count 200
  python -m glipjax.data.prepare --format coco --annotations runs/files/held_out_train/held_out.json \
      --images runs/files/held_out_train/images --name held_out --split train --data_dir runs/tfds
  python -m glipjax.data.prepare --format coco --annotations runs/files/held_out_val/held_out.json \
      --images runs/files/held_out_val/images --name held_out --split validation --data_dir runs/tfds
  python -m launch.sweep --sweep configs/sweeps/few_shot.py --root runs/few_shot --parallel 2
  python -m launch.report --root runs/few_shot --metrics detection/AP50,detection/AP

Base: configs/transfer.py:prompt_tuning,tiny, starting from runs/quickstart (run `make quickstart` first); each
mode with its recipe's learning rate and weight decay (configs/transfer.py TINY_RECIPES).
"""
from configs import transfer
from glipjax.sweeps import product, seeds, sweep, zipped

MODES = ("prompt_tuning", "linear_probe", "full")


def get_config():
  c = transfer.get_config("prompt_tuning,tiny")
  c.train.init_from = "runs/quickstart"
  c.train.update(num_steps=200, eval_every=200, checkpoint_every=200)
  c.checkpoint.max_to_keep = 1
  c.eval.num_pictures = 2
  return c


def get_sweep():
  recipes = [transfer.TINY_RECIPES[m] for m in MODES]
  modes = zipped(sweep("train.mode", list(MODES)), sweep("optim.learning_rate", [lr for lr, _ in recipes]),
                 sweep("optim.weight_decay", [wd for _, wd in recipes]))
  return product(modes, sweep("data.few_shot", [1, 5, 10]), seeds(2))
