"""Golden images: named requests through the real app on tiny models, compared with stored output.

Each case in CASES is one GenerationRequest run through the assembled app (job queue, engine,
model manager) on tiny random-weight checkpoints (conftest's architectures and seeds, written
by this module). Its images must equal `tests/golden/<case>-<i>.png` pixel for pixel
(np.array_equal), and its infotexts must equal the case's entry in `tests/golden/infotexts.json`
(only the version in "Version: Easel x.y.z" is left out). The goldens were captured from the
engine before its refactor, so any change in what a request produces shows up here, by case.

A missing golden file fails its case. To (re)write the goldens from the current code:

    EASEL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py -q

then run it again without the variable to check that the result is stable. Updating also
prunes the files of cases no longer in CASES.

Determinism: everything (checkpoints included) runs with one torch CPU thread, since the
thread count changes float rounding (a pixel here and there, and the tiny checkpoints' bytes,
whose hash is in the infotext). The pixels are those of the float32 CPU kernels of the torch
version and CPU family they were captured with; on another CPU family or torch version,
capture them again from the unchanged engine before changing it. conftest pins torch's kernels to
AVX2's, not those of libraries beside it (most likely onnxruntime, which runs the identity cases'
face embedding and picks its kernels by CPU with no switch): on an AVX-512 AMD EPYC the PhotoMaker v2
case came out one 8-bit level off in one value of 12,288 (OPENBLAS_CORETYPE, NPY_DISABLE_CPU_FEATURES
and OPENCV_CPU_DISABLE did not change it). So an image also passes when at most 0.1% of its values differ, each by one level; a
change in what a request produces moves far more than that.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from webui.app import AppOptions, build
from webui.core.request import GenerationRequest
from webui.model_manager.architecture import Architecture
from webui.model_manager.tiny import write_single_file

GOLDEN = Path(__file__).resolve().parent / "golden"
INFOTEXTS = GOLDEN / "infotexts.json"
UPDATE = os.environ.get("EASEL_UPDATE_GOLDEN", "") not in ("", "0")

SD1 = "tiny-sd1.safetensors"
SDXL = "tiny-sdxl.safetensors"
SD2V = "sd2v.safetensors"
REFINER = "refiner.safetensors"
SD1_INPAINT = "sd1-inpaint.safetensors"


# ---- inputs (frozen here: they are part of what the goldens record) ------------------------------


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    return Image.fromarray((base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8))


def box_mask(size=(64, 64), box=(20, 20, 44, 44)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def disc(width: int = 64, height: int = 64) -> Image.Image:
    """A white disc on black with a green ramp: something for canny and the image encoders to see."""
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.zeros((height, width, 3), np.uint8)
    array[(xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3) ** 2] = 255
    array[..., 1] = (xx * 255 // width).astype(np.uint8)
    return Image.fromarray(array)


def one_face() -> Image.Image:
    from identity_helpers import face_card

    return face_card((320, 320), [(160, 160, 60)])


# ---- the cases -------------------------------------------------------------------------------------


def txt(**kw: Any) -> GenerationRequest:
    base = dict(prompt="a red fox in the snow", negative_prompt="blurry", steps=3, width=64, height=64, seed=42,
                sampler_name="Euler", checkpoint=SD1, save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def i2i(**kw: Any) -> GenerationRequest:
    base = dict(mode="img2img", prompt="a house", negative_prompt="blurry", steps=4, width=64, height=64, seed=4,
                sampler_name="Euler", checkpoint=SD1, save_images=False, init_images=[picture()],
                denoising_strength=0.6, inpaint_full_res=False)
    base.update(kw)
    return GenerationRequest(**base)


def inpaint(**kw: Any) -> GenerationRequest:
    base = dict(mask=box_mask(), mask_blur=4, inpainting_fill=1, denoising_strength=0.9)
    base.update(kw)
    return i2i(**base)


def hires(**kw: Any) -> GenerationRequest:
    base = dict(prompt="a castle", enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    base.update(kw)
    return txt(**base)


def cn_unit(**kw: Any) -> dict:
    base = {"enabled": True, "module": "canny", "model": "control_canny_tiny", "weight": 1.0, "image": disc(),
            "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 100, "threshold_b": 200,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "pixel_perfect": False}
    base.update(kw)
    return base


def ip_unit(**kw: Any) -> dict:
    base = {"enabled": True, "module": "ip-adapter_clip_h", "model": "ip-adapter_tiny_sd15", "weight": 1.0,
            "image": disc()}
    base.update(kw)
    return base


def identity(args: dict, **kw: Any) -> GenerationRequest:
    base = dict(prompt="a photo of a man", checkpoint=SDXL, seed=11, alwayson_scripts={"identity": {"args": args}})
    base.update(kw)
    return txt(**base)


SAMPLERS = ["Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
            "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Restart", "DDIM", "PLMS", "UniPC", "LCM",
            "DPM fast", "DPM adaptive"]


SCHEDULES = ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
             "Simple", "Normal", "DDIM", "Beta"]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("++", "pp")).strip("-")


CASES: dict[str, Callable[[], GenerationRequest]] = {
    # every sampler with its automatic schedule (the default Euler a/Euler/LMS/Heun: Uniform; DPM++: Karras...)
    **{f"sampler-{slug(name)}": (lambda name=name: txt(sampler_name=name, steps=4)) for name in SAMPLERS},
    # the SDE samplers' older per-step noise, kept behind the sde_noise setting (these are the images the
    # sampler-<sde> cases made before the Brownian tree became the default)
    **{f"sampler-{slug(name)}-per-step": (lambda name=name: txt(sampler_name=name, steps=4,
                                                                override_settings={"sde_noise": "Per-step"}))
       for name in ("DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE")},
    # schedules
    **{f"schedule-euler-{slug(label)}": (lambda label=label: txt(sampler_name="Euler", scheduler=label, steps=4))
       for label in SCHEDULES},
    "schedule-euler-a-exponential": lambda: txt(sampler_name="Euler a", scheduler="Exponential", steps=4),
    "schedule-dpmpp-2m-polyexponential": lambda: txt(sampler_name="DPM++ 2M", scheduler="Polyexponential", steps=4),
    "schedule-dpmpp-2m-uniform": lambda: txt(sampler_name="DPM++ 2M", scheduler="Uniform", steps=4),
    "schedule-heun-sgm-uniform": lambda: txt(sampler_name="Heun", scheduler="SGM Uniform", steps=4),
    "sampler-legacy-name-dpmpp-2m-karras": lambda: txt(sampler_name="DPM++ 2M Karras", steps=4),
    "sampler-params-eta-churn": lambda: txt(sampler_name="Euler", s_churn=2.0, s_noise=1.01),
    "sampler-euler-a-eta": lambda: txt(sampler_name="Euler a", eta=0.5),
    "ensd": lambda: txt(sampler_name="Euler a", override_settings={"eta_noise_seed_delta": 31337}),
    "rng-nv": lambda: txt(sampler_name="Euler a", override_settings={"randn_source": "NV"}),
    # prompt syntax
    "prompt-emphasis": lambda: txt(prompt="a (red:1.3) fox, ((snow)), [dark] forest, \\(literal\\)"),
    "prompt-scheduling": lambda: txt(
        prompt="[a cat:a (blue:1.4) dog on a log:2] [in a field:at night:0.5], [:sunset:4]", steps=6),
    "prompt-alternation": lambda: txt(prompt="a [cat|(blue:1.5) dog on a log|bird] portrait", steps=6),
    "prompt-and": lambda: txt(prompt="a cat :1.2 AND a dog :0.7 AND snow"),
    "prompt-break": lambda: txt(prompt="a cat in a hat BREAK a dog on a log"),
    "prompt-long-over-75-tokens": lambda: txt(prompt=", ".join(f"word{i}" for i in range(60))),
    "prompt-empty-negative": lambda: txt(prompt="a red fox", negative_prompt=""),
    "clip-skip-2": lambda: txt(override_settings={"CLIP_stop_at_last_layers": 2}),
    "style": lambda: txt(prompt="a cat", styles=["golden-style"]),
    # seeds and batches
    "variation-seed": lambda: txt(sampler_name="Euler a", seed=100, subseed=200, subseed_strength=0.4),
    "seed-resize-from": lambda: txt(seed=100, width=64, height=96, seed_resize_from_w=64, seed_resize_from_h=64),
    "batch-size-2-n-iter-2": lambda: txt(sampler_name="Euler a", seed=7, batch_size=2, n_iter=2),
    "batch-size-2-variation": lambda: txt(sampler_name="DPM++ 2M", seed=7, batch_size=2, subseed=9,
                                          subseed_strength=0.3),
    "non-square-96x64": lambda: txt(width=96, height=64),
    # guidance
    "cfg-rescale": lambda: txt(cfg_rescale=0.7, cfg_scale=9),
    "cfg-interval": lambda: txt(cfg_interval_start=0.3, cfg_interval_end=0.9, steps=4),
    "cfg-1": lambda: txt(cfg_scale=1.0),
    # architectures
    "sdxl": lambda: txt(checkpoint=SDXL, sampler_name="DPM++ 2M"),
    "sdxl-96x64-clip-skip": lambda: txt(checkpoint=SDXL, width=96, height=64,
                                        override_settings={"CLIP_stop_at_last_layers": 2}),
    "sdxl-refiner-txt2img": lambda: txt(checkpoint=REFINER),
    "sdxl-refiner-img2img": lambda: i2i(checkpoint=REFINER, denoising_strength=0.3),
    "sd2-v-prediction": lambda: txt(checkpoint=SD2V, sampler_name="DPM++ 2M"),
    "sd1-inpainting-model-txt2img": lambda: txt(checkpoint=SD1_INPAINT),
    "sd1-inpainting-model-inpaint": lambda: inpaint(checkpoint=SD1_INPAINT),
    # hires fix
    "hires-latent": lambda: hires(hr_upscaler="Latent"),
    "hires-latent-bicubic-aa-resize-to": lambda: hires(hr_upscaler="Latent (bicubic antialiased)", hr_resize_x=96,
                                                       hr_resize_y=80),
    "hires-lanczos": lambda: hires(hr_upscaler="Lanczos"),
    "hires-esrgan-model": lambda: hires(hr_upscaler="4x-Tiny", hr_scale=2),
    "hires-sampler-and-prompt": lambda: hires(hr_prompt="a castle at night", hr_negative_prompt="daylight",
                                              hr_sampler_name="DPM++ 2M", hr_scheduler="Karras"),
    "hires-prompt-other-lora": lambda: hires(prompt="a castle <lora:style_a:1>",
                                             hr_prompt="a castle <lora:style_b:0.8>", sampler_name="Euler a"),
    "hires-sdxl": lambda: hires(checkpoint=SDXL, hr_upscaler="Nearest"),
    # img2img, inpainting, outpainting
    "img2img": lambda: i2i(),
    "img2img-resize-crop-strength-1": lambda: i2i(init_images=[picture(96, 64, seed=3)], resize_mode=1,
                                                  denoising_strength=1.0, sampler_name="Euler a"),
    "img2img-resize-fill-dpmpp-2m": lambda: i2i(init_images=[picture(96, 64, seed=3)], resize_mode=2,
                                                sampler_name="DPM++ 2M", batch_size=2),
    "inpaint-fill-0-fill": lambda: inpaint(inpainting_fill=0),
    "inpaint-fill-1-original": lambda: inpaint(inpainting_fill=1),
    "inpaint-fill-2-latent-noise": lambda: inpaint(inpainting_fill=2),
    "inpaint-fill-3-latent-nothing": lambda: inpaint(inpainting_fill=3),
    "inpaint-only-masked": lambda: inpaint(init_images=[picture(128, 96)], mask=box_mask((128, 96), (60, 40, 80, 60)),
                                           inpaint_full_res=True, inpaint_full_res_padding=8, mask_blur=2),
    "inpaint-invert-mask": lambda: inpaint(inpainting_mask_invert=1, mask_blur=0),
    "outpaint": lambda: i2i(outpaint_left=32, outpaint_down=16, mask_blur=2, denoising_strength=1.0,
                            inpainting_fill=0),
    "soft-inpaint": lambda: inpaint(mask_blur=3, steps=3, alwayson_scripts={"soft inpainting": {"args": [True]}}),
    "soft-inpaint-custom": lambda: inpaint(mask_blur=3, steps=3, alwayson_scripts={"soft inpainting": {"args": {
        "enabled": True, "schedule_bias": 2.0, "preservation_strength": 0.8, "mask_influence": 0.3}}}),
    # networks
    "lora-single": lambda: txt(prompt="a cat <lora:style_a:0.8>"),
    "lora-te-unet-weights": lambda: txt(prompt="a cat <lora:style_a:0.5:1.2>"),
    "lora-merge": lambda: txt(prompt="a cat <lora:style_a:1> <lora:style_b:1>", lora_composition="Merge", steps=4),
    "lora-switch": lambda: txt(prompt="a cat <lora:style_a:1> <lora:style_b:1>", lora_composition="Switch",
                               lora_switch_steps=1, steps=4),
    "lora-composite": lambda: txt(prompt="a cat <lora:style_a:1> <lora:style_b:1>", lora_composition="Composite",
                                  steps=4),
    "lora-sdxl": lambda: txt(prompt="a cat <lora:xl_style:1>", checkpoint=SDXL),
    "embedding": lambda: txt(prompt="a photo of goldentoken, portrait"),
    "embedding-negative": lambda: txt(prompt="a photo of a dog", negative_prompt="goldentoken"),
    # ControlNet and IP-Adapter
    "controlnet-canny": lambda: txt(prompt="a ball", steps=4, seed=3,
                                    alwayson_scripts={"controlnet": {"args": [cn_unit()]}}),
    "controlnet-two-units-range": lambda: txt(prompt="a ball", steps=4, seed=3, alwayson_scripts={"controlnet": {
        "args": [cn_unit(guidance_end=0.5), cn_unit(model="control_depth_tiny", module="invert", weight=0.7,
                                                    control_mode="ControlNet is more important")]}}),
    "controlnet-hires": lambda: hires(prompt="a ball", seed=3, alwayson_scripts={"controlnet": {"args": [cn_unit()]}}),
    "ip-adapter": lambda: txt(prompt="a ball", seed=5, alwayson_scripts={"controlnet": {"args": [ip_unit()]}}),
    "ip-adapter-sdxl": lambda: txt(prompt="a ball", seed=5, checkpoint=SDXL, alwayson_scripts={"controlnet": {
        "args": [ip_unit(model="ip-adapter_tiny_sdxl", module="ip-adapter_clip_g", weight=0.8)]}}),
    # identity (SDXL)
    "identity-instantid": lambda: identity({"method": "InstantID", "images": [one_face()], "adapter_strength": 0.8,
                                            "identitynet_strength": 0.8}),
    "identity-photomaker-v1": lambda: identity({"method": "PhotoMaker v1", "images": [one_face()], "style_strength": 20,
                                                "lora_weight": 1.0}, prompt="a photo of a man img, portrait"),
    "identity-photomaker-v2": lambda: identity({"method": "PhotoMaker v2", "images": [one_face()], "style_strength": 20,
                                                "lora_weight": 0.8}, prompt="a photo of a man img, portrait"),
}


# ---- the app ---------------------------------------------------------------------------------------


CHECKPOINTS = {  # conftest's tiny checkpoints (same architectures and seeds), written here with one thread
    SD1: (Architecture("sd1"), 7), SDXL: (Architecture("sdxl"), 7), SD2V: (Architecture("sd2", "v_prediction"), 3),
    REFINER: (Architecture("sdxl-refiner"), 3), SD1_INPAINT: (Architecture("sd1", inpainting=True), 3),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app for every case, with every checkpoint and adapter file written into its folders once."""
    from safetensors.torch import save_file

    from identity_helpers import write_insightface_pack, write_instantid, write_photomaker
    from upscale_helpers import tiny_models
    from webui.core.styles import PromptStyle
    from webui.features.controlnet.models import write_controlnet
    from webui.features.ip_adapter import write_test_adapter, write_test_encoder
    from webui.features.lora_writer import write_lora

    # CPU kernels split their sums by the thread count, so 1 and 2 threads round differently: a pixel here
    # and there, and the tiny checkpoints' bytes (their calibration runs the UNet; the hash is in the
    # infotext). Everything here, checkpoints included, runs with one intra-op thread on any machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("golden")
    for name, (architecture, seed) in CHECKPOINTS.items():
        write_single_file(root / "checkpoints" / name, architecture, seed=seed)
    app = build(AppOptions(models_dir=root / "models", ckpt_dirs=[root / "checkpoints"], outputs_dir=root / "outputs",
                           data_dir=root / "data", device="cpu"))
    models = app.paths.model_dir
    # the manager keeps one checkpoint loaded: write everything for SD 1.x, then everything for SDXL
    sd1 = app.models.get(SD1)
    write_lora(models("lora") / "style_a.safetensors", sd1, seed=1, alpha=2.0)
    write_lora(models("lora") / "style_b.safetensors", sd1, seed=2, alpha=4.0)
    write_controlnet(models("controlnet") / "control_canny_tiny.safetensors", sd1.unet, "original", seed=1)
    write_controlnet(models("controlnet") / "control_depth_tiny.safetensors", sd1.unet, "diffusers", seed=2)
    write_test_adapter(models("ipadapter") / "ip-adapter_tiny_sd15.safetensors", sd1.unet, embedding_width=24, seed=1)
    sdxl = app.models.get(SDXL)
    write_lora(models("lora") / "xl_style.safetensors", sdxl, seed=3, alpha=4.0)
    write_test_adapter(models("ipadapter") / "ip-adapter_tiny_sdxl.safetensors", sdxl.unet, embedding_width=24, seed=2)
    write_instantid(models("instantid"), sdxl.unet, seed=3, adapter_format="safetensors")
    write_photomaker(models("photomaker") / "photomaker-v1.safetensors", sdxl.unet, version=1, seed=4)
    write_photomaker(models("photomaker") / "photomaker-v2.safetensors", sdxl.unet, version=2, seed=5)
    write_test_encoder(models("clip_vision") / "tiny_vit.safetensors", projection_dim=24)
    write_insightface_pack(models("insightface") / "antelopev2")
    save_file({"emb_params": torch.randn(3, 32, generator=torch.Generator().manual_seed(1))},
              str(models("embedding") / "goldentoken.safetensors"))
    tiny_models(app.paths.models_dir)  # models/ESRGAN/4x-Tiny, 2x-TinyCompact
    app.engine.styles.save(PromptStyle("golden-style", "oil painting of {prompt}, warm light", "photo"))
    yield app
    app.close()
    torch.set_num_threads(threads)


# ---- comparison ------------------------------------------------------------------------------------


def normalise(infotext: str) -> str:
    return re.sub(r"Version: Easel [^,\n]*", "Version: Easel", infotext)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def read_infotexts() -> dict[str, list[str]]:
    return json.loads(INFOTEXTS.read_text()) if INFOTEXTS.exists() else {}


def write_infotexts(data: dict[str, list[str]]) -> None:
    GOLDEN.mkdir(exist_ok=True)
    INFOTEXTS.write_text(json.dumps(dict(sorted(data.items())), indent=1, ensure_ascii=False) + "\n")


def image_files(case: str) -> list[Path]:
    """<case>-0.png, <case>-1.png, ... in order (not those of a case whose name starts with this one's)."""
    files = [p for p in GOLDEN.glob(f"{case}-*.png") if re.fullmatch(re.escape(case) + r"-\d+", p.stem)]
    return sorted(files, key=lambda p: int(p.stem.rsplit("-", 1)[1]))


def update(case: str, images: list[Image.Image], infotexts: list[str]) -> None:
    GOLDEN.mkdir(exist_ok=True)
    for old in image_files(case):
        old.unlink()
    for i, image in enumerate(images):
        image.save(GOLDEN / f"{case}-{i}.png", format="PNG", optimize=True)
    data = read_infotexts()
    data[case] = infotexts
    write_infotexts(data)


@pytest.mark.parametrize("case", list(CASES))
def test_golden(app, case):
    result = app.generate(CASES[case]())
    infotexts = [normalise(t) for t in result.infotexts]
    if UPDATE:
        update(case, result.images, infotexts)
        return
    files = image_files(case)
    assert files, f"{case}: no golden images in {GOLDEN} (capture them with EASEL_UPDATE_GOLDEN=1)"
    expected_infotexts = read_infotexts().get(case)
    assert expected_infotexts is not None, f"{case}: no entry in {INFOTEXTS} (capture with EASEL_UPDATE_GOLDEN=1)"
    assert len(result.images) == len(files), f"{case}: {len(result.images)} images, golden has {len(files)}"
    problems = []
    for i, (image, path) in enumerate(zip(result.images, files)):
        with Image.open(path) as stored:
            stored.load()
            golden_mode, golden = stored.mode, np.asarray(stored)
        got = np.asarray(image)
        if image.mode != golden_mode or got.shape != golden.shape:
            problems.append(f"image {i}: {image.mode} {got.shape}, golden {golden_mode} {golden.shape}")
        elif not np.array_equal(got, golden):
            diff = np.abs(got.astype(np.int16) - golden.astype(np.int16))
            if diff.max() <= 1 and (diff > 0).sum() <= max(1, diff.size // 1000):
                continue  # a rounding step in kernels picked by CPU family (module docstring: Determinism)
            problems.append(f"image {i}: max abs difference {int(diff.max())}, {int((diff > 0).sum())} values "
                            f"differ, PSNR {psnr(got, golden):.2f} dB")
    assert not problems, f"{case}: pixels differ from {GOLDEN.name}/{case}-*.png: " + "; ".join(problems)
    assert infotexts == expected_infotexts, f"{case}: infotexts differ from the golden ones"


def test_golden_folder_holds_exactly_the_cases():
    """No golden files for cases that no longer exist (they would hide a renamed case); updating prunes them."""
    names = set(CASES)
    stray_images = [p for p in GOLDEN.glob("*.png") if p.stem.rsplit("-", 1)[0] not in names]
    stray_infotexts = sorted(set(read_infotexts()) - names)
    if UPDATE:
        for path in stray_images:
            path.unlink()
        if stray_infotexts:
            write_infotexts({k: v for k, v in read_infotexts().items() if k in names})
        return
    assert not stray_images and not stray_infotexts, (
        f"golden data for cases not in CASES (rerun with EASEL_UPDATE_GOLDEN=1 to prune): images "
        f"{sorted(p.name for p in stray_images)}, infotexts {stray_infotexts}")


# a case, and switches of features that are off (or have nothing to do) sent with it: the case's golden output
SWITCHED_OFF = {
    "batch-size-2-n-iter-2": dict(restore_faces=False, tiling=False,
                                  alwayson_scripts={"dynamic prompts v2.17.1": {"args": [False, True, 1]}}),
    "hires-sampler-and-prompt": dict(alwayson_scripts={"dynamic prompts v2.17.1": {"args": [True]}}),  # no syntax
    "inpaint-only-masked": dict(restore_faces=False, tiling=False),
}


@pytest.mark.parametrize("case", list(SWITCHED_OFF))
def test_switched_off_features_keep_the_golden_output(app, case):
    from dataclasses import replace

    result = app.generate(replace(CASES[case](), **SWITCHED_OFF[case]))
    files = image_files(case)
    assert len(result.images) == len(files)
    for image, path in zip(result.images, files):
        with Image.open(path) as stored:
            assert np.array_equal(np.asarray(image), np.asarray(stored)), f"{case}: {path.name} differs"
    assert [normalise(t) for t in result.infotexts] == read_infotexts()[case]
