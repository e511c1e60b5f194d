"""HF `transformers` checkpoints <-> glipjax modules: BERT (names already mirror HF) and Swin (HF splits q/k/v and
names layers differently; mapped onto the official GLIP Swin names).

Import: `bert_config_from_hf` / `load_bert_state` / `swin_state_from_hf`. Export (`write_hf_encoders`, what
`python -m glipjax.export --format hf` runs): a GLIP model's image and text encoders as two HF model directories,
`swin/` (a `SwinBackbone`) and `bert/` (a `BertModel`), each config.json + model.safetensors in the file layout
`save_pretrained` writes, built from the official GLIP state dict (`official.export_official`) so that the name
mapping lives in one place per direction. Needs neither torch nor transformers.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Mapping

import ml_collections
import numpy as np

from configs.model import bert_base
from glipjax.interop import official
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


# ---- export: glipjax -> HF transformers ----

SWIN_PREFIX = "backbone.body."                 # the Swin body's official GLIP keys (official.EXPORT_RENAMES)
BERT_PREFIX = "language_backbone.body.model."  # the language backbone's: HF BertModel names under this prefix

# The official GLIP Swin names -> HF's checkpoint-file names (the inverse of _SWIN_FROM_HF; q/k/v split apart).
_SWIN_TO_HF = (
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "embeddings.norm."),
    (r"^norm(\d+)\.", lambda m: f"hidden_states_norms.stage{int(m.group(1)) + 1}."),
    (r"^layers\.", "encoder.layers."),
    (r"\.norm1\.", ".layernorm_before."), (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.relative_position_bias_table$", ".attention.self.relative_position_bias_table"),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense."))


def swin_hf_config(swin_cfg) -> dict:
  """The HF `SwinConfig` (config.json) of a `configs.model` Swin config, as a `SwinBackbone` whose `out_features`
  are GLIP's normalised stages (`out_indices` i -> "stage{i+1}"; HF's index 0 is the stem).

  SwinBackbone partitions every stage into windows as GLIP's Swin does, at any image size. `image_size` sizes
  nothing GLIP uses (HF's absolute position embeddings, off); it is set to the smallest input whose every stage
  is larger than the window (GLIP-T: 256), the size from which HF `SwinModel` computes the same stages too: on a
  stage no larger than the window, SwinModel turns the shift off and shrinks the window (a different result at
  224 x 224, a shape error on smaller stages)."""
  depths = [int(d) for d in swin_cfg.depths]
  out_indices = sorted(int(i) for i in swin_cfg.out_indices)
  return dict(
      architectures=["SwinBackbone"], model_type="swin",
      image_size=int(swin_cfg.patch_size) * 2 ** (len(depths) - 1) * (int(swin_cfg.window_size) + 1),
      patch_size=int(swin_cfg.patch_size), num_channels=3, embed_dim=int(swin_cfg.embed_dim), depths=depths,
      num_heads=[int(h) for h in swin_cfg.num_heads], window_size=int(swin_cfg.window_size),
      mlp_ratio=float(swin_cfg.mlp_ratio), qkv_bias=bool(swin_cfg.qkv_bias), hidden_act="gelu",
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=float(swin_cfg.drop_path_rate),
      use_absolute_embeddings=False, layer_norm_eps=1e-5,
      stage_names=["stem"] + [f"stage{i + 1}" for i in range(len(depths))],
      out_features=[f"stage{i + 1}" for i in out_indices], out_indices=[i + 1 for i in out_indices])


def swin_state_to_hf(state: Mapping[str, np.ndarray], prefix: str = SWIN_PREFIX) -> dict[str, np.ndarray]:
  """The Swin body of an official GLIP state dict (keys under `prefix`) -> HF SwinBackbone checkpoint-file names
  (qkv split into query/key/value). Buffers (`relative_position_index`) are dropped: HF recomputes them."""
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    if not key.startswith(prefix) or key.endswith("relative_position_index"):
      continue
    name = key[len(prefix):]
    for pattern, repl in _SWIN_TO_HF:
      name = re.sub(pattern, repl, name)
    if not name.startswith(("embeddings.", "encoder.", "hidden_states_norms.")):
      raise KeyError(f"state-dict key {key!r} has no HF Swin counterpart")
    m = re.search(r"\.attn\.qkv\.(weight|bias)$", name)
    if m:
      for part, array in zip(("query", "key", "value"), np.split(np.asarray(value), 3, axis=0)):
        out[f"{name[:m.start()]}.attention.self.{part}.{m.group(1)}"] = array
      continue
    out[name] = np.asarray(value)
  if not out:
    raise KeyError(f"no Swin parameters (keys under {prefix!r}) in the state dict")
  return out


def bert_hf_config(language_cfg) -> dict:
  """The HF `BertConfig` (config.json) of a `configs.model` language config (the inverse of
  `bert_config_from_hf`)."""
  c = language_cfg
  return dict(
      architectures=["BertModel"], model_type="bert", vocab_size=int(c.vocab_size), hidden_size=int(c.hidden_size),
      num_hidden_layers=int(c.num_layers), num_attention_heads=int(c.num_heads),
      intermediate_size=int(c.intermediate_size), hidden_act="gelu", hidden_dropout_prob=float(c.hidden_dropout),
      attention_probs_dropout_prob=float(c.attention_dropout),
      max_position_embeddings=int(c.max_position_embeddings), type_vocab_size=int(c.type_vocab_size),
      layer_norm_eps=float(c.layer_norm_eps), pad_token_id=int(c.pad_token_id),
      position_embedding_type="absolute", initializer_range=0.02)


def bert_state_to_hf(state: Mapping[str, np.ndarray], prefix: str = BERT_PREFIX) -> dict[str, np.ndarray]:
  """The language backbone of an official GLIP state dict (keys under `prefix`) -> HF BertModel names (no pooler:
  GLIP has none)."""
  out = {k[len(prefix):]: np.asarray(v) for k, v in state.items()
         if k.startswith(prefix) and not k.endswith("embeddings.position_ids")}
  if not out:
    raise KeyError(f"no BERT parameters (keys under {prefix!r}) in the state dict")
  return out


def check_output_dir(out_dir: str | pathlib.Path) -> pathlib.Path:
  """`out_dir` must not exist or be an empty directory: an export never overwrites files."""
  out = pathlib.Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise FileExistsError(f"{out} exists and is not an empty directory: export into a new (or empty) directory")
  return out


def _save_model_dir(directory: pathlib.Path, hf_config: dict, state: Mapping[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file
  directory.mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  # float32 whatever the parameter dtype (exact from bfloat16 / float16); contiguous (abstract exports are views).
  floating = lambda v: v.dtype.kind == "f" or v.dtype.name == "bfloat16"
  arrays = {k: np.ascontiguousarray(v, np.float32 if floating(v) else v.dtype) for k, v in state.items()}
  save_file(arrays, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _write_tokenizer(config, directory: pathlib.Path, tokenizer_file) -> str:
  """The run's tokenizer next to the BERT weights; returns what was written, for the summary."""
  kind = config.data.tokenizer
  if tokenizer_file is None:
    return "none: the run has no tokenizer file"
  source = pathlib.Path(tokenizer_file)
  if not source.is_file():
    raise FileNotFoundError(f"tokenizer file {source} does not exist")
  if kind == "wordpiece":
    from glipjax.text.tokenizers import WordPieceTokenizer
    tok = WordPieceTokenizer(source)  # checks the vocabulary and its special tokens
    if tok.vocab_size > config.model.language.vocab_size:
      raise ValueError(f"the tokenizer {source} has {tok.vocab_size} tokens but the model's vocabulary has "
                       f"{config.model.language.vocab_size}")
    shutil.copyfile(source, directory / "vocab.txt")
    vocab = set(source.read_text(encoding="utf-8").splitlines())
    specials = {name: token for name, token in (("unk_token", "[UNK]"), ("sep_token", "[SEP]"),
                                                ("pad_token", "[PAD]"), ("cls_token", "[CLS]"),
                                                ("mask_token", "[MASK]")) if token in vocab}
    # What WordPieceTokenizer (= GLIP's BertTokenizerFast) does: BERT's basic tokenizer, lower-cased, accents
    # stripped with the lower-casing, CJK characters split.
    (directory / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="BertTokenizer", do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None,
        model_max_length=int(config.model.max_query_len), **specials), indent=2, sort_keys=True) + "\n")
    return "wordpiece: vocab.txt + tokenizer_config.json (BertTokenizer / BertTokenizerFast)"
  if kind == "sentencepiece":
    # No HF tokenizer class reproduces it (a BPE sentencepiece model laid out [CLS] ... [SEP] by glipjax): kept
    # under a name no HF class looks for, to be read with glipjax.text.tokenizers.SentencePieceTokenizer.
    shutil.copyfile(source, directory / "glipjax_sentencepiece.model")
    return ("sentencepiece: not loadable by an HF tokenizer class; copied as glipjax_sentencepiece.model "
            "(glipjax.text.tokenizers.SentencePieceTokenizer)")
  raise ValueError(f"unknown tokenizer kind {kind!r}")


def write_hf_encoders(model, config, out_dir: str | pathlib.Path, tokenizer_file: str | pathlib.Path | None = None
                      ) -> dict:
  """Writes `model`'s (a glipjax GLIP) image and text encoders as HF transformers model directories:

    out_dir/swin/  config.json + model.safetensors: `SwinBackbone.from_pretrained` (feature_maps = GLIP's
                   normalised stages, NCHW; the un-normalised first stage is hidden_states[1])
    out_dir/bert/  config.json + model.safetensors: `BertModel.from_pretrained(..., add_pooling_layer=False)`
                   (last_hidden_state = `GLIP.encode_text`); with a WordPiece `tokenizer_file`, also vocab.txt +
                   tokenizer_config.json for `BertTokenizer(Fast).from_pretrained`

  `config`: the run's config (its `model` and `data.tokenizer`). Refuses a non-empty `out_dir`; writes a sibling
  temporary directory and renames it into place, so a failed export leaves nothing behind. Returns a summary."""
  out = check_output_dir(out_dir)
  state = official.export_official(model)  # parameters only (no buffers), official names
  swin_state, bert_state = swin_state_to_hf(state), bert_state_to_hf(state)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tmp.mkdir()
    swin_cfg = swin_hf_config(config.model.swin)
    _save_model_dir(tmp / "swin", swin_cfg, swin_state)
    _save_model_dir(tmp / "bert", bert_hf_config(config.model.language), bert_state)
    tokenizer = _write_tokenizer(config, tmp / "bert", tokenizer_file)
    os.replace(tmp, out)  # onto a missing or empty directory
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dict(out=str(out), swin=dict(dir=str(out / "swin"), loads_with="SwinBackbone", tensors=len(swin_state),
                                      out_features=swin_cfg["out_features"]),
              bert=dict(dir=str(out / "bert"), loads_with="BertModel", tensors=len(bert_state)),
              tokenizer=tokenizer)
