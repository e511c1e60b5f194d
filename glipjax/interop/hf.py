"""HF `transformers` checkpoints -> glipjax modules: BERT (names already mirror HF) and Swin (HF splits q/k/v and
names layers differently; mapped onto the official GLIP Swin names)."""
from __future__ import annotations

import json
import pathlib
import re
from typing import Mapping

import ml_collections
import numpy as np

from configs.model import bert_base
from glipjax.interop.torch_layout import load_torch_state

BERT_IGNORE = (r"^pooler\.", r"embeddings\.position_ids$", r"^cls\.")


def bert_config_from_hf(hf_config: Mapping) -> ml_collections.ConfigDict:
  """A `configs.model` language config from an HF BertConfig dict (config.json)."""
  if hf_config.get("hidden_act", "gelu") != "gelu" or hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError("only BERT with erf-GELU and absolute position embeddings is supported")
  c = bert_base()
  c.update(vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
           num_layers=hf_config["num_hidden_layers"], num_heads=hf_config["num_attention_heads"],
           intermediate_size=hf_config["intermediate_size"],
           max_position_embeddings=hf_config["max_position_embeddings"],
           type_vocab_size=hf_config["type_vocab_size"], layer_norm_eps=hf_config["layer_norm_eps"],
           hidden_dropout=hf_config["hidden_dropout_prob"], attention_dropout=hf_config["attention_probs_dropout_prob"],
           pad_token_id=hf_config.get("pad_token_id", 0))
  return c


def load_bert_state(module, state: Mapping[str, np.ndarray]) -> None:
  """HF BertModel (or BertFor* with a `bert.` prefix) state dict -> glipjax BertModel, strict."""
  state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
  load_torch_state(module, state, ignore=BERT_IGNORE)


def load_bert_checkpoint(directory: str | pathlib.Path):
  """(language config, state dict) of an HF checkpoint directory: config.json + model.safetensors."""
  from safetensors.numpy import load_file
  directory = pathlib.Path(directory)
  cfg = bert_config_from_hf(json.loads((directory / "config.json").read_text()))
  return cfg, load_file(directory / "model.safetensors")


# HF Swin names -> the official GLIP Swin names, for both HF layouts: the checkpoint files (what `save_pretrained`
# writes in transformers 4.x and 5.x alike: `attention.self.query`, `intermediate.dense`, `output.dense`) and the
# in-memory modules of transformers >= 5 (`model.state_dict()`: `attention.q_proj`, `attention.o_proj`,
# `attention.relative_position_bias.relative_position_bias_table`, `mlp.fc1/fc2`, SwinBackbone's `swin.` prefix),
# which 5.x renames the file names into on load (its conversion_mapping "swin" / "SwinBackbone").
_SWIN_FROM_HF = (
    (r"^(swin\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(swin\.)?embeddings\.norm\.", "patch_embed.norm."),
    (r"^(swin\.)?encoder\.layers\.", "layers."),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.(self|relative_position_bias)\.relative_position_bias_table$",
     ".attn.relative_position_bias_table"),
    (r"\.attention\.(output\.dense|o_proj)\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^(swin\.)?hidden_states_norms\.stage(\d)\.", lambda m: f"norm{int(m.group(2)) - 1}."))
_QKV = {"query": "query", "key": "key", "value": "value", "q_proj": "query", "k_proj": "key", "v_proj": "value"}


def swin_state_from_hf(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF `SwinModel` / `SwinBackbone` keys (checkpoint-file or transformers-5 module names) -> the official GLIP Swin
  names (fusing query/key/value into qkv). SwinModel's final `layernorm` has no GLIP counterpart and is dropped."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    if "relative_position_index" in key or key.startswith(("pooler", "layernorm", "swin.layernorm")):
      continue
    for pattern, repl in _SWIN_FROM_HF:
      key = re.sub(pattern, repl, key)
    m = re.search(r"\.attention\.(?:self\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$", key)
    if m:
      base = key[:m.start()] + ".attn.qkv." + m.group(2)
      qkv.setdefault(base, {})[_QKV[m.group(1)]] = np.asarray(value)
      continue
    out[key] = np.asarray(value)
  for base, parts in qkv.items():
    out[base] = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
  return out
