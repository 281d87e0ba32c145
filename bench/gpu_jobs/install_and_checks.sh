#!/usr/bin/env bash
# First call on a fresh GPU machine after the five .devwheels/cK copies: install, versions (flash-attn present?), the FP8 checkpoint + dynamic-engine GPU tests.
set -uo pipefail
export PYTHONUNBUFFERED=1
bash .devwheels/small/install.sh > $OUT/install.log 2>&1 || { tail -20 $OUT/install.log; exit 1; }
tail -2 $OUT/install.log
[ -d .devwheels/fa1 ] && { bash bench/gpu_jobs/install_fa4.sh > $OUT/fa4.log 2>&1; tail -3 $OUT/fa4.log; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch, transformer_engine, megatron.core as m; print(torch.__version__, transformer_engine.__version__, m.__version__)
import importlib.util as u; print('flash_attn', u.find_spec('flash_attn') is not None, 'fa3', u.find_spec('flash_attn_3') is not None, 'cutlass', u.find_spec('cutlass') is not None)" | tee -a $OUT/gpu.txt
[ "${CHECKS:-1}" = 0 ] && exit 0
timeout 280 python3 -m pytest -q -s -rs tests/gpu/test_gpu_fp8_checkpoint.py tests/gpu/test_gpu_dynamic_engine.py tests/gpu/test_gpu_rl.py -p no:cacheprovider > $OUT/fp8ckpt.txt 2>&1; echo "fp8ckpt+dyn+rl tests rc=$?"; grep -E "fp8 experts|step-1 loss|passed|failed|skipped|Error|assert" $OUT/fp8ckpt.txt | tail -14
