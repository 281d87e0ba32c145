"""train.profile_steps writes a torch.profiler trace and kernel table for the chosen steps."""
import json
import os

from tests.conftest import run_cli


def test_profile_steps_writes_trace(tmp_path, train_args):
    run_dir = tmp_path / "run"
    run_cli(train_args(run_dir, "train.steps=3", "train.profile_steps=[2,3]"))
    profile = run_dir / "profile"
    with open(profile / "trace_rank0.json") as f:
        trace = json.load(f)
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::mm") or n.startswith("aten::matmul") for n in names)
    table = (profile / "kernels_rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


def test_profile_steps_bad_value(tmp_path, train_args):
    proc = run_cli(train_args(tmp_path / "bad", "train.profile_steps=[3,2]"), check=False)
    assert proc.returncode != 0
    assert "train.profile_steps must be [first, last]" in proc.stderr
    assert not os.path.exists(tmp_path / "bad" / "profile")


def test_profile_summary_reports_the_step_and_a_category_per_kernel(tmp_path, train_args):
    run_dir = tmp_path / "run"
    proc = run_cli(train_args(run_dir, "train.steps=3", "train.profile_steps=[2,3]"))
    summary = json.loads((run_dir / "profile" / "summary_rank0.json").read_text())
    assert summary["steps"] == 2 and summary["wall_ms_per_step"] > 0
    assert "[profile] steps 2-3: " in proc.stdout  # one console line
    if summary["device_busy_frac"] is None:  # CPU: no device events
        assert summary["kernel_ms_per_step"] == {} and "no GPU kernels recorded" in proc.stdout


def test_busy_time_is_the_union_of_overlapping_kernels():
    from megatron_s1.training.profiling import busy_time

    # [0,10) and [5,12) overlap on two streams -> 12; [20,25) apart -> +5; [21,22) inside -> +0
    assert busy_time([(20, 25), (0, 10), (5, 12), (21, 22)]) == 17
    assert busy_time([]) == 0


def test_summarize_trace_per_step_categories_and_idle():
    """Hand-made Chrome trace of 2 steps in 100 ms: kernels busy 30 ms in all -> 15 ms per step, idle 35."""
    from megatron_s1.training.profiling import kernel_category, summarize_trace

    def kernel(name, ts_ms, dur_ms, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts_ms * 1e3, "dur": dur_ms * 1e3}

    trace = {"traceEvents": [
        kernel("void multi_tensor_apply_kernel<TensorListMetadata<4, false>, transformer_engine::adam...>", 0, 10),
        kernel("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", 10, 8),
        kernel("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 12, 4),  # overlaps the GEMM (another stream)
        kernel("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", 40, 6),
        kernel("Memcpy HtoD (Pageable -> Device)", 60, 6, cat="gpu_memcpy"),
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 90e3},  # host op: not device time
    ]}
    s = summarize_trace(trace, steps=2, wall_s=0.1)
    assert s["wall_ms_per_step"] == 50 and s["device_busy_ms_per_step"] == 15 and s["device_idle_ms_per_step"] == 35
    assert s["device_busy_frac"] == 0.3
    assert s["kernel_ms_per_step"] == {"optimizer": 5, "gemm": 4, "attention": 3, "memcpy_memset": 3,
                                       "communication": 2}
    assert s["top_kernels_ms_per_step"][0][1] == 5 and len(s["top_kernels_ms_per_step"]) == 5
    assert kernel_category("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>") == "elementwise"
    assert kernel_category("transformer_engine::normalization::rmsnorm_bwd_finalize_general_kernel") == \
        "normalization"
    assert kernel_category("something_new") == "other"
