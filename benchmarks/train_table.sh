#!/usr/bin/env bash
# Reproduce the training table of the README: the synthetic world (7,000 images,
# 5,000 / 1,000 / 1,000), demo features, then hard (CHAN), soft (SCAN-style) and global
# (VSE-style) coding trained with the same recipe and time budget, evaluated on test.
# Usage: bash benchmarks/train_table.sh [WORKDIR]   (about 30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/train-table}"
chan=".venv/bin/chan"
mkdir -p "$work"
"$chan" synth --out "$work/synth" --images 7000 --seed 0
for split in train dev test; do
  "$chan" extract --images "$work/synth/${split}_images.txt" --extractor demo --out "$work/synth"
done
for coding in hard soft global; do
  rm -rf "$work/$coding"
  start=$(date +%s)
  "$chan" train --data "$work/synth" --out "$work/$coding" --coding "$coding" \
    --epochs 6 --lr-decay-epochs 4 --time-budget-min 8
  echo "$(( $(date +%s) - start ))" > "$work/$coding/wall_seconds.txt"
  "$chan" eval --checkpoint "$work/$coding/best" --data "$work/synth" --split test \
    --out "$work/$coding/test.json"
done
.venv/bin/python - "$work" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
print("| coding | t2i R@1 | t2i R@5 | i2t R@1 | i2t R@5 | rsum | epochs | train wall time |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for coding in ("hard", "soft", "global"):
    m = json.loads((work / coding / "test.json").read_text())
    log = [json.loads(l) for l in (work / coding / "metrics.jsonl").read_text().splitlines()]
    epochs = max(r["epoch"] for r in log if "epoch" in r and "loss" in r)
    wall = int((work / coding / "wall_seconds.txt").read_text())
    print(f"| {coding} | {m['t2i_r1']:.1f} | {m['t2i_r5']:.1f} | {m['i2t_r1']:.1f} | "
          f"{m['i2t_r5']:.1f} | {m['rsum']:.1f} | {epochs} | {wall // 60} min {wall % 60} s |")
PY
