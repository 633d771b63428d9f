"""The model store: one record and one RAM / device-memory budget for every kind of model.

Real tiny models throughout: the app's tiny SD 1.x checkpoint, tiny ControlNets, a tiny ESRGAN
upscaler and CLIP vision encoder, loaded by the same code that loads real files.
"""
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from webui.core.request import GenerationRequest
from webui.features.controlnet.models import write_controlnet
from webui.features.ip_adapter import write_test_adapter, write_test_encoder
from webui.features.upscalers import UPSCALER_KINDS
from webui.features.upscalers.tiny import write_tiny_esrgan
from webui.model_manager.store import GB, ModelStore, Sizes, measure

from conftest import make_easel
from test_controlnet import picture, unit


def hand_sum(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def sizes(app) -> dict:
    return {(e.kind, e.key if e.kind == "checkpoint" else e.key[0].rsplit("/", 1)[-1]): e
            for e in app.models.store.entries()}


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    sd1 = app.models.get("tiny-sd1.safetensors")
    for seed, name in enumerate(("cn_a", "cn_b", "cn_c")):
        write_controlnet(app.paths.model_dir("controlnet") / f"{name}.safetensors", sd1.unet, "diffusers", seed=seed)
    write_tiny_esrgan(app.paths.model_dir(UPSCALER_KINDS[0]) / "4x-Tiny.safetensors", scale=4, seed=1)
    yield app
    app.close()


def controlnet(app, name):
    return app.controlnets.load(name, app.models.get("tiny-sd1.safetensors"))


def generate(app, units=(), **kw):
    base = dict(prompt="a ball", steps=3, width=64, height=64, seed=5, sampler_name="Euler", checkpoint="tiny-sd1",
                save_images=False, alwayson_scripts={"controlnet": {"args": list(units)}} if units else {})
    base.update(kw)
    return np.asarray(app.txt2img(GenerationRequest(**base)).images[0])


# ---- measuring ----------------------------------------------------------------------------------


def test_sizes_are_the_hand_sum_of_parameters_and_buffers(app):
    sd1 = app.models.get("tiny-sd1.safetensors")
    net = controlnet(app, "cn_a")
    upscaler = app.upscalers.load("4x-Tiny")
    found = sizes(app)
    assert found[("checkpoint", "tiny-sd1.safetensors")].ram_bytes == hand_sum(*sd1.modules()) > 0
    assert found[("controlnet", "cn_a.safetensors")].ram_bytes == hand_sum(net) > 0
    assert found[("upscaler", "4x-Tiny.safetensors")].ram_bytes == hand_sum(upscaler.descriptor.model) > 0
    assert all(e.device_bytes == 0 for e in app.models.store.entries())  # everything is on the CPU here


def test_measure_counts_shared_tensors_once_and_meta_tensors_not_at_all():
    linear = torch.nn.Linear(4, 3)
    expected = (4 * 3 + 3) * 4
    assert measure(linear) == Sizes(expected, 0)
    assert measure({"a": linear, "again": [linear, linear.weight]}) == Sizes(expected, 0)
    half = torch.nn.Linear(4, 3).half()
    assert measure((linear, half)) == Sizes(expected + expected // 2, 0)
    with torch.device("meta"):
        ghost = torch.nn.Linear(1000, 1000)
    assert measure([linear, ghost]) == Sizes(expected, 0)


# ---- one budget across kinds -----------------------------------------------------------------------


def test_least_recently_used_goes_first_across_kinds_under_the_ram_budget(app):
    checkpoint = hand_sum(*app.models.get("tiny-sd1.safetensors").modules())
    one_net = hand_sum(controlnet(app, "cn_a"))
    controlnet(app, "cn_b")
    app.models.store.evict_where("upscaler")
    upscaler = hand_sum(app.upscalers.load("4x-Tiny").descriptor.model)
    app.models.store.evict_where("upscaler")
    assert upscaler < one_net  # so evicting one ControlNet makes room
    # a checkpoint and two ControlNets fit; adding the upscaler does not
    app.settings.update({"model_cache_ram_gb": (checkpoint + 2 * one_net + upscaler // 2) / GB})
    controlnet(app, "cn_a")  # cn_b is now the least recently used
    app.upscalers.load("4x-Tiny")
    assert set(sizes(app)) == {("checkpoint", "tiny-sd1.safetensors"), ("controlnet", "cn_a.safetensors"),
                               ("upscaler", "4x-Tiny.safetensors")}
    total = app.models.store.totals().ram
    assert total == checkpoint + one_net + upscaler <= app.settings.get("model_cache_ram_gb") * GB
    # a third ControlNet: cn_a is now the oldest (the checkpoint was used since, and is the active one)
    controlnet(app, "cn_c")
    assert set(sizes(app)) == {("checkpoint", "tiny-sd1.safetensors"), ("upscaler", "4x-Tiny.safetensors"),
                               ("controlnet", "cn_c.safetensors")}


def test_ram_and_device_budgets_are_separate():
    """Entries measured as device memory (measure injected: this machine may have no GPU) count only there."""
    def on_device(value) -> Sizes:
        return Sizes(0, measure(value).ram)

    unit_bytes = hand_sum(torch.nn.Linear(8, 8))
    store = ModelStore(ram_budget=lambda: 2 * unit_bytes, device_budget=lambda: 2 * unit_bytes)
    evicted = []
    for name in ("ram1", "ram2"):
        store.get("encoder", name, lambda: torch.nn.Linear(8, 8), on_evict=lambda _, n=name: evicted.append(n))
    for name in ("dev1", "dev2"):
        store.get("controlnet", name, lambda: torch.nn.Linear(8, 8), measure=on_device,
                  on_evict=lambda _, n=name: evicted.append(n))
    assert evicted == [] and store.totals() == Sizes(2 * unit_bytes, 2 * unit_bytes)
    store.get("controlnet", "dev3", lambda: torch.nn.Linear(8, 8), measure=on_device)
    assert evicted == ["dev1"]  # the oldest device entry, although ram1 is older still
    store.get("encoder", "ram3", lambda: torch.nn.Linear(8, 8))
    assert evicted == ["dev1", "ram1"]
    assert [e.key for e in store.entries()] == ["ram2", "dev2", "dev3", "ram3"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_budget_with_real_cuda_tensors():
    size = hand_sum(torch.nn.Linear(256, 256))
    store = ModelStore(ram_budget=lambda: None, device_budget=lambda: 2 * size)
    for name in ("a", "b", "c"):
        store.get("controlnet", name, lambda: torch.nn.Linear(256, 256).cuda())
    store.get("encoder", "cpu", lambda: torch.nn.Linear(256, 256))
    assert [(e.key, e.device_bytes, e.ram_bytes) for e in store.entries()] == [
        ("b", size, 0), ("c", size, 0), ("cpu", 0, size)]


# ---- in use, count limits, loading once -----------------------------------------------------------


def test_what_the_running_job_uses_is_never_evicted(app):
    expected = generate(app, [unit(model="cn_a"), unit(model="cn_b", weight=0.5)])
    app.models.store.evict_where("controlnet")
    app.settings.update({"model_cache_ram_gb": 1e-9})  # one byte: nothing fits
    # both ControlNets load during the job and stay until it ends; the pixels are the same
    assert np.array_equal(generate(app, [unit(model="cn_a"), unit(model="cn_b", weight=0.5)]), expected)
    # after the job only the active checkpoint, pinned while it is the current one, stays
    assert set(sizes(app)) == {("checkpoint", "tiny-sd1.safetensors")}
    assert [e.pinned for e in app.models.store.entries()] == [True]
    with app.models.store.in_use():  # what a job does: everything it gets stays until the end
        net = controlnet(app, "cn_a")
        controlnet(app, "cn_b")
        app.upscalers.load("4x-Tiny")
        assert {k for k, _ in sizes(app)} == {"checkpoint", "controlnet", "upscaler"} and len(sizes(app)) == 4
        assert controlnet(app, "cn_a") is net  # a hit, not a reload
    assert set(sizes(app)) == {("checkpoint", "tiny-sd1.safetensors")}


def test_pinned_entries_survive_and_the_count_limit_still_applies():
    store = ModelStore()
    store.set_limit("upscaler", 2)
    for name in ("a", "b"):
        store.get("upscaler", name, lambda: torch.nn.Linear(2, 2))
    with store.pinned("upscaler", "a"):
        store.get("upscaler", "c", lambda: torch.nn.Linear(2, 2))
        assert store.keys("upscaler") == ["a", "c"]  # b went although a is older: a is pinned
    store.get("upscaler", "d", lambda: torch.nn.Linear(2, 2))
    assert store.keys("upscaler") == ["c", "d"]


def test_concurrent_gets_of_one_key_load_once():
    store = ModelStore()
    calls = []

    def slow_load():
        calls.append(1)
        time.sleep(0.2)
        return torch.nn.Linear(2, 2)

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get("x", "k", slow_load))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_a_failed_load_leaves_no_entry_and_can_be_retried():
    store = ModelStore()
    with pytest.raises(OSError):
        store.get("x", "k", lambda: (_ for _ in ()).throw(OSError("broken file")))
    assert store.entries() == []
    assert isinstance(store.get("x", "k", lambda: torch.nn.Linear(2, 2)), torch.nn.Linear)


# ---- evicted and asked for again --------------------------------------------------------------------


def test_evicted_models_reload_and_give_identical_pixels(app):
    units = [unit(model="cn_a")]
    before = generate(app, units)
    first_net = controlnet(app, "cn_a")
    first_model = app.models.get("tiny-sd1.safetensors")
    app.models.unload()  # the checkpoint: its tensors go to the meta device
    app.models.store.evict_where("controlnet")
    assert app.models.store.entries() == [] and next(first_model.unet.parameters()).is_meta
    after = generate(app, units)
    assert controlnet(app, "cn_a") is not first_net  # reloaded from the file
    assert np.array_equal(before, after)
    assert not np.array_equal(before, generate(app))  # the ControlNet does change the image


def test_checkpoint_switch_frees_the_old_one_and_the_store_knows_every_kind(app, tmp_path):
    sd1 = app.models.get("tiny-sd1.safetensors")
    write_test_encoder(app.paths.model_dir("clip_vision") / "enc.safetensors", projection_dim=16)
    write_test_adapter(app.paths.model_dir("ipadapter") / "ip-adapter_tiny.safetensors", sd1.unet, 16)
    adapter = app.ip_adapters.load("ip-adapter_tiny")
    encoder = app.ip_adapters.encoder_for(adapter, torch.device("cpu"), torch.float32)
    assert app.ip_adapters.encoder_for(adapter, torch.device("cpu"), torch.float32) is encoder
    controlnet(app, "cn_a")
    app.models.get("tiny-sdxl.safetensors")  # sd_checkpoints_limit = 1
    kinds = [e.kind for e in app.models.store.entries()]
    assert kinds.count("checkpoint") == 1 and "controlnet" in kinds and "clip_vision" in kinds
    assert app.models.loaded_names() == ["tiny-sdxl.safetensors"]
    assert sizes(app)[("clip_vision", "enc.safetensors")].ram_bytes == hand_sum(encoder)


def test_annotators_load_once_into_the_given_store(tmp_path):
    from controlnet_aux.hed import ControlNetHED_Apache2

    from webui.features.controlnet.preprocessors import run_preprocessor

    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    store = ModelStore()
    image = np.asarray(picture())
    first = run_preprocessor("softedge_hed", image, 64, None, None, tmp_path, store)
    detector = store.peek("annotator", ("softedge_hed", str(tmp_path)))
    assert np.array_equal(run_preprocessor("softedge_hed", image, 64, None, None, tmp_path, store), first)
    assert store.peek("annotator", ("softedge_hed", str(tmp_path))) is detector
    [entry] = store.entries()
    assert entry.kind == "annotator" and entry.ram_bytes == hand_sum(detector.netNetwork) > 0


def test_room_is_made_before_a_load_for_its_estimated_size():
    """The peak of a load is during it: with an estimate, older entries go before `load` runs."""
    unit_bytes = hand_sum(torch.nn.Linear(8, 8))
    store = ModelStore(ram_budget=lambda: 3 * unit_bytes)
    for name in ("a", "b"):
        store.get("encoder", name, lambda: torch.nn.Linear(8, 8))
    seen_during_load = []

    def load():
        seen_during_load.append(store.keys("encoder"))
        return torch.nn.Linear(8, 8)

    store.get("encoder", "c", load, estimate=Sizes(ram=2 * unit_bytes))
    assert seen_during_load == [["b"]]  # "a", the least recently used, went first
    store.get("encoder", "d", lambda: torch.nn.Linear(8, 8))  # no estimate: room is made after the load
    assert store.keys("encoder") == ["b", "c", "d"]


def test_a_checkpoint_load_makes_room_for_its_file_size(app):
    controlnet(app, "cn_a")
    app.upscalers.load("4x-Tiny")
    sd1 = app.models.get("tiny-sd1.safetensors")
    checkpoint = hand_sum(*sd1.modules())
    app.models.unload()
    info = app.models.resolve("tiny-sd1.safetensors")
    assert info.size >= checkpoint  # the estimate: the file's bytes
    app.settings.update({"model_cache_ram_gb": (info.size + hand_sum(app.upscalers.load("4x-Tiny").descriptor.model))
                         / GB})
    during_load = []
    app.models.get("tiny-sd1.safetensors",
                   progress=lambda message: during_load.append({e.kind for e in app.models.store.entries()}))
    assert during_load and during_load[0] == {"upscaler"}  # the ControlNet went before the checkpoint was read


def test_the_loaded_table_lists_every_kind_and_freeing_keeps_what_is_in_use(app):
    from webui.ui.models_loaded import free_unused, loaded_rows

    controlnet(app, "cn_a")
    app.upscalers.load("4x-Tiny")
    app.models.get("tiny-sd1.safetensors")
    rows, status = loaded_rows(app.models.store)
    assert [row[:2] for row in rows] == [["checkpoint", "tiny-sd1.safetensors"], ["upscaler", "4x-Tiny.safetensors"],
                                         ["controlnet", "cn_a.safetensors"]]
    assert rows[0][4] == "yes" and status.startswith("3 loaded · RAM ")
    assert free_unused(app.models.store) == 2  # the active checkpoint is pinned
    assert [row[:2] for row in loaded_rows(app.models.store)[0]] == [["checkpoint", "tiny-sd1.safetensors"]]


def test_checkpoint_formats_are_read_through_one_table(app, tmp_path):
    """A new format is one reader in model_manager.loader.READERS; the rest of loading is shared."""
    from webui.model_manager import loader

    sd1 = app.models.resolve("tiny-sd1.safetensors")
    seen = []

    def wrapped(info, allow_pickle, sidecar):
        seen.append(info.format)
        return loader.READERS["safetensors"](info, allow_pickle, sidecar)

    loader.register_reader("tiny-test-format", wrapped)
    try:
        info = dataclasses.replace(sd1, format="tiny-test-format")
        model = loader.load_checkpoint(info, app.models.device, False)
        assert seen == ["tiny-test-format"] and model.architecture.family == "sd1"
        with pytest.raises(loader.ModelLoadError, match="'nonsense' format"):
            loader.load_checkpoint(dataclasses.replace(sd1, format="nonsense"), app.models.device, False)
    finally:
        del loader.READERS["tiny-test-format"]
