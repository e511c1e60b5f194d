"""Pure Flax NNX modules: arrays in, arrays (+ aux dicts) out. No losses, optimisers or data code here."""
