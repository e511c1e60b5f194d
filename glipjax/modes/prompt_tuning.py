"""`train.mode=prompt_tuning`: GLIP's prompt tuning. Everything is frozen except `tunable_linear`, a zero-
initialised [rows, hidden] table (the official `rpn.tunable_linear`, a bias-free Linear 768->1000) whose row t is
added to token t's text features, so tuning starts exactly at the pretrained model. The official recipe trains it
with lr 0.05 and weight decay 0.25 (configs/transfer.py)."""

OFFICIAL_ROWS = 1000


def configure(config) -> None:
  m = config.model
  if not m.tunable_linear_rows:  # a checkpoint converted from a prompt-tuned one brings its own table size
    m.tunable_linear_rows = max(OFFICIAL_ROWS, m.max_query_len)
  config.optim.trainable = ("tunable_linear/.*",)
