"""`train.mode=full`: every parameter the config's `optim.trainable` / `optim.frozen` patterns leave trainable."""


def configure(config) -> None:
  del config
