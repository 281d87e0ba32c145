#!/usr/bin/env bash
# Issue 24 GPU jobs (one fresh H100/H200; megatron-core 0.19.2, TE 2.20.2 and the project installed; no network).
#   bash bench/gpu_jobs/thr.sh [PART]     PART: bf16 (default) | fp8 | mini | fp8loss | recompute | profile; one PART per call
# Each part fits one device call (<= ~7.5 min); each step has its own timeout (measured in session 10: a run costs
# ~25-60 s of process start, TE init, model build and torch.compile before its timed steps) and failures do not
# stop later steps. Full logs + JSON in $OUT, a compact summary on stdout.
# ACCUM (default 8): micro-batches per optimizer step for every peer. Session 10 measured the optimizer step of our
# fp32-master mixed precision (~85 ms fixed per step on the 3.1B-parameter MoE slice) dominating at 1 micro-batch
# (4096 tokens) per step, so the headline numbers use 8 (32k tokens per GPU per step), accum 1 kept as a row.
set -uo pipefail
OUT=${OUT:-/tmp/thr_out}; mkdir -p "$OUT"
PY=${PY:-python3}
ACCUM=${ACCUM:-8}
B=bench/throughput.py
START=$(date +%s)
BUDGET=${BUDGET:-440}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {  # step NAME SECONDS CMD...: run under timeout (capped by the time left), log to $OUT/NAME.log
  local name=$1 t=$2; shift 2
  local l; l=$(left); (( l < 30 )) && { echo "[$name] skipped: no time left"; return; }
  (( t > l )) && t=$l
  echo "[$name] start (limit ${t}s)"
  timeout --kill-after=10 "$t" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "[$name] rc=$rc ($(( $(date +%s) - START ))s elapsed)"
  if grep -q "tokens/s per GPU" "$OUT/$name.log"; then sed -n '/tokens\/s per GPU/,$p' "$OUT/$name.log" | cut -c1-160
  else tail -n 12 "$OUT/$name.log" | cut -c1-300; fi
  grep -E '^[a-z0-9-]+ \{' "$OUT/$name.log" | cut -c1-220   # per-run JSON lines (partial results on timeout)
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | tr -d ' ')
# qwen3-30b-a3b-slice: 8 layers need ~99 GB of weights+optimizer state in ours (18 B/param); 4 layers on 80 GB cards.
L30=8; (( ${MEM_MIB:-0} < 100000 )) && L30=4
echo "qwen3-30b-a3b-slice layers: $L30, accum $ACCUM"
export PYTHONFAULTHANDLER=1
A3B=(--shape qwen3-30b-a3b-slice --layers "$L30")
PARTS=("$@"); (( ${#PARTS[@]} )) || PARTS=(bf16)
for part in "${PARTS[@]}"; do case $part in
  bf16)  # headline BF16 rows of the MoE slice: both HF peers, ours, ours at 2x / 4x micro batch (same tokens per step)
    step wgradcheck 40 $PY bench/gpu_jobs/check_grouped_wgrad.py
    step a3b_bf16 300 $PY $B "${A3B[@]}" --steps 3 --warmup 2 --accum "$ACCUM" --runs ours-bf16,wgrad-fused,hf,hf-compile,mbs2x,mbs4x \
      --variant 'mbs4x:data.micro_batch_size=4' --out "$OUT/a3b_bf16.json" ;;
  mini)  # the dense Intern-S1-mini slice: BF16 peers, then FP8 against ours-bf16 of the same invocation
    step mini_bf16 200 $PY $B --shape intern-s1-mini-slice --steps 3 --warmup 2 --accum "$ACCUM" \
      --runs hf,hf-compile,ours-bf16 --out "$OUT/mini_bf16.json"
    step mini_fp8 170 $PY $B --shape intern-s1-mini-slice --steps 3 --warmup 2 --accum "$ACCUM" \
      --runs ours-bf16,ours-fp8-blockwise,fp8-blockwise-param --out "$OUT/mini_fp8.json" ;;
  fp8)   # FP8 against ours-bf16 of the same invocation
    step fp8check 30 $PY bench/gpu_jobs/check_fp8_gmm.py
    step a3b_fp8 380 $PY $B "${A3B[@]}" --steps 3 --warmup 2 --accum "$ACCUM" \
      --runs ours-bf16,fp8-gmm,fp8-gmm-wgrad-fused,fp8-experts-pad,fp8-blockwise-param-pad --out "$OUT/a3b_fp8.json" ;;
  recompute)  # activation recompute at 2x the micro batch (peak GB is the point), same tokens per step
    step a3b_recompute 230 $PY $B "${A3B[@]}" --steps 2 --warmup 1 --accum "$ACCUM" \
      --runs mbs2x,recompute-selective,recompute-full,recompute-moe --out "$OUT/a3b_recompute.json"
    step mini_recompute 190 $PY $B --shape intern-s1-mini-slice --steps 2 --warmup 1 --accum "$ACCUM" \
      --runs mbs2x,recompute-selective,recompute-full --out "$OUT/mini_recompute.json" ;;
  fp8loss)  # 200-step loss curves, FP8 variants against BF16 (same model, data order, seed; stdlib corpus)
    step fp8loss 400 $PY bench/fp8_loss.py --steps 200 --runs bf16,fp8-gmm,fp8-blockwise,fp8-experts-pad \
      --out "$OUT/fp8_loss.json" ;;
  profile)  # kernel tables (two steps after the timed ones) at 1 micro-batch per step: fixed vs per-micro costs
    step profile 200 $PY $B "${A3B[@]}" --steps 2 --warmup 2 --runs ours-bf16,fp8-gmm,fp8-experts-pad \
      --profile-dir "$OUT/profiles" --out "$OUT/profile.json"
    for f in "$OUT"/profiles/*.summary.json; do [[ -f $f ]] && { echo "== $(basename "$f")"; cut -c1-400 "$f" | head -40; }; done ;;
  *) echo "unknown part $part (bf16 | fp8 | mini | fp8loss | recompute | profile)"; exit 2 ;;
esac; done
echo "total $(( $(date +%s) - START ))s"
