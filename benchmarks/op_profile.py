"""Where a compiled step spends its time: a `jax.profiler` trace of a few steps, its per-op events joined with
the compiled HLO, totalled by op kind (convolution, dot, gather/scatter, reduce, elementwise ...) and by the
glipjax source file that emitted the op (from the HLO's stack-frame tables). Works on CPU, where each XLA thunk
is a trace event named after its HLO instruction.

  from benchmarks import op_profile
  summary = op_profile.summarize(trace_dir, compiled.as_text())
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re

import glipjax

# Kinds in priority order: a fusion is of the first kind any of its ops has.
KINDS = (("convolution", ("convolution",)), ("dot", ("dot",)), ("gather/scatter", ("gather", "scatter")),
         ("sort", ("sort",)), ("reduce", ("reduce", "reduce-window", "select-and-scatter")),
         ("copy/transpose", ("copy", "transpose")))

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(")
_COMP = re.compile(r"^%?([\w.\-]+) .*\{$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_PACKAGE = str(pathlib.Path(glipjax.__file__).resolve().parent) + "/"


def _tables(hlo: str):
  """FileNames, FileLocations -> file id, StackFrames -> (location, parent) from the HLO text header."""
  files, locations, frames, section = {}, {}, {}, None
  for line in hlo.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if not line.strip() or line.startswith("%") or line.startswith("HloModule"):
      section = None if not line.strip() else section
      continue
    parts = line.split(" ", 1)
    if section == "FileNames":
      files[parts[0]] = parts[1].strip('"')
    elif section == "FileLocations":
      locations[parts[0]] = re.search(r"file_name_id=(\d+)", parts[1]).group(1)
    elif section == "StackFrames":
      loc, parent = re.search(r"file_location_id=(\d+) parent_frame_id=(\d+)", parts[1]).groups()
      frames[parts[0]] = (loc, parent)
  return files, locations, frames


def _source(frame_id: str | None, files, locations, frames) -> str:
  """The innermost glipjax file on the op's Python stack (else the innermost file)."""
  first, seen = None, set()
  while frame_id and frame_id in frames and frame_id not in seen:
    seen.add(frame_id)
    loc, parent = frames[frame_id]
    path = files.get(locations.get(loc, ""), "")
    first = first or path
    if path.startswith(_PACKAGE):
      return "glipjax/" + path[len(_PACKAGE):]
    frame_id = parent
  return pathlib.Path(first).name if first else "?"


def _kind(opcodes: set[str]) -> str:
  for kind, names in KINDS:
    if opcodes & set(names):
      return kind
  return "elementwise/other"


def hlo_ops(hlo: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (kind, source file), fusions described by the ops they fuse."""
  files, locations, frames = _tables(hlo)
  computations: dict[str, list[tuple[str, str, str | None]]] = collections.defaultdict(list)
  calls, current = {}, None
  for line in hlo.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(" "):
      current = m.group(1)
      continue
    m = _INSTR.match(line)
    if m and current:
      frame = _FRAME.search(line)
      computations[current].append((m.group(1), m.group(2), frame.group(1) if frame else None))
      c = _CALLS.search(line)
      if c:
        calls[m.group(1)] = c.group(1)
  out = {}
  for comp in computations.values():
    for name, opcode, frame in comp:
      body = computations.get(calls.get(name, ""), [])
      opcodes = {op for _, op, _ in body} or {opcode}
      kind = _kind(opcodes)
      # Attribute to the op that makes it this kind (the dot of a dot+bias fusion), else to any op with a frame.
      names = dict(KINDS).get(kind, ())
      frames_in = [f for _, op, f in body if f and op in names] + [f for _, _, f in body if f] + [frame]
      out[name] = (kind, _source(next((f for f in frames_in if f), None), files, locations, frames))
  return out


def summarize(trace_dir: str | pathlib.Path, hlo: str, top: int = 15) -> dict:
  """Seconds per op kind, per source file and per (source, kind) (summed over the traced steps), and the `top`
  costliest ops."""
  path = max(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops = hlo_ops(hlo)
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in ops:
      per_op[e["name"]] += e.get("dur", 0.0) / 1e6
  by_kind, by_source, by_source_kind = collections.Counter(), collections.Counter(), collections.Counter()
  for name, seconds in per_op.items():
    kind, source = ops[name]
    by_kind[kind] += seconds
    by_source[source] += seconds
    by_source_kind[f"{source} / {kind}"] += seconds
  total = sum(per_op.values())
  share = lambda c: {k: dict(seconds=round(v, 4), share=round(v / total, 4)) for k, v in c.most_common()}
  return dict(op_seconds_total=total, by_kind=share(by_kind), by_source=share(by_source),
              by_source_kind=share(by_source_kind),
              top_ops=[dict(name=n, kind=ops[n][0], source=ops[n][1], seconds=round(s, 4))
                       for n, s in per_op.most_common(top)])
