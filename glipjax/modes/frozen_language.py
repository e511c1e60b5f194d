"""`train.mode=frozen_language`: the language backbone keeps its weights (a pretrained BERT, or the embedded
default's random tower whose word vectors stay distinct because nothing trains them); its backward pass is not
computed."""

PATTERN = "language_backbone/.*"


def configure(config) -> None:
  if PATTERN not in config.optim.frozen:
    config.optim.frozen = tuple(config.optim.frozen) + (PATTERN,)
