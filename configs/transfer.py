"""Transfer recipes: prompt tuning, linear probing and fine-tuning of a pretrained GLIP on a downstream detection
dataset, trained on the one fixed prompt naming its categories (as it is evaluated) and optionally few-shot.

  python -m glipjax.train --config configs/transfer.py:prompt_tuning --workdir runs/aquarium_pt \
      --config.train.init_from=runs/glip_t_converted --config.data.sources='(("odinw_aquarium", 1.0),)' \
      --config.data.few_shot=5

get_config("MODE") is GLIP-T; get_config("MODE,tiny") the embedded tiny model on the held-out vocabulary that
`python -m glipjax.tools.synthetic_files` writes (README, "Transfer"). MODE is a train.mode (glipjax/modes/):
  prompt_tuning    the official recipe: the prompt table alone, lr 0.05, weight decay 0.25
  linear_probe     the head's predictors alone (the paper's linear probing), lr 10x the fine-tuning one
  full             fine-tuning, the official recipe's lr 1e-5 with the language backbone at 0.1x
  frozen_language  fine-tuning with the text encoder frozen
The workdir starts from `train.init_from` (a glipjax workdir or an official GLIP checkpoint) with a fresh
optimizer; a prompt-tuning workdir exports its table as the official `rpn.tunable_linear.weight`.
"""
from configs import glip_t, tiny

RECIPES = {  # mode -> (learning rate, weight decay)
    "prompt_tuning": (0.05, 0.25),
    "linear_probe": (1e-4, 1e-4),
    "full": (1e-5, 1e-4),
    "frozen_language": (1e-5, 1e-4),
}
# The tiny model trains from a 1e-3 pretraining lr; its fine-tuning lrs are scaled the same way.
TINY_RECIPES = {"prompt_tuning": (0.05, 0.25), "linear_probe": (1e-3, 1e-4), "full": (1e-4, 1e-4),
                "frozen_language": (1e-4, 1e-4)}


def get_config(arg: str = "prompt_tuning"):
  mode, _, size = arg.partition(",")
  if mode not in RECIPES or size not in ("", "tiny"):
    raise ValueError(f"configs/transfer.py:{arg}: use MODE or MODE,tiny with MODE one of {', '.join(RECIPES)}")
  c = tiny.get_config() if size else glip_t.get_config("c")
  lr, wd = (TINY_RECIPES if size else RECIPES)[mode]
  c.train.mode = mode
  c.data.update(fixed_prompt=True, detection_prompt_prob=1.0, caption_negatives=0)
  c.optim.update(learning_rate=lr, weight_decay=wd, schedule="cosine", ema_decay=0.0)
  if size:  # the held-out vocabulary of tools/synthetic_files.py, 10 images per category
    c.data.update(sources=(("held_out", 1.0),), few_shot=10)
    c.optim.update(warmup_steps=20)
    c.train.update(num_steps=300, eval_every=300, checkpoint_every=300, log_every=25)
  else:  # ODinW-style fine-tuning: batch 8, a few thousand steps, on the dataset the command line names
    c.data.sources = (("downstream", 1.0),)  # not prepared: an error asks for --config.data.sources
    c.optim.update(warmup_steps=100)
    c.train.update(global_batch_size=8, num_steps=2000, eval_every=500, checkpoint_every=500)
  return c

