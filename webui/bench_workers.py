"""Benchmark: jobs per minute with the in-process worker, 1 and 2 Ray workers, and Ray's overhead per job.

    python -m webui.bench_workers [--jobs 8] [--steps 2] [--size 64]

Tiny random-weight SD 1.x, CPU. Every setup is warmed up (model loaded) before it is timed.
The overhead per job is the time a job takes through one Ray worker minus the time it takes
in-process with the same number of threads (one, as Ray gives each CPU worker); the in-process
worker with all threads is shown too.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _requests(count: int, steps: int, size: int):
    from .core.request import GenerationRequest

    return [GenerationRequest(prompt="a red fox", steps=steps, width=size, height=size, seed=100 + i,
                              save_images=False) for i in range(count)]


def _time_jobs(easel, requests) -> float:
    started = time.perf_counter()
    jobs = [easel.submit(r) for r in requests]
    for job in jobs:
        job.wait()
        if job.error is not None:
            raise job.error
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    from .app import AppOptions, build
    from .model_manager.architecture import Architecture
    from .model_manager.tiny import write_single_file

    root = Path(tempfile.mkdtemp(prefix="easel-bench-workers-"))
    ckpts = root / "ckpts"
    ckpts.mkdir()
    write_single_file(ckpts / "tiny-sd1.safetensors", Architecture("sd1"), seed=7)
    requests = _requests(args.jobs, args.steps, args.size)
    rows: list[tuple[str, float]] = []

    def options(name: str, workers: str = "") -> AppOptions:
        return AppOptions(models_dir=root / name / "models", ckpt_dirs=[ckpts], outputs_dir=root / name / "out",
                          data_dir=root / name / "data", device="cpu", workers=workers)

    local = build(options("local"))
    _time_jobs(local, requests[:1])  # warm-up: load the model
    threads = torch.get_num_threads()
    rows.append((f"in-process ({threads} threads)", _time_jobs(local, requests)))
    torch.set_num_threads(1)
    rows.append(("in-process (1 thread)", _time_jobs(local, requests)))
    torch.set_num_threads(threads)
    local.close()
    for workers in ("cpu", "cpu,cpu"):
        pool = build(options(workers.replace(",", "-"), workers))
        while not all(w["alive"] for w in pool.queue.workers()):
            time.sleep(0.2)
        _time_jobs(pool, requests[:len(workers.split(","))] * 2)  # warm-up: each worker loads the model
        rows.append((f"Ray, {len(workers.split(','))} worker(s)", _time_jobs(pool, requests)))
        pool.close()
    print(f"{args.jobs} jobs, {args.size}x{args.size}, {args.steps} steps, tiny SD 1.x, CPU "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    for name, seconds in rows:
        print(f"  {name:28} {args.jobs / seconds * 60:7.1f} jobs/min  {seconds / args.jobs * 1000:7.0f} ms/job")
    single = dict(rows)
    overhead = (single["Ray, 1 worker(s)"] - single["in-process (1 thread)"]) / args.jobs
    print(f"  Ray overhead per job (1 worker vs in-process, 1 thread each): {overhead * 1000:.0f} ms")


if __name__ == "__main__":
    main()
