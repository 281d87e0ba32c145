#!/usr/bin/env bash
# GPU job for the dynamic rollout engine (issue 25): after install_and_checks.sh on the same machine, <= 7 min.
# Each step has its own timeout and the job continues on failure; summary on stdout, full logs in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/dyn_out}; mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
T0=$(date +%s)
left() { echo $(( 420 - ($(date +%s) - T0) )); }
step() {  # name timeout cmd...
  local name=$1 t=$2; shift 2
  local s=$(date +%s)
  timeout -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s"; tail -n 25 "$OUT/$name.log" | grep -v "^\s*$" | tail -n 15
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, megatron.core as m; print('torch', torch.__version__, 'mcore', m.__version__);
import importlib.util as u; print('te', u.find_spec('transformer_engine') is not None, 'flash_attn', u.find_spec('flash_attn') is not None)" 2>&1 | tee "$OUT/versions.txt"
# (a) smoke: the check script alone, verbose tracebacks + diagnostics
step smoke 110 $PY tests/rl/_dynamic_check.py "$OUT/smoke_run" model.spec=te
# (b) GPU tests (new + the existing RL GPU test as a baseline)
step gpu_tests 150 $PY -m pytest -q tests/gpu/test_gpu_dynamic_engine.py tests/gpu/test_gpu_rl.py -p no:cacheprovider -rs
# (b2) RL step time split of the tiny-MoE recipe (TE spec, bf16 weights) with both engines, 12 steps each
for eng in static dynamic; do
  step rl_$eng 60 $PY -m megatron_s1.cli rl --config examples/rl/tiny_cpu.yaml train.steps=12 train.log_interval=4 \
    model.spec=te model.params_dtype=bf16 rl.local_engine=$eng run.dir="$OUT/rl_$eng"
done
$PY bench/gpu_jobs/rl_split.py "$OUT"/rl_static "$OUT"/rl_dynamic 2>&1 | tee "$OUT/rl_split.txt"
# (c) moderate bench (~3 min)
step bench_moderate 170 $PY bench/rollout.py --prompts 8 --g 8 --pmin 128 --pmax 384 --new 256 --out "$OUT/bench_moderate.json"
# (d) full-size bench only if time remains
if [ "$(left)" -gt 150 ]; then
  step bench_full $(( $(left) - 20 )) $PY bench/rollout.py --full --out "$OUT/bench_full.json"
else echo "== bench_full skipped (time)"; fi
[ -f "$OUT/bench_moderate.json" ] && $PY - "$OUT/bench_moderate.json" <<'PYEOF'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print("bench", r.get("model"), {k: (v.get("tokens_per_s"), v.get("peak_gb"), v.get("error")) for k, v in r.items()
                                    if isinstance(v, dict) and k != "sizes"},
          {k: v for k, v in r.items() if k.startswith("dynamic_over")}, r.get("error", ""))
PYEOF
echo "== total $(( $(date +%s) - T0 ))s; logs in $OUT"
