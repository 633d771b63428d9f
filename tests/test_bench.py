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
