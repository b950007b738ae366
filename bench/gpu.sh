#!/usr/bin/env bash
# The device bench in one prepared script: installs, then runs the whole job per sheet (bench/sheet.py,
# on the demo's model) and the device bench (bench/gpu.py: scoring rates, the whole job in several
# processes sharing the device, CUDA against CPU verdicts), and writes one JSON of the figures.
#
#   bench/gpu.sh [--device cuda|cpu] [--out DIR] [--sheets 20] [--wheels DIR] [--quick]
#
# --device cpu runs everything on the CPU (CUDA hidden), as the tests do; --wheels DIR installs offline
# from a folder of wheels (a machine without an index); --quick makes every step small (a smoke run).
# Figures go to DIR/gpu-figures.json (default DIR: bench-output), logs beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda out=bench-output sheets=20 wheels="" quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --sheets) sheets=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "--device is cuda or cpu" >&2; exit 2 ;; esac
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ "$device" = cpu ] && export CUDA_VISIBLE_DEVICES=""

# Install: the project's venv (make install) where one can be made, else the interpreter at hand.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -n "$wheels" ]; then
    PY=python3
    "$PY" -m pip install -q --no-index --find-links "$wheels" -e . >"$out/install.log" 2>&1
  elif [ -x .venv/bin/python ] || make install >"$out/install.log" 2>&1; then
    PY=.venv/bin/python
  else
    PY=python3
    "$PY" -m pip install -q -e . >>"$out/install.log" 2>&1
  fi
fi
"$PY" -c "import defectscan.pipeline.inspection" || { echo "defectscan is not importable with $PY" >&2; exit 1; }
if [ "$device" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "--device cuda: torch sees no CUDA device (--device cpu runs everything on the CPU)" >&2
  exit 3
fi

if [ "$quick" = 1 ]; then
  demo=(--sheets 2) sheet=(--sheets 1 --repeats 1) gpu=(--sheets "$sheets" --train-sheets 2 --image-size 128)
else
  demo=() sheet=(--sheets 8 --repeats 2) gpu=(--sheets "$sheets")
fi

echo "== the demo's model ($device)"
"$PY" -m defectscan.producer.cli demo "$out/demo" "${demo[@]}" >"$out/demo.log" 2>&1
echo "== bench/sheet.py: the whole job per sheet, one process"
"$PY" bench/sheet.py "${sheet[@]}" --model "$out/demo/model" --template "$out/demo/good/template.png" \
  --json "$out/sheet.json" | tee "$out/sheet.log"
echo "== bench/gpu.py: scoring, the whole job in several processes, the device against the CPU"
status=0
"$PY" bench/gpu.py --device "$device" "${gpu[@]}" --json "$out/gpu.json" | tee "$out/gpu.log" || status=$?

"$PY" - "$out" "$device" <<'EOF'
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
figures = {"device_asked": device}
for name in ("sheet", "gpu"):
    path = out / f"{name}.json"
    figures[name] = json.loads(path.read_text()) if path.is_file() else None
(out / "gpu-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
print(f"figures: {out / 'gpu-figures.json'}")
EOF
exit "$status"
