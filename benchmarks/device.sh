#!/usr/bin/env bash
# Run the Krylov and step-cost benchmarks on whatever accelerator JAX sees, and
# append a dated section (machine, versions, device, both tables) to
# benchmarks/RESULTS.md. On a GPU it also times one step of the pose CNN at the
# `paper` preset (the paper's Eq. 13 network).
#
# Usage:
#   benchmarks/device.sh                 # full run (under 8 minutes on one GPU)
#   benchmarks/device.sh --quick         # tiny sizes on any device, seconds (the smoke test)
#   benchmarks/device.sh --results FILE  # append to FILE instead of benchmarks/RESULTS.md
#   benchmarks/device.sh --no-paper-step-cost
#
# Each part runs under its own time limit; a part that fails or runs out of time
# is recorded as such in the section, and the script goes on.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi

QUICK=0
PAPER=1
RESULTS="$HERE/RESULTS.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --results) RESULTS="$2"; shift ;;
    --no-paper-step-cost) PAPER=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# part NAME LIMIT_SECONDS COMMAND...: run one benchmark, keep its stdout and its status.
part() {
  local name="$1" limit="$2"; shift 2
  local start end rc
  start=$(date +%s)
  echo "== $name (limit ${limit}s)" >&2
  timeout "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  rc=$?
  end=$(date +%s)
  echo "$rc $((end - start))" >"$WORK/$name.status"
  if [ "$rc" -ne 0 ]; then tail -20 "$WORK/$name.err" >&2; fi
}

PLATFORM="$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo unknown)"

if [ "$QUICK" -eq 1 ]; then
  part krylov 300 "$PY" "$HERE/krylov.py" --quick --no-write --problems a,c --grid 6 --n-small 60 \
    --solvers "kktopt minres_qlp" --repeats 1 --max-tries 2
  part step_cost 300 "$PY" "$HERE/step_cost.py" --quick --repeats 1 --models mlp --methods "default"
else
  part krylov 200 "$PY" "$HERE/krylov.py" --no-write --repeats 5 --max-tries 8
  part step_cost 150 "$PY" "$HERE/step_cost.py" --repeats 7
fi

if [ "$PAPER" -eq 1 ] && [ "$QUICK" -eq 0 ] && [ "$PLATFORM" = "gpu" ]; then
  # The paper-size pose CNN: the step-cost benchmark's CNN case at the `paper`
  # preset instead of `small` (same methods, batches and constraints).
  part paper_step_cost 100 "$PY" "$HERE/step_cost.py" --preset paper --models cnn --repeats 5
fi

# Append the dated section.
"$PY" - "$RESULTS" "$WORK" "$QUICK" <<'EOF'
import datetime
import platform
import sys
from pathlib import Path

import jax
import numpy as np

results, work, quick = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
devices = jax.devices()
kind = ", ".join(sorted({getattr(d, "device_kind", str(d)) for d in devices}))
lines = [
    f"## Device run {datetime.date.today().isoformat()}: {jax.default_backend()} ({kind})"
    + (" [quick]" if quick else ""),
    "",
    f"Written by `benchmarks/device.sh{' --quick' if quick else ''}`. Machine: {platform.machine()}, "
    f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
    f"jax {jax.__version__}, numpy {np.__version__}; devices: {len(devices)} x {kind} "
    f"(backend {jax.default_backend()}).",
    "",
]
names = {"krylov": "Krylov solvers (benchmarks/krylov.py)", "step_cost": "Step cost (benchmarks/step_cost.py)",
         "paper_step_cost": "Step cost, pose CNN at the paper preset (GPU only)"}
failed = 0
for key, title in names.items():
    status = work / f"{key}.status"
    if not status.exists():
        continue
    rc, seconds = status.read_text().split()
    state = "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed (exit {rc})")
    failed += rc != "0"
    lines += [f"### {title}: {state}, {seconds} s", ""]
    out = (work / f"{key}.out").read_text().strip()
    lines += [out if out else "(no output)", ""]
    if rc != "0":
        err = (work / f"{key}.err").read_text().strip().splitlines()[-8:]
        lines += ["```", *err, "```", ""]
text = results.read_text() if results.exists() else "# Benchmark results\n"
results.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n")
print(f"appended a section to {results} ({failed} part(s) failed)")
sys.exit(1 if failed else 0)
EOF
