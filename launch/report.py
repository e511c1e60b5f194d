"""Report on a sweep: a Markdown table and CSVs of every run's final and best metrics (mean ± std over seeds per
setting), the training curves and the final metrics as PNG plots; unfinished and failed runs are listed.

  python -m launch.report --root runs/fusion_ablation [--out DIR] [--metrics detection/AP50,grounding/AP50]

Writes report.md, runs.csv, settings.csv, curves.png and final_metrics.png into --out (default: the root) and
prints the table.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glipjax import reporting


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", required=True, help="the sweep's folder (python -m launch.sweep --root)")
  parser.add_argument("--out", help="where to write the report (default: the root)")
  parser.add_argument("--metrics", help="comma-separated eval metrics to tabulate (default: the embedded task's "
                                        "figures the runs have, else all)")
  args = parser.parse_args(argv)
  try:
    out, markdown = reporting.write_report(args.root, args.out, args.metrics.split(",") if args.metrics else None)
  except (FileNotFoundError, ValueError) as e:
    print(f"launch.report: {e}", file=sys.stderr)
    return 2
  print(markdown)
  print(f"report written to {out}/report.md (+ runs.csv, settings.csv, curves.png, final_metrics.png)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
