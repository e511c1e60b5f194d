"""glipjax: GLIP (grounded language-image pretraining) in JAX/Flax NNX."""
import os

# Set before the first computation creates the CPU client (importing jax does not). XLA:CPU's YNNPACK reduce
# fusions run a reduction whose outermost dimension is 1 (every batch-1 step: the deformable convs' weight
# gradients, norms) 30-40x slower than XLA's own loop emitter: [1, 14400, 256] -> [1, 14400] takes 43 ms, the
# same data as [14400, 256] 1.4 ms (jaxlib 0.10.2). Dropping the reduce kind keeps YNNPACK's dots and convs.
# A user's own setting of the flag wins. (benchmarks/README.md: the GLIP-T(C) CPU step 8.4 s -> 6.6 s.)
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)


def _with_default_flags(xla_flags: str) -> str:
  own = {f.split("=")[0] for f in xla_flags.split()}
  return " ".join([xla_flags] * bool(xla_flags) + [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in own])


os.environ["XLA_FLAGS"] = _with_default_flags(os.environ.get("XLA_FLAGS", ""))

import flax  # noqa: E402

# Parameters carry *logical* axis names as metadata only. Placement happens once, in the trainer, by
# `jax.jit(init, out_shardings=...)` with shardings derived from those names and the config's rules
# (glipjax/sharding.py). Flax's eager sharding would instead demand a mesh whenever a module is built.
flax.config.update("flax_always_shard_variable", False)
