"""glipjax reproduces the official GLIP PyTorch code: forward intermediates, anchors, ATSS assignment, losses,
head gradients and post-processing of the shipped tiny GLIP-T(C) fixture (tolerances: glipjax/tools/parity.py).
One forward+loss compile: ~30 s on 2 cores. It is the project's acceptance bar, so it runs by default."""
import re

from glipjax.tools import parity


def test_parity_tool_passes_on_the_official_fixture(reference_dir, capsys):
  code = parity.main(["--reference", str(reference_dir)])
  out = capsys.readouterr().out
  assert code == 0, out
  m = re.search(r"(\d+)/(\d+) outputs within tolerance", out)
  assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 128, out
  for name in ("tower5_dyconv_visual_l0", "dot_product_logits_l0", "loss_dot_product_token",
               "grad.rpn.head.log_scale", "post_img1_boxes"):
    assert re.search(rf"^{re.escape(name)}\s.*yes$", out, re.M), name


def test_parity_tool_rejects_a_folder_without_fixture(tmp_path, capsys):
  assert parity.main(["--reference", str(tmp_path)]) == 2
  assert "not a reference fixture folder" in capsys.readouterr().err
