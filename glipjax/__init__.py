"""glipjax: GLIP (grounded language-image pretraining) in JAX/Flax NNX."""
import flax

# Parameters carry *logical* axis names as metadata only. Placement happens once, in the trainer, by
# `jax.jit(init, out_shardings=...)` with shardings derived from those names and the config's rules
# (glipjax/sharding.py). Flax's eager sharding would instead demand a mesh whenever a module is built.
flax.config.update("flax_always_shard_variable", False)
