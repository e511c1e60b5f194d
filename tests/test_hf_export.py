"""`glipjax.export --format hf` / `hf.write_hf_encoders`: a GLIP model's Swin and BERT as HF transformers model
directories that `SwinBackbone` / `BertModel` / `BertTokenizer(Fast)` load offline and that compute what glipjax's
own modules compute; the file layout round-trips through the import direction; non-empty outputs are refused."""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import glipjax  # noqa: F401
from configs import tiny
from glipjax import config_utils
from glipjax.interop import hf, official, workdirs
from glipjax.models.glip import GLIP
from glipjax.text.tokenizers import WordPieceTokenizer
from official_weights import random_official_state

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
WORDS = "a red blue green circle square triangle left right of the and on big small".split()
# Measured on this CPU (float32, SDPA attention in transformers 5.25): Swin max |diff| 2.9e-6 on stages of
# magnitude up to ~7, BERT 1.4e-6 on magnitude ~6. The bound leaves ~7x for other CPUs' rounding; a wrong mapping
# (a transposed kernel, q/k/v in the wrong order, a missing norm) is off by O(1).
ATOL = RTOL = 2e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A converted workdir (step 0) of the tiny GLIP with random parameters and a small WordPiece vocabulary, and
  the same parameters in memory. Swin depths (1, 1, 2, 2): stage 4 has a shifted block, as GLIP-T's has."""
  root = tmp_path_factory.mktemp("hf_export")
  vocab = root / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + ["##s"]) + "\n")
  config = tiny.get_config()
  config.model.swin.depths = (1, 1, 2, 2)
  config.data.update(tokenizer="wordpiece", tokenizer_path=str(vocab))
  state = random_official_state(config.model)
  workdirs.convert_official(state, config, root / "run")
  config = config_utils.load_workdir_config(root / "run")
  model = nnx.eval_shape(lambda: GLIP(config.model, rngs=nnx.Rngs(0)))
  official.import_official(model, state, config.model)
  return types.SimpleNamespace(workdir=root / "run", config=config, state=state, model=model, vocab=vocab)


def _close(got, expected, what):
  got, expected = np.asarray(got), np.asarray(expected)
  assert got.shape == expected.shape, what
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL, err_msg=what)
  assert float(np.abs(expected).max()) > 0.5, what  # not an all-zero output


def test_transformers_loads_the_encoders_and_computes_what_glipjax_does(run, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  summary = hf.write_hf_encoders(run.model, run.config, tmp_path / "hf", tokenizer_file=run.vocab)
  assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["bert", "swin"]
  assert sorted(p.name for p in (tmp_path / "hf" / "bert").iterdir()) == [
      "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
  assert summary["swin"]["out_features"] == ["stage2", "stage3", "stage4"]
  assert not list(tmp_path.glob(".hf.partial-*"))

  swin, info = transformers.SwinBackbone.from_pretrained(tmp_path / "hf" / "swin", local_files_only=True,
                                                         output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched key
  bert, info = transformers.BertModel.from_pretrained(tmp_path / "hf" / "bert", local_files_only=True,
                                                      add_pooling_layer=False, output_loading_info=True)
  assert not any(info.values()), info
  # Loadable by the other classes too, with the parts GLIP has not reported as new: SwinModel has a final
  # `layernorm` instead of the per-stage norms, BertModel a pooler by default.
  _, info = transformers.SwinModel.from_pretrained(tmp_path / "hf" / "swin", local_files_only=True,
                                                   output_loading_info=True)
  assert info["missing_keys"] == {"layernorm.weight", "layernorm.bias"}
  assert info["unexpected_keys"] == {f"hidden_states_norms.stage{i}.{p}" for i in (2, 3, 4) for p in ("weight", "bias")}
  _, info = transformers.BertModel.from_pretrained(tmp_path / "hf" / "bert", local_files_only=True,
                                                   output_loading_info=True)
  assert info["missing_keys"] == {"pooler.dense.weight", "pooler.dense.bias"} and not info["unexpected_keys"]

  # 101 x 230: patch and window padding, odd PatchMerging; stage 4 is 4 x 8, a shifted block on a grid that is
  # shorter than the window in one direction and longer in the other.
  images = np.random.default_rng(1).normal(size=(2, 3, 101, 230)).astype(np.float32)
  with torch.no_grad():
    out = swin.eval()(torch.tensor(images), output_hidden_states=True)
  got = jax.jit(lambda x: run.model.backbone(x))(jnp.asarray(images.transpose(0, 2, 3, 1)))
  _close(got[0], out.hidden_states[1].numpy().transpose(0, 2, 3, 1), "stage 1 (GLIP's un-normalised stage)")
  assert len(out.feature_maps) == 3
  for i, f in enumerate(out.feature_maps):
    _close(got[i + 1], f.numpy().transpose(0, 2, 3, 1), f"stage {i + 2}")

  rng = np.random.default_rng(2)
  ids = rng.integers(5, run.config.model.language.vocab_size, (3, 20))
  mask = np.ones((3, 20), np.int64)
  mask[0, 11:] = 0
  mask[2, 4:] = 0
  with torch.no_grad():
    expected = bert.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  got = jax.jit(lambda i, m: run.model.encode_text(i, m))(jnp.asarray(ids), jnp.asarray(mask))
  _close(got, expected, "BERT last hidden state")

  text = "A red circle left of the blue squares, and a purple triangle."  # squares -> square ##s; purple: [UNK]
  ours = WordPieceTokenizer(run.vocab).encode(text, 24)
  assert 1 in ours.input_ids  # the unknown word
  for cls in (transformers.BertTokenizer, transformers.BertTokenizerFast):
    tok = cls.from_pretrained(tmp_path / "hf" / "bert", local_files_only=True)
    enc = tok(text, padding="max_length", max_length=24, truncation=True, return_offsets_mapping=True)
    np.testing.assert_array_equal(enc["input_ids"], ours.input_ids, err_msg=cls.__name__)
    np.testing.assert_array_equal(enc["attention_mask"], ours.attention_mask, err_msg=cls.__name__)
    np.testing.assert_array_equal(enc["offset_mapping"], ours.offsets, err_msg=cls.__name__)
    assert tok.model_max_length == run.config.model.max_query_len and len(tok) == len(WORDS) + 8


def test_files_round_trip_through_the_import_direction(run, tmp_path):
  """The written tensors are the model's, bit for bit: read back with `swin_state_from_hf` /
  `load_bert_checkpoint` they are the official state dict's, and the configs read back to the model's."""
  hf.write_hf_encoders(run.model, run.config, tmp_path / "hf")
  assert not (tmp_path / "hf" / "bert" / "vocab.txt").exists()  # no tokenizer file given
  swin = hf.swin_state_from_hf(load_file(tmp_path / "hf" / "swin" / "model.safetensors"))
  expected = {k[len(hf.SWIN_PREFIX):]: v for k, v in run.state.items()
              if k.startswith(hf.SWIN_PREFIX) and not k.endswith("relative_position_index")}
  assert sorted(swin) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(swin[k], v, err_msg=k)
  cfg, bert = hf.load_bert_checkpoint(tmp_path / "hf" / "bert")
  expected = {k[len(hf.BERT_PREFIX):]: v for k, v in run.state.items() if k.startswith(hf.BERT_PREFIX)}
  assert sorted(bert) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(bert[k], v, err_msg=k)
  architecture = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout",
                  "attention_dropout", "pad_token_id")
  assert {k: cfg[k] for k in architecture} == {k: run.config.model.language[k] for k in architecture}
  swin_cfg = json.loads((tmp_path / "hf" / "swin" / "config.json").read_text())
  s = run.config.model.swin
  assert (swin_cfg["depths"], swin_cfg["num_heads"], swin_cfg["embed_dim"], swin_cfg["window_size"]) == (
      list(s.depths), list(s.num_heads), s.embed_dim, s.window_size)
  assert swin_cfg["image_size"] == 4 * 8 * 8  # every stage built larger than the 7 x 7 window


def test_sentencepiece_runs_and_refusals(run, tmp_path):
  config = run.config.copy_and_resolve_references()
  config.data.tokenizer = "sentencepiece"
  (tmp_path / "sp.model").write_bytes(b"a sentencepiece model")
  summary = hf.write_hf_encoders(run.model, config, tmp_path / "sp", tokenizer_file=tmp_path / "sp.model")
  assert "not loadable" in summary["tokenizer"]
  assert sorted(p.name for p in (tmp_path / "sp" / "bert").iterdir()) == [
      "config.json", "glipjax_sentencepiece.model", "model.safetensors"]

  (tmp_path / "empty").mkdir()
  hf.write_hf_encoders(run.model, run.config, tmp_path / "empty")  # an empty directory is fine
  assert (tmp_path / "empty" / "swin" / "model.safetensors").is_file()
  with pytest.raises(FileExistsError, match="not an empty directory"):
    hf.write_hf_encoders(run.model, run.config, tmp_path / "empty")
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match="not an empty directory"):
    hf.write_hf_encoders(run.model, run.config, tmp_path / "file")
  big = tmp_path / "big_vocab.txt"
  big.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(1200)]) + "\n")
  with pytest.raises(ValueError, match="1204 tokens but the model's vocabulary has 1000"):
    hf.write_hf_encoders(run.model, run.config, tmp_path / "big", tokenizer_file=big)
  assert not (tmp_path / "big").exists() and not list(tmp_path.glob(".big.partial-*"))  # nothing left behind
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    workdirs.model_from_workdir(tmp_path / "no_run")


def _export(*args):
  return subprocess.run([sys.executable, "-m", "glipjax.export", *args], cwd=REPO, env=ENV, capture_output=True,
                        text=True, timeout=600)


def test_export_command_writes_the_workdirs_encoders(run, tmp_path):
  proc = _export("--workdir", str(run.workdir), "--format", "hf", "--out", str(tmp_path / "hf"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout)
  assert summary["format"] == "hf" and summary["step"] == 0 and summary["tokenizer"].startswith("wordpiece")
  swin = load_file(tmp_path / "hf" / "swin" / "model.safetensors")
  expected = hf.swin_state_to_hf(run.state)
  assert sorted(swin) == sorted(expected) and summary["swin"]["tensors"] == len(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(swin[k], v, err_msg=k)
  bert = load_file(tmp_path / "hf" / "bert" / "model.safetensors")
  expected = hf.bert_state_to_hf(run.state)
  assert sorted(bert) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(bert[k], v, err_msg=k)
  assert (tmp_path / "hf" / "bert" / "vocab.txt").read_text() == run.vocab.read_text()

  # A non-empty --out: one line on stderr, exit status 2, the directory untouched.
  proc = _export("--workdir", str(run.workdir), "--format", "hf", "--out", str(tmp_path / "hf"))
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: ") and "not an empty directory" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1  # no traceback
  assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["bert", "swin"]
