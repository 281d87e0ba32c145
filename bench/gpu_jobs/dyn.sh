#!/usr/bin/env bash
# GPU jobs for the dynamic rollout engine (issue 25), after install_and_checks.sh on the same machine.
#   bash bench/gpu_jobs/dyn.sh [PART]    PART: check (default) | parity | bench; one PART per device call (<= ~7 min)
# check:  the engine check script (diagnostics) + GPU tests (dynamic engine, per-phase memory), RL step split of the
#         tiny recipe with both engines
# parity: train/rollout KL / routing mismatch with and without replay, BF16 and FP8 (blockwise) rollouts, both
#         engines (the docs/rl.md "FP8 rollouts" shape (b): 32 prompts x 8 samples, 64 new tokens)
# bench:  bench/rollout.py moderate, then the issue's full shape if time remains
# Each step has its own timeout and the job continues on failure; summary on stdout, full logs in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/dyn_out}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
T0=$(date +%s)
BUDGET=${BUDGET:-420}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() {  # name timeout cmd...
  local name=$1 t=$2; shift 2
  local l; l=$(left); (( l < 30 )) && { echo "== $name skipped: no time left"; return; }
  (( t > l )) && t=$l
  local s=$(date +%s)
  timeout -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - s ))s"; tail -n 25 "$OUT/$name.log" | grep -v "^\s*$" | grep -v "warn" | tail -n 12 | cut -c1-400
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, megatron.core as m; print('torch', torch.__version__, 'mcore', m.__version__);
import importlib.util as u; print('te', u.find_spec('transformer_engine') is not None, 'flash_attn', u.find_spec('flash_attn') is not None)" 2>&1 | tee "$OUT/versions.txt"
RL=(-m megatron_s1.cli rl --config examples/rl/tiny_cpu.yaml model.spec=te model.params_dtype=bf16)
# the small TE MoE of docs/rl.md (4 layers, hidden 512, 16 experts top-4), 64 new tokens per sample
SMALL=(model.num_layers=4 model.hidden_size=512 model.num_attention_heads=8 model.num_query_groups=4
       model.kv_channels=64 model.ffn_hidden_size=1024 model.moe_ffn_hidden_size=256 model.num_moe_experts=16
       model.moe_router_topk=4 data.seq_length=96 data.micro_batch_size=32 'train.global_batch_tokens=[[0,3072]]'
       rl.max_new_tokens=64 rl.prompts_per_step=32 rl.samples_per_prompt=8 rl.online_filter=false
       optimizer.lr=1e-3 rl.routing_replay=true train.log_interval=5)
PART=${1:-check}
case $PART in
  check)
    step smoke 110 $PY tests/rl/_dynamic_check.py "$OUT/smoke_run" model.spec=te
    grep -h "^RESULT" "$OUT/smoke.log"
    step gpu_tests 150 $PY -m pytest -q tests/gpu/test_gpu_dynamic_engine.py \
      tests/gpu/test_gpu_rl.py::test_rl_step_reports_peak_memory_per_phase -p no:cacheprovider -rs
    for eng in static dynamic; do
      step rl_$eng 60 $PY "${RL[@]}" train.steps=12 train.log_interval=4 rl.local_engine=$eng run.dir="$OUT/rl_$eng"
    done
    $PY bench/gpu_jobs/rl_split.py "$OUT"/rl_static "$OUT"/rl_dynamic 2>&1 | tee "$OUT/rl_split.txt" ;;
  parity)
    for eng in static dynamic; do for prec in bf16 fp8; do
      extra=(); [[ $prec == fp8 ]] && extra=(model.fp8=blockwise)
      step parity_${eng}_$prec 95 $PY "${RL[@]}" "${SMALL[@]}" train.steps=10 rl.local_engine=$eng "${extra[@]}" \
        run.dir="$OUT/parity_${eng}_$prec"
    done; done
    $PY bench/gpu_jobs/rl_split.py "$OUT"/parity_* 2>&1 | tee "$OUT/parity.txt" ;;
  bench)
    step bench_moderate 170 $PY bench/rollout.py --prompts 8 --g 8 --pmin 128 --pmax 384 --new 256 \
      --out "$OUT/bench_moderate.json"
    if [ "$(left)" -gt 150 ]; then
      step bench_full $(( $(left) - 20 )) $PY bench/rollout.py --full --out "$OUT/bench_full.json"
    else echo "== bench_full skipped (time)"; fi
    for f in "$OUT"/bench_*.json; do [ -f "$f" ] && $PY - "$f" <<'PYEOF'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print(sys.argv[1].rsplit("/", 1)[-1], r.get("model"),
          {k: (v.get("tokens_per_s"), v.get("peak_gb"), v.get("error")) for k, v in r.items()
           if isinstance(v, dict) and k != "sizes"},
          {k: v for k, v in r.items() if k.startswith("dynamic_over")}, r.get("error", ""))
PYEOF
    done ;;
  *) echo "unknown part $PART (check | parity | bench)"; exit 2 ;;
esac
echo "== total $(( $(date +%s) - T0 ))s; logs in $OUT"
