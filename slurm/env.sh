# Communication and threading environment of megatron-s1 jobs, sourced by slurm/node.sh on every node
# before torchrun starts. Every variable is only set when it is not set already: export your own
# value before `sbatch` (sbatch passes the environment on) or in an S1_SITE_ENV file to override it.
#
# ---- always applied ------------------------------------------------------------------------------
# Megatron's tensor/sequence-parallel communication overlap needs kernels to run in issue order.
: "${CUDA_DEVICE_MAX_CONNECTIONS:=1}"
# Turn a hung/failed NCCL collective into an error (and a job failure) instead of a silent hang.
: "${TORCH_NCCL_ASYNC_ERROR_HANDLING:=1}"
# WARN prints problems only; INFO shows the transport chosen (NET/IB, NVLS, ...) for each ring.
: "${NCCL_DEBUG:=WARN}"
# CPU threads per worker: the task's CPUs split over the workers of the node (gloo/CPU runs too).
if [ -z "${OMP_NUM_THREADS:-}" ]; then
    _cpus=${SLURM_CPUS_ON_NODE:-$(nproc 2>/dev/null || echo 1)}
    OMP_NUM_THREADS=$(( _cpus / ${S1_NPROC_PER_NODE:-1} ))
    [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
    unset _cpus
fi
export CUDA_DEVICE_MAX_CONNECTIONS TORCH_NCCL_ASYNC_ERROR_HANDLING NCCL_DEBUG OMP_NUM_THREADS
export PYTHONUNBUFFERED=1  # log lines reach the job log as they are printed

# ---- cluster specific: set these for your fabric (examples, not applied) -------------------------
# Which NICs NCCL uses for bootstrap/sockets, and gloo/c10d for CPU-side collectives:
#   export NCCL_SOCKET_IFNAME=^lo,docker0       # or an interface name prefix: ib0, bond0, eth
#   export GLOO_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME
# InfiniBand / RoCE HCAs (ibv_devices lists them); use the rail-aligned ones on multi-rail nodes:
#   export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7
# RoCE v2 needs the GID index of the RoCE v2 address (show_gids); plain IB leaves it unset:
#   export NCCL_IB_GID_INDEX=3
# Longer IB timeout / more retries on large or busy fabrics (timeout is 4.096us * 2^N):
#   export NCCL_IB_TIMEOUT=22 NCCL_IB_RETRY_CNT=10
# GPUDirect RDMA distance (PIX, PXB, PHB, SYS): how far the NIC may be from the GPU to read it directly:
#   export NCCL_NET_GDR_LEVEL=PHB
# NVLink SHARP / multicast (NVLS) on NVSwitch systems; turn it off if the fabric manager or the
# container does not support multicast (symptom: "NVLS ... failed" at the first all-reduce):
#   export NCCL_NVLS_ENABLE=0
# Disable IB entirely (debugging, Ethernet-only clusters):
#   export NCCL_IB_DISABLE=1
# AWS EFA / GCP GPUDirect-TCPX need their own NCCL net plugins; load them in S1_SITE_ENV.
