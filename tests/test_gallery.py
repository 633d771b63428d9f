"""Issue 20: the gallery's SQLite index, scanner, trash, API, and repair after a killed server."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from webui.api.errors import install_handlers
from webui.core.images import encode_image
from webui.gallery import Gallery, Query
from webui.gallery.api import build_router
from webui.gallery.index import fts_query

A1111 = ("{prompt}\nNegative prompt: blurry, lowres\nSteps: {steps}, Sampler: {sampler}, Schedule type: Karras, "
         "CFG scale: 7, Seed: {seed}, Size: 64x64, Model hash: 6ce0161689, Model: {model}, Version: v1.10.1")


def write_png(path: Path, prompt: str, seed: int = 1, sampler: str = "Euler a", model: str = "tiny-sd1",
              size: tuple[int, int] = (64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = A1111.format(prompt=prompt, steps=20, sampler=sampler, seed=seed, model=model)
    path.write_bytes(encode_image(Image.new("RGB", size, (seed * 37 % 255, 90, 160)), "png", text))
    return path


def comfy_png(path: Path) -> Path:
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 77, "steps": 12, "cfg": 6.5, "sampler_name": "euler",
                                                        "scheduler": "karras", "positive": ["6", 0],
                                                        "negative": ["7", 0], "latent_image": ["5", 0]}},
             "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "comfy-model.safetensors"}},
             "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 96, "height": 64}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a comfy lighthouse"}},
             "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog"}}}
    meta = PngImagePlugin.PngInfo()
    meta.add_text("prompt", json.dumps(graph))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64)).save(path, "PNG", pnginfo=meta)
    return path


@pytest.fixture
def gallery(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    g = Gallery(tmp_path / "data", outputs)
    g.start(scan=False)
    yield g
    g.stop()


def scan(g: Gallery) -> None:
    g.scan()
    assert g.wait_idle(30)


def ids(g: Gallery, **query) -> list[int]:
    return [row["id"] for row in g.search(Query(**query))[0]]


def test_fts_query_takes_words_and_a_prefix():
    assert fts_query("") is None and fts_query(" ,:() ") is None
    assert fts_query('red "ca') == 'prompt : ("red" AND "ca"*)'


def test_scan_indexes_files_and_filters_search(gallery, tmp_path):
    out = gallery.outputs_dir
    write_png(out / "txt2img-images" / "a.png", "a red cat on a sofa", seed=1, sampler="Euler a")
    write_png(out / "txt2img-images" / "b.png", "a blue dog", seed=2, sampler="DPM++ 2M", model="other")
    write_png(out / "txt2img-images" / "c.png", "red car", seed=3, sampler="Euler a", size=(96, 64))
    (out / "txt2img-images" / ".c.png.x.tmp").write_bytes(b"half")  # an interrupted atomic write: ignored
    scan(gallery)
    assert gallery.index.count() == 3
    assert len(ids(gallery, text="red")) == 2
    assert len(ids(gallery, text="red ca")) == 2          # last word is a prefix: cat, car
    assert len(ids(gallery, text="red ca", size="64x64")) == 1
    assert ids(gallery, text="dog", sampler="Euler a") == []
    rows, total = gallery.search(Query(model="other"))
    assert total == 1 and rows[0]["seed"] == 2 and rows[0]["sampler"] == "DPM++ 2M" and rows[0]["steps"] == 20
    assert rows[0]["params"]["Schedule type"] == "Karras" and rows[0]["model_hash"] == "6ce0161689"
    # changed and removed files are noticed by size + mtime
    write_png(out / "txt2img-images" / "b.png", "a green dog", seed=2)
    os.utime(out / "txt2img-images" / "b.png", (time.time() + 5, time.time() + 5))
    (out / "txt2img-images" / "a.png").unlink()
    scan(gallery)
    assert gallery.index.count() == 2 and ids(gallery, text="green") and not ids(gallery, text="blue")


def test_user_data_survives_reindex_and_boards_and_trash(gallery):
    path = write_png(gallery.outputs_dir / "x.png", "castle at dusk")
    scan(gallery)
    [image_id] = ids(gallery, text="castle")
    gallery.index.set_favourite(image_id, True)
    gallery.index.set_rating(image_id, 4)
    gallery.index.set_board([image_id], "  Trips ")
    os.utime(path, (time.time() + 10, time.time() + 10))
    scan(gallery)  # re-read from the file: the generation columns change, the user's marks stay
    row = gallery.record(image_id)
    assert row["favourite"] and row["rating"] == 4 and row["board"] == "Trips"
    assert ids(gallery, board="Trips", favourite=True) == [image_id]
    gallery.trash(image_id)
    assert not path.exists() and ids(gallery, text="castle") == [] and ids(gallery, trash=True) == [image_id]
    scan(gallery)  # the trash is not a missing file
    assert ids(gallery, trash=True) == [image_id]
    gallery.restore(image_id)
    assert path.is_file() and ids(gallery, text="castle") == [image_id]
    assert gallery.record(image_id)["board"] == "Trips"


def test_added_folder_indexes_other_tools(gallery, tmp_path):
    comfy_png(tmp_path / "comfy" / "ComfyUI_0001.png")
    gallery.add_folder(str(tmp_path / "comfy"))
    assert gallery.wait_idle(30)
    [row] = gallery.search(Query(text="lighthouse"))[0]
    assert row["tool"] == "comfyui" and row["seed"] == 77 and row["model"] == "comfy-model"
    assert (row["width"], row["height"]) == (96, 64)


def test_saved_images_are_indexed_off_the_worker(gallery):
    path = write_png(gallery.outputs_dir / "txt2img-images" / "s.png", "saved just now", seed=9)
    with Image.open(path) as image:
        gallery.image_saved(str(path), image, image.info["parameters"], job_id="job-1")
    assert gallery.wait_idle(10)
    [row] = gallery.search(Query(text="saved"))[0]
    assert row["job_id"] == "job-1" and row["seed"] == 9 and row["root"] == str(gallery.outputs_dir)


def test_trash_interrupted_before_the_move_is_undone(gallery):
    path = write_png(gallery.outputs_dir / "y.png", "half deleted")
    scan(gallery)
    [image_id] = ids(gallery, text="half")
    gallery.index.mark_trashed(image_id, str(gallery.trash_dir / "never-moved.png"))  # killed before the move
    scan(gallery)
    assert ids(gallery, text="half") == [image_id] and path.is_file()


def test_api_lists_searches_and_serves_thumbnails(gallery):
    write_png(gallery.outputs_dir / "a.png", "violet mountain lake", seed=5)
    write_png(gallery.outputs_dir / "b.png", "violet flower", seed=6, sampler="DPM++ 2M")
    scan(gallery)
    app = FastAPI()
    install_handlers(app)
    app.include_router(build_router(lambda: gallery))
    client = TestClient(app)
    body = client.get("/easel/v1/images", params={"q": "violet", "sampler": "Euler a"}).json()
    assert body["total"] == 1 and body["images"][0]["seed"] == 5 and body["images"][0]["prompt"].startswith("violet")
    image = body["images"][0]
    thumb = client.get(image["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert client.get(image["file_url"]).status_code == 200
    assert client.post(f"/easel/v1/images/{image['id']}/favourite", json={"favourite": True}).json()["favourite"]
    assert client.post(f"/easel/v1/images/{image['id']}/board", json={"board": "lakes"}).json()["board"] == "lakes"
    assert client.get("/easel/v1/images", params={"board": "lakes", "favourite": True}).json()["total"] == 1
    assert client.get("/easel/v1/images/boards").json()["boards"] == ["lakes"]
    assert client.delete(f"/easel/v1/images/{image['id']}").json()["trashed_at"]
    assert client.get("/easel/v1/images", params={"q": "violet"}).json()["total"] == 1
    assert client.post(f"/easel/v1/images/{image['id']}/restore").json()["trashed_at"] is None
    everything = [row["id"] for row in client.get("/easel/v1/images").json()["images"]]
    bulk = client.post("/easel/v1/images/bulk", json={"ids": everything, "action": "board", "board": "violets"})
    assert bulk.json() == {"done": 2, "failed": {}}
    assert client.get("/easel/v1/images", params={"board": "violets"}).json()["total"] == 2
    assert client.post("/easel/v1/images/bulk", json={"ids": everything, "action": "trash"}).json()["done"] == 2
    assert client.get("/easel/v1/images", params={"trash": True}).json()["total"] == 2
    assert client.post("/easel/v1/images/bulk", json={"ids": everything, "action": "restore"}).json()["done"] == 2
    assert client.post("/easel/v1/images/bulk", json={"ids": everything, "action": "explode"}).status_code == 422
    assert client.get("/easel/v1/images/999999/thumbnail").status_code == 404
    assert client.get("/easel/v1/images", params={"limit": 0}).status_code == 422
    assert client.post(f"/easel/v1/images/{image['id']}/rating", json={"rating": 9}).status_code == 422


def test_pictures_outside_served_folders_go_to_the_grid_decoded(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from webui.ui.gallery_tab import _shown

    inside = write_png(tmp_path / "outputs" / "a.png", "inside")
    elsewhere = write_png(tmp_path / "elsewhere" / "b.png", "elsewhere")
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "outputs")
    easel = SimpleNamespace(paths=SimpleNamespace(outputs_dir=tmp_path / "outputs"))
    assert _shown(easel, inside) == str(inside)
    picture = _shown(easel, elsewhere)
    assert isinstance(picture, Image.Image) and picture.size == (64, 64)


def test_generated_images_are_indexed_with_their_job(easel):
    """The app wires the engine's saved-image listener to the gallery; the worker only queues the path."""
    from webui.core.request import GenerationRequest

    easel.gallery.start(scan=False)
    request = GenerationRequest(prompt="a quokka wearing sunglasses", steps=2, width=64, height=64, seed=7,
                                batch_size=2, checkpoint="tiny-sd1.safetensors")
    job = easel.submit(request)
    job.wait()
    assert job.error is None and easel.gallery.wait_idle(20)
    rows, total = easel.gallery.search(Query(text="quokka sungl"))
    assert total == 2 and {r["seed"] for r in rows} == {7, 8}
    assert {r["job_id"] for r in rows} == {job.id} and {r["path"] for r in rows} == set(job.result.paths)
    assert rows[0]["model"] == "tiny-sd1" and rows[0]["width"] == 64 and rows[0]["steps"] == 2


def test_empty_trash_deletes_files_and_rows_and_thumbnails_go_with_their_images(gallery):
    kept = write_png(gallery.outputs_dir / "kept.png", "a kept owl", seed=1)
    doomed = write_png(gallery.outputs_dir / "doomed.png", "a doomed owl", seed=2)
    changed = write_png(gallery.outputs_dir / "changed.png", "a changed owl", seed=3)
    scan(gallery)
    by_prompt = {row["prompt"]: row["id"] for row in gallery.search(Query(text="owl"))[0]}
    thumbs = {name: gallery.thumbnail(i) for name, i in by_prompt.items()}
    assert all(t is not None and t.is_file() for t in thumbs.values())
    gallery.trash(by_prompt["a doomed owl"])
    trash_thumb = gallery.thumbnail(by_prompt["a doomed owl"])  # the trash shows thumbnails too
    write_png(changed, "a changed owl", seed=4)  # rewritten: its old thumbnail is stale
    os.utime(changed, (time.time() + 5, time.time() + 5))
    scan(gallery)
    assert not thumbs["a changed owl"].exists() and thumbs["a kept owl"].is_file() and trash_thumb.is_file()
    assert gallery.progress.thumbnails_removed >= 1
    assert gallery.empty_trash() == 1
    assert gallery.wait_idle(30)
    assert not doomed.exists() and not list(gallery.trash_dir.iterdir()) and kept.is_file()
    assert gallery.search(Query(trash=True))[1] == 0 and gallery.index.get(by_prompt["a doomed owl"]) is None
    assert not trash_thumb.exists() and thumbs["a kept owl"].is_file()
    assert gallery.empty_trash() == 0


def test_removing_an_added_folder_drops_its_rows_not_its_files(gallery, tmp_path):
    other = tmp_path / "elsewhere"
    write_png(other / "sub" / "one.png", "a borrowed kite")
    write_png(gallery.outputs_dir / "own.png", "our own kite")
    gallery.add_folder(str(other))
    assert gallery.wait_idle(30) and gallery.search(Query(text="kite"))[1] == 2
    with pytest.raises(ValueError, match="not one of the added folders"):
        gallery.remove_folder(str(gallery.outputs_dir))
    gallery.remove_folder(str(other.resolve()))
    assert gallery.wait_idle(30)
    [row] = gallery.search(Query(text="kite"))[0]
    assert row["prompt"] == "our own kite" and (other / "sub" / "one.png").is_file()
    assert str(other.resolve()) not in [str(p) for p in gallery.roots()]


def test_one_walk_serves_the_scanner_and_the_library(tmp_path):
    from webui.gallery.scanner import walk_images
    from webui.paths import walk_tree

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("a/one.png", "a/b/two.jpg", ".hidden/three.png", "a/.four.png.tmp", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    found = {os.path.relpath(path, tmp_path) for path, _ in walk_images(tmp_path)}
    assert found == {"a/one.png", "a/b/two.jpg"}  # no hidden names, no link followed
    assert {os.path.relpath(p, tmp_path) for p, _ in walk_images(tmp_path, skip=(tmp_path / "a" / "b",))} == \
        {"a/one.png"}
    refused = [(entry.name, is_dir) for entry, is_dir in walk_tree(tmp_path, lambda e: e.name != "b",
                                                                   follow_symlinks=False) if is_dir]
    assert sorted(refused) == [("b", True)]  # a folder the predicate refused is yielded, not entered
    followed = {os.path.relpath(e.path, tmp_path) for e, d in walk_tree(tmp_path) if not d}
    assert "link/one.png" in followed  # links to folders are walked by default (the model library's way)
