"""Workers on Ray (`--workers cpu,cpu`): a real local Ray cluster with two worker processes, tiny SD 1.x models.

One pool serves the whole module (starting Ray and two workers is most of the cost); the in-process
reference is made here while the workers start; a normal start never imports Ray (checked in a fresh
interpreter).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from webui.app import AppOptions, build
from webui.core.jobs import JobState
from webui.core.request import GenerationRequest
from webui.model_manager.architecture import Architecture
from webui.model_manager.tiny import write_single_file

SEEDS = list(range(100, 108))

def request(seed: int, **kwargs) -> GenerationRequest:
    fields = dict(prompt="a red fox", steps=2, width=64, height=64, seed=seed, checkpoint="a.safetensors",
                  save_images=True)
    fields.update(kwargs)
    return GenerationRequest(**fields)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("worker-ckpts")
    write_single_file(folder / "a.safetensors", Architecture("sd1"), seed=7)
    write_single_file(folder / "b.safetensors", Architecture("sd1"), seed=8)
    return folder


@pytest.fixture(scope="module")
def local(ckpts, tmp_path_factory):
    """The in-process worker of a normal start (the reference the workers' images must equal)."""
    data = tmp_path_factory.mktemp("local")
    easel = build(AppOptions(models_dir=data / "models", ckpt_dirs=[ckpts], outputs_dir=data / "outputs",
                             data_dir=data / "data", device="cpu"))
    yield easel
    easel.close()


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker-loras")  # filled by the LoRA affinity test


@pytest.fixture(scope="module")
def pool(local, ckpts, loras, tmp_path_factory):
    """Ray on this machine with two CPU workers; returns at once, the workers join when they have started."""
    data = tmp_path_factory.mktemp("pool")
    easel = build(AppOptions(models_dir=data / "models", ckpt_dirs=[ckpts], outputs_dir=data / "outputs",
                             data_dir=data / "data", device="cpu", workers="cpu,cpu", lora_dirs=[loras]))
    yield easel
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    easel.close()
    assert not token.exists(), "the private cluster's token outlived it"


def test_a_normal_start_imports_neither_ray_nor_the_workers(ckpts, tmp_path):
    """In a fresh interpreter: in this one, other test modules (the layering check) import every webui module."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from webui.app import AppOptions, build\n"
        f"data = Path({str(tmp_path)!r})\n"
        f"easel = build(AppOptions(models_dir=data / 'models', ckpt_dirs=[Path({str(ckpts)!r})], "
        "outputs_dir=data / 'outputs', data_dir=data / 'data', device='cpu'))\n"
        "easel.close()\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'webui.workers'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", "a normal start imported Ray or the workers"


def single_threaded(easel, seed: int, **kwargs):
    """What the in-process worker makes with one CPU thread, as each CPU worker has (Ray's OMP_NUM_THREADS=1):
    on a CPU, a matrix product's sums run in another order with another thread count, and the last bit differs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return easel.generate(request(seed, save_images=False, **kwargs))
    finally:
        torch.set_num_threads(threads)


def remote_workers(easel) -> dict[str, dict]:
    return {w["name"]: w for w in easel.queue.workers() if w["name"] != "head"}


def test_eight_jobs_over_two_workers_equal_the_in_process_worker(pool, local):
    expected = [single_threaded(local, seed) for seed in SEEDS]  # here, while the workers start
    wait_for(lambda: all(w["alive"] for w in pool.queue.workers()), 240, "both workers to start")
    jobs = [pool.submit(request(seed)) for seed in SEEDS]
    for job in jobs:
        assert job.wait(240), "a job did not finish"
        assert job.state == JobState.DONE, job.error
    assert {job.meta["worker"] for job in jobs} == set(remote_workers(pool)), "both workers took jobs"
    for job, reference in zip(jobs, expected):
        image, text = reference.images[0], reference.infotexts[0]
        assert job.result.images[0].tobytes() == image.tobytes()
        assert job.result.infotexts == [text]
        saved = Path(job.result.paths[0])  # written by the head, into its own outputs folder, with infotext
        assert saved.is_file() and saved.is_relative_to(pool.paths.outputs_dir)
        with Image.open(saved) as png:
            assert png.info["parameters"] == text
            assert png.tobytes() == image.tobytes()


def ray_processes():
    """This process (Ray's driver) and every process Ray started from it: GCS, raylet, its agents, the workers."""
    import psutil

    me = psutil.Process()
    started = [p for p in me.children() if p.name() in ("gcs_server", "raylet")]
    assert {p.name() for p in started} == {"gcs_server", "raylet"}, "a private cluster of this process"
    return [me] + started + [child for p in started for child in p.children(recursive=True)]


def test_the_private_cluster_listens_on_loopback_only_and_keeps_its_token_private(pool):
    import ipaddress

    import psutil

    wait_for(lambda: all(w["alive"] for w in pool.queue.workers()), 240, "both workers to start")
    processes, exposed, seen = ray_processes(), [], 0
    for process in processes:
        try:
            sockets = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # an idle worker Ray just let go
            continue
        for sock in sockets:
            if sock.status not in (psutil.CONN_LISTEN, psutil.CONN_NONE) or sock.raddr:
                continue  # a connection, not a server socket
            seen += 1
            address = ipaddress.ip_address(sock.laddr.ip)
            address = getattr(address, "ipv4_mapped", None) or address  # '::ffff:127.0.0.1'
            if not address.is_loopback:
                exposed.append(f"{process.name()} (pid {process.pid}) on {sock.laddr.ip}:{sock.laddr.port}")
    worker_pids = {w["pid"] for w in remote_workers(pool).values()}
    assert worker_pids <= {p.pid for p in processes}, "the workers' own servers were checked"
    assert seen >= 5, "GCS, raylet (2), runtime-env agent and the workers listen somewhere"
    assert exposed == [], exposed
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert token.parent == pool.paths.data_dir / "ray" and len(token.read_text()) == 64
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700


def test_batch_count_spread_over_both_workers_gives_one_workers_images(pool, local):
    spread = {"workers_spread_batch_count": True}
    job = pool.submit(request(200, n_iter=4, override_settings=spread))
    expected = single_threaded(local, 200, n_iter=4)
    assert job.wait(240) and job.state == JobState.DONE, job.error
    assert len(set(job.meta["workers"])) == 2, job.meta["workers"]
    assert job.result.seeds == expected.seeds == [200, 201, 202, 203]
    assert [i.tobytes() for i in job.result.images] == [i.tobytes() for i in expected.images]
    assert job.result.infotexts == expected.infotexts
    assert all(Path(path).is_file() for path in job.result.paths)


def test_a_job_goes_to_the_worker_that_has_its_checkpoint(pool):
    first = pool.submit(request(1, checkpoint="b.safetensors", save_images=False))
    assert first.wait(240) and first.state == JobState.DONE, first.error
    holder = first.meta["worker"]
    assert any(key == "b.safetensors" for key in remote_workers(pool)[holder]["loaded"])
    # the holder has now been busier than the other worker, yet the next job for b goes to it again
    second = pool.submit(request(2, checkpoint="b.safetensors", save_images=False))
    assert second.wait(240) and second.state == JobState.DONE, second.error
    assert second.meta["worker"] == holder


def test_a_job_goes_to_the_worker_that_has_its_lora_though_both_have_its_checkpoint(pool, local, loras):
    from webui.features.lora_writer import write_lora

    write_lora(loras / "Style.safetensors", local.models.get("a.safetensors"), seed=3)
    wait_for(lambda: all(w["alive"] for w in pool.queue.workers()), 240, "both workers to start")
    warm = [pool.submit(request(seed, save_images=False)) for seed in (10, 11)]  # one each: both have a loaded
    assert all(job.wait(240) and job.state == JobState.DONE for job in warm)
    first = pool.submit(request(12, prompt="a red fox <lora:Style:0.8>", save_images=False))
    assert first.wait(240) and first.state == JobState.DONE, first.error
    holder = first.meta["worker"]
    workers = remote_workers(pool)
    assert all("a.safetensors" in w["loaded"] for w in workers.values()), workers
    assert "lora:style" in workers[holder]["loaded"]
    assert all("lora:style" not in w["loaded"] for name, w in workers.items() if name != holder)
    executor = next(e for e in pool.queue.executors if e.name == holder)
    executor.busy_seconds += 3600  # far busier than the other: only the LoRA can bring the next job here
    second = pool.submit(request(13, prompt="a fox <lora:Style:0.5>, night", save_images=False))
    assert second.wait(240) and second.state == JobState.DONE, second.error
    assert second.meta["worker"] == holder
    plain = pool.submit(request(14, save_images=False))  # and a job without it goes to the less busy one
    assert plain.wait(240) and plain.meta["worker"] != holder


def test_the_models_a_request_names_are_read_from_its_prompt_tags_and_controlnet_units():
    from webui.workers.affinity import request_keys

    units = [{"model": "control_v11p_sd15_canny [d14c016b]"}, {"model": "None"},
             {"model": "control_depth", "enabled": False}, {"model": "sub/t2iadapter_sketch.safetensors"}]
    keys = request_keys(request(1, prompt="x <lora:Style:0.5> <lora:folder/Other:1>", negative_prompt="<lyco:neg>",
                                alwayson_scripts={"controlnet": {"args": units}}))
    assert keys == {"lora:style", "lora:other", "lora:neg", "controlnet:control_v11p_sd15_canny",
                    "controlnet:t2iadapter_sketch"}


def test_an_extensions_script_runs_on_a_worker_as_on_the_head(pool):
    """The workers load the head's extensions (same folder, same on/off settings): Prompt matrix is one."""
    assert "prompt_matrix" in pool.engine.scripts
    job = pool.submit(request(21, prompt="a fox|night", save_images=False, script_name="prompt_matrix"))
    assert job.wait(240) and job.state == JobState.DONE, job.error
    assert job.meta["worker"] in remote_workers(pool)
    assert len(job.result.images) == 3  # the grid, then each combination
    assert [text.split("\n")[0] for text in job.result.infotexts[1:]] == ["a fox", "a fox, night"]


def test_interrupt_and_skip_reach_a_remote_job_within_a_step(pool):
    job = pool.submit(request(3, steps=60, n_iter=2, save_images=False))
    wait_for(lambda: job.state == JobState.RUNNING and job.progress.step >= 1, 120, "the job to sample")
    assert job.meta["worker"] in remote_workers(pool)
    job.skip()  # the first batch is dropped, the second runs
    wait_for(lambda: job.progress.job_no == 1 and job.progress.step >= 61, 120, "the second batch")
    assert job.progress.preview_latents is not None, "live previews stream back"
    job.interrupt()
    pressed = time.monotonic()
    assert job.wait(30)
    assert time.monotonic() - pressed < 2.0, "the worker stopped at once"
    assert job.state == JobState.INTERRUPTED
    assert job.result.skipped_batches == 1 and job.result.interrupted
    assert job.progress.step < 120, "it stopped before the end"


def test_a_worker_killed_mid_job_has_its_job_retried_on_the_other(pool):
    job = pool.submit(request(4, steps=40, save_images=False))
    wait_for(lambda: job.state == JobState.RUNNING and job.progress.step >= 1, 120, "the job to sample")
    first = job.meta["worker"]
    os.kill(remote_workers(pool)[first]["pid"], signal.SIGKILL)
    assert job.wait(240)
    assert job.state == JobState.DONE, job.error
    assert job.meta["workers"][0] == first and job.meta["worker"] != first
    assert "retried on another worker" in job.meta["retried"]
    assert any("retried on another worker" in warning for warning in job.result.warnings)
    from webui.ui.queue_panel import render_past

    # the history keeps where it ran and why again, across restarts; the job's record reaches the history's
    # writer just after the job is done, so wait for the row rather than for an idle writer
    wait_for(lambda: pool.history.store.get(job.id) is not None, 30, "the job's history row")
    record = pool.history.store.get(job.id)
    assert record.worker == job.meta["worker"] and record.retried == job.meta["retried"]
    assert f"on {record.worker} (retried)" in render_past([record], "", True)


def test_a_worker_finds_checkpoints_by_hash_and_says_when_it_has_none(ckpts, tmp_path):
    from webui.model_manager.hashing import sha256_file
    from webui.workers.messages import CheckpointRef
    from webui.workers.service import WorkerService, WorkerConfig

    own = tmp_path / "elsewhere"
    own.mkdir()
    shutil.copy(ckpts / "a.safetensors", own / "renamed.safetensors")  # another path and name on this worker
    service = WorkerService(WorkerConfig(name="t", models_dir=str(tmp_path / "models"), ckpt_dirs=[str(own)]))
    try:
        found = service.find_checkpoint(CheckpointRef("a.safetensors", sha256_file(ckpts / "a.safetensors")))
        assert found == "renamed.safetensors"
        missing = service.start("k", request(1), {}, CheckpointRef("b.safetensors",
                                                                   sha256_file(ckpts / "b.safetensors")))
        assert missing.startswith("worker t has no checkpoint b.safetensors [") and str(own) in missing
        lacking = service.start("k2", request(1, script_name="prompt_matrix"), {},
                                CheckpointRef("renamed.safetensors"), ("prompt_matrix",))  # extensions off
        assert lacking.startswith("worker t has no script 'prompt_matrix' (its extensions: ")
    finally:
        service.easel.close()


def test_a_job_moves_to_a_worker_that_has_its_model_or_fails_with_every_workers_message():
    from webui.workers.pool import Executor, ModelMissing, PoolQueue

    class Refusing(Executor):  # a worker that lacks the checkpoint, as WorkerService.start answers then
        remote = True

        def run(self, job):
            raise ModelMissing(f"worker {self.name} has no checkpoint x")

    class Having(Executor):  # runs the job here
        remote = True

    def one_job(*executors):
        queue = PoolQueue()
        for executor in executors:
            queue.add(executor)
        queue.start()
        try:
            job = queue.submit(lambda job: "made", remote=object())
            assert job.wait(10)
            return job
        finally:
            queue.stop()

    job = one_job(Refusing("w0"), Having("w1"))
    assert job.state == JobState.DONE and job.result == "made"
    assert job.meta["workers"] == ["w0", "w1"] and job.meta["missing"] == ["worker w0 has no checkpoint x"]
    job = one_job(Refusing("w0"), Refusing("w1"))
    assert job.state == JobState.FAILED
    assert str(job.error) == "worker w0 has no checkpoint x; worker w1 has no checkpoint x"


def test_joining_a_cluster_warns_about_a_token_file_others_can_read(tmp_path):
    from webui.workers.lockdown import shared_token_warning

    token = tmp_path / "auth_token"
    token.write_text("x" * 64)
    token.chmod(0o644)  # as `ray get-auth-token --generate` leaves ~/.ray/auth_token
    assert shared_token_warning(token) == f"the Ray token {token} can be read by other users of this machine: " \
                                          f"chmod 600 {token}"
    token.chmod(0o600)
    assert shared_token_warning(token) is None


def test_stopping_the_head_keeps_its_running_and_waiting_jobs_for_the_next_start(tmp_path):
    """As app.build wires it: the queue store forgets a job that ends, unless it ends because the head stops."""
    import threading

    from webui.core.job_store import PendingJobStore
    from webui.workers.pool import Executor, PoolQueue

    running = threading.Event()

    class Busy(Executor):  # a remote job that runs until interrupted, as RayExecutor.run does on Interrupt
        remote = True

        def run(self, job):
            running.set()
            while not job.interrupted:
                time.sleep(0.01)

    store = PendingJobStore(tmp_path / "queue")
    queue = PoolQueue()
    queue.listeners.append(lambda job: None if queue.stopping else store.remove(job.id))
    queue.add(Busy("w0"))
    queue.start()
    for index in range(2):
        store.save(f"job{index}", request(index), None, time.time())
        queue.submit(lambda job: None, job_id=f"job{index}", remote=object())
    assert running.wait(10)
    queue.stop()
    assert [job.id for job in store.load()] == ["job0", "job1"]


def test_jobs_kept_from_before_a_restart_run_on_the_workers(pool):
    """What the next start does with them (startup.py: restore_queue after build): queued again, run remotely."""
    for index in range(2):
        pool.pending_jobs.save(f"kept{index}", request(300 + index, save_images=False), "api", time.time())
    restored = pool.restore_queue()
    assert [job.id for job in restored] == ["kept0", "kept1"]
    for job in restored:
        assert job.wait(240) and job.state == JobState.DONE, job.error
        assert job.meta["worker"] in remote_workers(pool) and job.meta["restored"]
        assert Path(job.result.paths[0]).is_file()  # saved on the head, whatever the request said
    assert pool.pending_jobs.load() == []
