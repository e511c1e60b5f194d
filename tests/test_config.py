"""The one override syntax, --config.KEY=VALUE: parsed by the key's type, errors for unknown keys and wrong types,
the same for every command."""
import subprocess
import sys

import pytest

from configs import tiny
from glipjax import config_utils

from benchmarks import common


def test_values_are_parsed_by_the_type_of_the_key():
  c = config_utils.apply_overrides(tiny.get_config(), {
      "model.dyhead.fusion": "true", "train.num_steps": "5", "data.canvas": "(96,96)", "optim.learning_rate": "2e-3",
      "data.tokenizer": "wordpiece", "checkpoint.best_metric": "grounding/AP"})
  assert c.model.dyhead.fusion is True and c.train.num_steps == 5 and c.data.canvas == (96, 96)
  assert c.optim.learning_rate == 2e-3 and c.checkpoint.best_metric == "grounding/AP"
  assert config_utils.apply_overrides(tiny.get_config(), {"model.dyhead.fusion": "0"}).model.dyhead.fusion is False
  for bad, message in [({"train.num_steps": "x"}, "expected an int"), ({"model.dyhead.fusion": "yes"}, "true or false"),
                       ({"data.canvas": "96"}, "expected a tuple"), ({"train.num_steps": 1.5}, "train.num_steps")]:
    with pytest.raises(ValueError, match=message):
      config_utils.apply_overrides(tiny.get_config(), bad)
  with pytest.raises(KeyError, match="train.num_stepz"):
    config_utils.apply_overrides(tiny.get_config(), {"train.num_stepz": "3"})
  with pytest.raises(KeyError, match="no 'num_steps'"):
    config_utils.apply_overrides(tiny.get_config(), {"train.num_steps.x": "3"})


def test_command_lines_split_into_arguments_and_overrides():
  rest, overrides = config_utils.split_config_flags(["--workdir", "w", "--config.train.num_steps=3",
                                                     "--config.data.canvas", "(64,64)"])
  assert rest == ["--workdir", "w"] and overrides == {"train.num_steps": "3", "data.canvas": "(64,64)"}
  with pytest.raises(ValueError, match="needs a value"):
    config_utils.split_config_flags(["--config.train.num_steps"])


def test_benchmarks_take_the_same_overrides():
  import argparse
  parser = argparse.ArgumentParser()
  common.add_config_args(parser, "configs/tiny.py")
  args = common.parse_args(parser, ["--config", "configs/glip_t.py:c", "--config.model.dtype=bfloat16"])
  assert args.config == "configs/glip_t.py:c"
  assert common.overrides_from_args(args, {"model.dtype": "float32", "train.num_steps": 1}) == {
      "model.dtype": "bfloat16", "train.num_steps": 1}
  assert common.load_config("configs/tiny.py", args.overrides).model.dtype == "bfloat16"


def test_quickstart_rejects_a_bad_override_in_one_line():
  out = subprocess.run([sys.executable, "-m", "glipjax.quickstart", "--config.train.num_steps=many"],
                       capture_output=True, text=True)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "glipjax.quickstart: --config.train.num_steps=many: expected an int (the key holds 1600)")
  assert "Traceback" not in out.stderr
