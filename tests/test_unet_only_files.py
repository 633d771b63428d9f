"""UNet-only files (ComfyUI's diffusion_models files, most published SD 1.5 / SDXL GGUF quantizations): the
UNet in the original layout without `model.diffusion_model.`, its text encoders and VAE taken from
models/text_encoder (clip_l, clip_g) and models/VAE, as Flux's transformer-only files are.

Real tiny checkpoints split into their parts on disk: the SDXL UNet-only file with its companions gives
the full checkpoint's image exactly; the SD 1.5 UNet GGUF keeps its layers quantized; without companions the
error names the files it looked for."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import make_easel
from webui.core.request import GenerationRequest
from webui.model_manager.convert import UNET_PREFIX
from webui.model_manager.errors import ModelLoadError
from webui.model_manager.gguf import write_gguf_checkpoint


def _bare_unet(checkpoint) -> dict:
    return {k[len(UNET_PREFIX):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(UNET_PREFIX)}


def _save(module, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt_dir):
    """Full tiny checkpoints beside UNet-only copies; the companions are written from the full models' parts."""
    root = tmp_path_factory.mktemp("unet-only")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for name in ("tiny-sd1", "tiny-sdxl"):
        for suffix in (".safetensors", ".json"):
            (ckpts / f"{name}{suffix}").write_bytes((tiny_ckpt_dir / f"{name}{suffix}").read_bytes())
    save_file(_bare_unet(ckpts / "tiny-sdxl.safetensors"), str(ckpts / "tiny-sdxl-unet.safetensors"))
    write_gguf_checkpoint(ckpts / "tiny-sd1-unet-Q8_0.gguf", _bare_unet(ckpts / "tiny-sd1.safetensors"), "Q8_0", "sd1",
                          convs=True)
    for name in ("tiny-sdxl-unet", "tiny-sd1-unet-Q8_0"):  # the tiny models' sizes (a real file needs none)
        (ckpts / f"{name}.json").write_text((tiny_ckpt_dir / f"{name.split('-unet')[0]}.json").read_text())
    easel = make_easel(root, ckpts)
    yield easel, root
    easel.close()


def _image(easel, checkpoint: str) -> np.ndarray:
    request = GenerationRequest(prompt="a lighthouse", negative_prompt="fog", steps=3, width=64, height=64, seed=5,
                                sampler_name="Euler", checkpoint=checkpoint, save_images=False)
    return np.asarray(easel.txt2img(request).images[0], dtype=np.float64)


def test_without_companions_the_error_names_what_it_looked_for(world):
    easel, _ = world
    with pytest.raises(ModelLoadError, match=r"no text encoder and none was found in .*clip_l\.safetensors"):
        easel.models.get("tiny-sdxl-unet.safetensors")


def test_a_published_size_unet_only_layout_is_told_by_its_context_width():
    """The published SD 1.5 and SDXL UNets (shapes only, no weights), without their prefix: detected as their
    family by the cross-attention width (the tiny files above need their sidecar for that); SD 2.x, which has
    no companion files, is still refused with its name."""
    from webui.bench_weights import checkpoint_shapes
    from webui.model_manager.detect import DetectionError, detect

    for family in ("sd1", "sdxl"):
        bare = {k[len(UNET_PREFIX):]: v for k, v in checkpoint_shapes(family).items() if k.startswith(UNET_PREFIX)}
        assert detect(bare).architecture.family == family
    sd2 = {k: (*v[:1], 1024) if k.endswith("attn2.to_k.weight") else v
           for k, v in {k[len(UNET_PREFIX):]: v for k, v in checkpoint_shapes("sd1").items()
                        if k.startswith(UNET_PREFIX)}.items()}
    with pytest.raises(DetectionError, match="SD 2.x UNet"):
        detect(sd2)


def test_an_sdxl_unet_only_file_with_its_companions_gives_the_full_checkpoints_image(world):
    easel, root = world
    full = easel.models.get("tiny-sdxl.safetensors")
    models = root / "models"
    _save(full.text_encoders["text_encoder"], models / "text_encoder" / "clip_l.safetensors")
    _save(full.text_encoders["text_encoder_2"], models / "text_encoder" / "clip_g.safetensors")
    _save(full.vae, models / "VAE" / "sdxl_vae.safetensors")
    expected = _image(easel, "tiny-sdxl.safetensors")
    got = _image(easel, "tiny-sdxl-unet.safetensors")
    model = easel.models.get("tiny-sdxl-unet.safetensors")
    assert model.architecture.family == "sdxl"
    assert {"text encoder from text_encoder/clip_l.safetensors", "text encoder 2 from text_encoder/clip_g.safetensors",
            "vae from VAE/sdxl_vae.safetensors"} <= set(model.notes)
    assert np.array_equal(expected, got)


def test_an_sd1_unet_gguf_keeps_its_layers_quantized(world):
    easel, root = world
    full = easel.models.get("tiny-sd1.safetensors")
    models = root / "models"
    _save(full.text_encoders["text_encoder"], models / "text_encoder" / "clip_l.safetensors")  # SD 1.5's CLIP-L
    _save(full.vae, models / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors")
    expected = _image(easel, "tiny-sd1.safetensors")
    got = _image(easel, "tiny-sd1-unet-Q8_0.gguf")
    model = easel.models.get("tiny-sd1-unet-Q8_0.gguf")
    assert any(note.startswith("GGUF kept quantized in memory") for note in model.notes), model.notes
    assert "vae from VAE/vae-ft-mse-840000-ema-pruned.safetensors" in model.notes
    psnr = 10 * np.log10(255 ** 2 / max(float(((expected - got) ** 2).mean()), 1e-12))
    assert 25 < psnr < 100, psnr  # quantized: close, not equal
