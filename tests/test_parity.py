"""glipjax reproduces the official GLIP PyTorch code: forward intermediates, ATSS, losses, gradients and
post-processing of the shipped tiny GLIP-T(C) fixture (see glipjax/tools/parity.py for the tolerances)."""
from glipjax.tools import parity


def test_parity_tool_passes_on_the_official_fixture(reference_dir, capsys):
  code = parity.main(["--reference", str(reference_dir)])
  out = capsys.readouterr().out
  assert code == 0, out
  assert "121/121 outputs within tolerance" in out


def test_parity_tool_rejects_a_folder_without_fixture(tmp_path):
  assert parity.main(["--reference", str(tmp_path)]) == 2
