"""The benchmark's flags (issue 18): --size, --memory, --weights, --fast parse, and a tiny row runs.

One small run of `python3 -m webui.bench` on the tiny model (GGUF Q8_0 copy, block offload, fast mode;
2 steps at 64x64): the rows name the configuration, the load, it/s at both batches next to bare
diffusers, and the peak memory. The full-size measurements stay in the benchmark."""
import torch

from webui import bench


def test_bench_flags_parse_and_a_tiny_row_runs(capsys):
    assert bench.main(["--size", "tiny", "--only", "engine", "--memory", "low", "--weights", "gguf-q8", "--fast",
                       "--steps", "2", "--rounds", "1", "--resolution", "64", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "memory low, weights gguf-q8, fast on" in out
    assert "GGUF kept quantized in memory" in out
    assert "batch 1: it/s Easel" in out and "batch 2: it/s Easel / bare diffusers" in out
    assert "peak RSS of this process (MiB)" in out
    if not torch.cuda.is_available():  # the published Flux transformer needs CUDA: the row says it skipped
        assert bench.main(["--size", "full-flux"]) == 0
        assert "skipped: no CUDA device" in capsys.readouterr().out


def test_the_flux_check_honours_memory_weights_fast_and_gpu_weights():
    """`--size full-flux` runs each configuration it is given (here on the tiny Flux transformer, 64 px, on the
    CPU): the app's Offloader places it (block offload with a GPU-weights budget keeps 1 of 3 blocks), one
    storage when --weights names it, fast mode's parts as the app applies them."""
    from webui.bench_flux import full_rows
    from webui.model_manager.tiny_flux import TINY_FLUX_TRANSFORMER

    rows = dict(full_rows("cpu", steps=1, memory="low", weights="bf16", config=TINY_FLUX_TRANSFORMER, side=64,
                          gpu_weights_mb=0.2))
    assert rows["Flux configuration"] == "memory Block offload, fast off, GPU weights 0.2 MB"
    assert rows["Flux dev 64px bf16: blocks resident / streamed"] == "1 / 2"
    assert float(rows["Flux dev 64px bf16: s/it at 64x64"]) > 0 and "Flux dev 64px fp8_e4m3fn: s/it at 64x64" not in rows
    rows = dict(full_rows("cpu", steps=1, weights="fp8", fast=True, config=TINY_FLUX_TRANSFORMER, side=64))
    assert rows["Flux configuration"] == "memory Resident, fast on"
    assert rows["Flux dev 64px fp8_e4m3fn: fast mode"].startswith("no fused QKV (weights are stored quantized")
    assert "skipped" in dict(full_rows("cpu", weights="gguf-q8"))["Flux full-size check"]


def test_the_gpu_suite_table_runs_end_to_end_on_tiny_models(tmp_path):
    """`--gpu-suite` is only ever run on a lent GPU, so its whole table runs here first on the CPU with a tiny
    SD 1.5 at 64 px and the tiny Flux transformer: every memory mode, fast, batch 1 and 2 against bare
    diffusers in the default mode, block offload within a GPU-weights budget, Flux fp8 in low mode."""
    from webui.model_manager.architecture import Architecture
    from webui.model_manager.tiny import write_single_file
    from webui.model_manager.tiny_flux import TINY_FLUX_TRANSFORMER

    rows = dict(bench.gpu_suite_rows(tmp_path, steps=2, batch=2, device="cpu", models=(("sd1", 64),),
                                     need_cuda=False, flux=(TINY_FLUX_TRANSFORMER, 64),
                                     write=lambda path, family: write_single_file(path, Architecture(family), 1)))
    for mode in ("Resident", "Model offload", "Block offload", "Resident, fast"):
        assert f"sd1 64px {mode}: it/s / peak RSS MiB / PSNR dB" in rows, mode
    assert rows["sd1 64px Block offload: it/s / peak RSS MiB / PSNR dB"].endswith("/ inf")
    assert "sd1 64px Automatic batch 2: it/s Easel / bare diffusers (ratio, CFG 7)" in rows
    assert "sd1 64px GPU weights 2048 MB Block offload: it/s / peak RSS MiB / PSNR dB" in rows
    assert rows["Flux configuration"] == "memory Block offload, fast off"
    assert "Flux dev 64px fp8_e4m3fn: peak RSS (MiB)" in rows
