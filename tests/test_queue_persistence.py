"""Queued work survives a restart, and Interrupt acts inside a step (issue 23, item 8).

- A server killed with SIGKILL while one job runs and two wait (one an img2img with its init
  image) comes back with all three queued in their order, with their ids; the two small ones
  run and save their images; nothing is left in data/queue/.
- Interrupt pressed while the UNet is in the middle of a step stops that very forward pass:
  no later block of the UNet runs (before, the whole step ran to its end first).
"""
from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from api_helpers import TINY, start_long_job, wait_until
from conftest import start_server
from webui.core.job_store import PendingJobStore
from webui.core.jobs import JobState
from webui.core.request import GenerationRequest


def png_b64(colour=(20, 120, 220)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_store_round_trips_images_and_refuses_what_it_cannot_keep(tmp_path):
    store = PendingJobStore(tmp_path / "queue")
    init = Image.new("RGB", (16, 8), (1, 2, 3))
    request = GenerationRequest(prompt="p", mode="img2img", init_images=[init], mask=Image.new("L", (16, 8), 255),
                                alwayson_scripts={"controlnet": {"args": [{"image": init, "weight": 0.5}]}})
    assert store.save("job-1", request, "alice", 1.0)
    assert store.save("job-0", GenerationRequest(prompt="older"), None, 0.5)
    assert not store.save("job-2", GenerationRequest(prompt="x", extra={"thing": object()}), None, 2.0)
    loaded = store.load()
    assert [s.id for s in loaded] == ["job-0", "job-1"]
    back = loaded[1].request
    assert back.init_images[0].tobytes() == init.tobytes() and back.mask.mode == "L"
    assert back.alwayson_scripts["controlnet"]["args"][0]["image"].size == (16, 8)
    assert loaded[1].owner == "alice"
    store.started("job-1")
    store.started("job-1")  # started twice, never finished: not tried a third time
    assert [s.id for s in store.load()] == ["job-0"]
    assert list((tmp_path / "queue" / "failed").iterdir())


def test_queued_jobs_survive_a_kill_and_run_after_restart(tmp_path, tiny_ckpt_dir):
    root = tmp_path / "server"
    root.mkdir()
    server = start_server(root, tiny_ckpt_dir, ["--api", "--nowebui"])
    with httpx.Client(base_url=server.url, timeout=60) as client:
        long_id = start_long_job(client)
        small = client.post("/easel/v1/jobs", json={"type": "txt2img", "params": dict(TINY, seed=5)}).json()["id"]
        edit = client.post("/easel/v1/jobs", json={"type": "img2img", "params": dict(
            TINY, seed=6, init_images=[png_b64()], denoising_strength=0.5)}).json()["id"]
    queue = root / "data" / "queue"
    assert sorted(p.name for p in queue.iterdir()) == sorted([long_id, small, edit])
    assert list((queue / edit).glob("*.png"))  # the init image is kept beside the request
    server.process.kill()  # SIGKILL: no chance to save anything at exit
    server.process.wait(30)

    server = start_server(root, tiny_ckpt_dir, ["--api", "--nowebui"])
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            def restored():
                jobs = client.get("/easel/v1/jobs", params={"finished": True}).json()["jobs"]
                return {j["id"]: j for j in jobs} if len(jobs) >= 3 else None

            jobs = wait_until(restored, timeout=60, what="the queue to be restored")
            assert {long_id, small, edit} <= set(jobs)
            client.delete(f"/easel/v1/jobs/{long_id}")  # the long one is not needed: interrupt it

            def finished():
                states = {i: client.get(f"/easel/v1/jobs/{i}").json()["state"] for i in (small, edit)}
                return states if all(s in ("done", "failed", "interrupted", "cancelled") for s in states.values()) \
                    else None

            assert wait_until(finished, timeout=180, what="the restored jobs") == {small: "done", edit: "done"}
        outputs = root / "outputs"
        assert len(list(outputs.glob("txt2img-images/*/*.png"))) >= 1
        assert len(list(outputs.glob("img2img-images/*/*.png"))) == 1
        wait_until(lambda: not [p for p in queue.iterdir() if p.name != "failed"], timeout=30,
                   what="data/queue to be emptied")
    finally:
        server.stop()


def test_a_clean_stop_keeps_waiting_jobs_too(tmp_path, tiny_ckpt_dir):
    """Ctrl+C (SIGTERM) cancels nothing for good: waiting jobs stay on disk for the next start."""
    root = tmp_path / "server"
    root.mkdir()
    server = start_server(root, tiny_ckpt_dir, ["--api", "--nowebui"])
    with httpx.Client(base_url=server.url, timeout=60) as client:
        start_long_job(client)
        waiting = client.post("/easel/v1/jobs", json={"type": "txt2img", "params": TINY}).json()["id"]
    server.stop()
    record = json.loads((root / "data" / "queue" / waiting / "request.json").read_text())
    assert record["request"]["prompt"] == TINY["prompt"]


def test_interrupt_stops_inside_the_unet_step(easel):
    model = easel.models.get("tiny-sd1.safetensors")
    unet = model.unet
    seen: list[str] = []
    forwards = []

    def first_block(_module, _args):
        forwards.append(1)
        seen.append("down0")
        if len(forwards) == 2:  # the second step, in the middle of the UNet
            easel.queue.current.interrupt()

    handles = [unet.down_blocks[0].register_forward_pre_hook(first_block),
               unet.conv_out.register_forward_pre_hook(lambda m, a: seen.append("conv_out"))]
    try:
        job = easel.submit(GenerationRequest(prompt="x", steps=20, width=64, height=64, seed=1,
                                             sampler_name="Euler", checkpoint="tiny-sd1.safetensors",
                                             save_images=False))
        job.wait(120)
    finally:
        for handle in handles:
            handle.remove()
    assert job.state == JobState.INTERRUPTED and job.progress.step < 20
    # the first forward ran to its end; the second stopped in its first block, before conv_out
    assert seen == ["down0", "conv_out", "down0"], seen
