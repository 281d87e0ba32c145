#!/usr/bin/env bash
# FlashAttention-4 (flash-attn-4 + CuTe DSL) for Megatron's dynamic batching, offline: the wheel tar comes in two
# chunks (.devwheels/fa0 copied to /tmp/devwheels by an earlier call, .devwheels/fa1 carried by this one).
# Installs with --no-deps only the distributions the image lacks (torch and its CUDA wheels stay as they are).
# Preparing the chunks here (network to PyPI), for Python 3.12 / manylinux x86_64, all with --no-deps:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d W \
#     flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
#     nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels apache-tvm-ffi \
#     torch-c-dlpack-ext einops 'cuda-bindings>=13,<14' cuda-pathfinder
#   (cd W && tar cf ../fa.tar *.whl); split -b 60m -d -a 1 fa.tar fa.tar.part   # -> .devwheels/fa0, .devwheels/fa1
set -uo pipefail
mkdir -p /tmp/fa4 && cp .devwheels/fa1/* /tmp/devwheels/ 2>/dev/null
cat /tmp/devwheels/fa.tar.part0 /tmp/devwheels/fa.tar.part1 > /tmp/fa4/fa.tar || { echo "fa4 chunks missing"; exit 3; }
cd /tmp/fa4 && tar xf fa.tar || exit 4
todo=()
for w in *.whl; do
  name=$(echo "$w" | cut -d- -f1)
  python3 -m pip show -q "$name" >/dev/null 2>&1 || todo+=("$w")
done
echo "installing: ${todo[*]}"
[ ${#todo[@]} -gt 0 ] && python3 -m pip install -q --no-deps --no-index "${todo[@]}"
python3 -c "
from importlib.metadata import version; print('flash-attn-4', version('flash-attn-4'))
from flash_attn.cute import flash_attn_varlen_func; import megatron.core.transformer.attention as a; print('HAVE_FA4', a.HAVE_FA4)"
