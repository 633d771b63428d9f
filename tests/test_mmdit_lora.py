"""LoRAs for SD 3 / 3.5 and Z-Image in their published layouts: each changes the picture and gives what diffusers
gives (its own load_lora_weights, or for SD 3's kohya layout, which diffusers does not read, the LoRA merged into
Stability's weights and read back with diffusers' own checkpoint conversion); Switch and Composite run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from webui.app import AppOptions, build
from webui.core.request import GenerationRequest
from webui.core.seeds import ImageRNG
from webui.model_manager.tiny_sd3 import write_sd3_folder
from webui.model_manager.tiny_zimage import write_zimage_folder

PROMPT = "a cat on a red chair"
RANK = 4


def psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def pair(generator, rows: int, columns: int, scale: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) of a rank-4 LoRA for a (rows, columns) weight."""
    return (torch.randn(RANK, columns, generator=generator) * scale,
            torch.randn(rows, RANK, generator=generator) * scale)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdit-lora")
    write_sd3_folder(root / "ckpt" / "tiny-sd35-medium", "sd35-medium", seed=3)
    write_zimage_folder(root / "ckpt" / "tiny-zimage-turbo", seed=1)
    return root


@pytest.fixture(scope="module")
def app(root):
    app = build(AppOptions(models_dir=root / "models", ckpt_dirs=[root / "ckpt"], outputs_dir=root / "out",
                           data_dir=root / "data", device="cpu"))
    yield app
    app.close()


def noise(app, seed=5):
    return ImageRNG((16, 8, 8), [seed], torch.device("cpu"), source=app.settings.get("randn_source")).first()


# ---- SD 3 ---------------------------------------------------------------------------------------------------------

SD3_BASE = dict(negative_prompt="blurry", steps=3, width=64, height=64, seed=5, sampler_name="Euler",
                scheduler="Automatic", cfg_scale=4.0, checkpoint="tiny-sd35-medium", save_images=False)


def sd3(app, prompt: str, **kw):
    return app.txt2img(GenerationRequest(**{**SD3_BASE, "prompt": prompt, **kw}))


def sd3_pipe(root):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(root / "ckpt" / "tiny-sd35-medium"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd3_reference(app, pipe):
    return pipe(prompt=PROMPT, negative_prompt="blurry", height=64, width=64, num_inference_steps=3,
                guidance_scale=4.0, latents=noise(app), max_sequence_length=77).images[0]  # T5 as A1111 reads it


def kohya_sd3_lora(generator) -> dict[str, torch.Tensor]:
    """Stability's module names as kohya saves them: fused qkv, the last context block's and the final layer's adaLN
    (whose halves diffusers swaps), a dual-attention qkv, an MLP, and CLIP-L (lora_te1_)."""
    width = 16  # the tiny transformer: 2 heads x 8
    modules = {"joint_blocks_0_x_block_attn_qkv": (3 * width, width),
               "joint_blocks_0_context_block_attn_qkv": (3 * width, width),
               "joint_blocks_0_x_block_attn2_qkv": (3 * width, width),
               "joint_blocks_0_x_block_attn_proj": (width, width),
               "joint_blocks_1_x_block_mlp_fc1": (4 * width, width),
               "joint_blocks_1_context_block_adaLN_modulation_1": (2 * width, width),
               "final_layer_adaLN_modulation_1": (2 * width, width)}
    tensors = {}
    for name, (rows, columns) in modules.items():
        down, up = pair(generator, rows, columns)
        tensors[f"lora_unet_{name}.lora_down.weight"], tensors[f"lora_unet_{name}.lora_up.weight"] = down, up
        tensors[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    down, up = pair(generator, 32, 32)
    tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = down
    tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = up
    return tensors


def merged_in_stabilitys_layout(pipe, tensors: dict[str, torch.Tensor]) -> None:
    """The kohya LoRA's meaning, independently of Easel: W += alpha/rank up @ down on Stability's weights, read back
    into the pipeline's transformer with diffusers' convert_sd3_transformer_checkpoint_to_diffusers."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from webui.families.sd3_layout import from_diffusers

    transformer = pipe.transformer
    state = from_diffusers(transformer.state_dict(), dict(transformer.config))
    names = {k.removesuffix(".weight").replace(".", "_"): k for k in state if k.endswith(".weight")}
    for key, down in tensors.items():
        if not (key.startswith("lora_unet_") and key.endswith(".lora_down.weight")):
            continue
        base = key.removesuffix(".lora_down.weight")
        up, alpha = tensors[base + ".lora_up.weight"], float(tensors[base + ".alpha"])
        target = names[base.removeprefix("lora_unet_")]
        state[target] = state[target] + alpha / RANK * up @ down
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    transformer.load_state_dict(converted, strict=True)
    q = pipe.text_encoder.text_model.encoder.layers[0].self_attn.q_proj
    prefix = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    with torch.no_grad():
        q.weight += tensors[prefix + ".lora_up.weight"] @ tensors[prefix + ".lora_down.weight"]


def test_sd3_loras_in_the_diffusers_kohya_and_comfyui_layouts(app, root):
    folder = app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(11)
    peft = {}
    for module, rows, columns in (("transformer_blocks.0.attn.to_q", 16, 16), ("transformer_blocks.0.attn.add_k_proj",
                                                                               16, 16),
                                  ("transformer_blocks.1.ff.net.2", 16, 64), ("transformer_blocks.1.norm1.linear",
                                                                              96, 16)):
        down, up = pair(generator, rows, columns)
        peft[f"transformer.{module}.lora_A.weight"], peft[f"transformer.{module}.lora_B.weight"] = down, up
    save_file(peft, str(folder / "sd3_peft.safetensors"))
    kohya = kohya_sd3_lora(generator)
    save_file(kohya, str(folder / "sd3_kohya.safetensors"))
    comfy = {k.replace("lora_unet_joint_blocks_0_x_block_attn_qkv", "diffusion_model.joint_blocks.0.x_block.attn.qkv")
             .replace("lora_unet_final_layer_adaLN_modulation_1", "diffusion_model.final_layer.adaLN_modulation.1"): v
             for k, v in kohya.items()}
    save_file(comfy, str(folder / "sd3_comfy.safetensors"))

    plain = sd3(app, PROMPT).images[0]
    with_peft = sd3(app, PROMPT + " <lora:sd3_peft:1>")
    with_kohya = sd3(app, PROMPT + " <lora:sd3_kohya:1>")
    with_comfy = sd3(app, PROMPT + " <lora:sd3_comfy:1>")
    for result in (with_peft, with_kohya):
        assert not any("LoRA" in w for w in result.warnings), result.warnings
        assert psnr(result.images[0], plain) < 35  # it changes the picture
    assert np.array_equal(np.asarray(with_comfy.images[0]), np.asarray(with_kohya.images[0]))

    pipe = sd3_pipe(root)
    pipe.load_lora_weights(str(folder / "sd3_peft.safetensors"))
    measured = psnr(with_peft.images[0], sd3_reference(app, pipe))
    print(f"SD 3 LoRA, diffusers layout: Easel vs StableDiffusion3Pipeline.load_lora_weights PSNR {measured:.1f} dB")
    assert measured >= 40
    pipe = sd3_pipe(root)
    merged_in_stabilitys_layout(pipe, kohya)
    measured = psnr(with_kohya.images[0], sd3_reference(app, pipe))
    print(f"SD 3 LoRA, kohya layout: Easel vs the LoRA merged into Stability's weights PSNR {measured:.1f} dB")
    assert measured >= 40

    two = PROMPT + " <lora:sd3_peft:1> <lora:sd3_kohya:1>"
    images = {mode: np.asarray(sd3(app, two, lora_composition=mode, lora_switch_steps=1).images[0], dtype=np.int16)
              for mode in ("Merge", "Switch", "Composite")}
    assert all(np.isfinite(image).all() and image.std() > 1 for image in images.values())
    assert np.abs(images["Merge"] - images["Switch"]).mean() > 0.5
    assert np.abs(images["Merge"] - images["Composite"]).mean() > 0.5
    assert np.array_equal(np.asarray(sd3(app, PROMPT).images[0]), np.asarray(plain))  # weights restored
    from webui.features.lora import target_map

    targets = target_map(app.models.get("tiny-sd35-medium"))  # kohya's T5 names (lora_te3_) find T5's layers
    assert targets["lora_te3_encoder_block_0_layer_0_SelfAttention_q"][0] == "text_encoder_3"
    assert targets["lora_transformer_transformer_blocks_0_attn_to_q"][0] == "unet"  # LyCORIS over diffusers names


def lycoris_sd3_lora(generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """kohya-named LoHa and LoKr modules on SD 3's fused qkv, a swapped adaLN and a plain projection, and what each
    means, from the LyCORIS formulas: LoHa (w1a w1b) * (w2a w2b) * alpha/rank, LoKr kron(w1, w2a w2b) * alpha/rank
    (no alpha: 1)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.4

    tensors, deltas = {}, {}
    for name, rows in (("joint_blocks_0_x_block_attn_qkv", 48), ("joint_blocks_1_context_block_adaLN_modulation_1", 32)):
        w1a, w1b, w2a, w2b = randn(rows, RANK), randn(RANK, 16), randn(rows, RANK), randn(RANK, 16)
        tensors.update({f"lora_unet_{name}.hada_w1_a": w1a, f"lora_unet_{name}.hada_w1_b": w1b,
                        f"lora_unet_{name}.hada_w2_a": w2a, f"lora_unet_{name}.hada_w2_b": w2b,
                        f"lora_unet_{name}.alpha": torch.tensor(2.0)})
        deltas[name] = (w1a @ w1b) * (w2a @ w2b) * 2.0 / RANK
    # LoKr on a qkv whose first factor's 4 rows do not split in three: (4 x 12 rows, 4 x 4 columns), w2 of rank 2
    w1, w2a, w2b = randn(4, 4), randn(12, 2), randn(2, 4)
    name = "joint_blocks_0_context_block_attn_qkv"
    tensors.update({f"lora_unet_{name}.lokr_w1": w1, f"lora_unet_{name}.lokr_w2_a": w2a,
                    f"lora_unet_{name}.lokr_w2_b": w2b, f"lora_unet_{name}.alpha": torch.tensor(1.0)})
    deltas[name] = torch.kron(w1, w2a @ w2b) * 1.0 / 2
    w1, w2 = randn(4, 4), randn(4, 4)
    name = "joint_blocks_0_x_block_attn_proj"
    tensors.update({f"lora_unet_{name}.lokr_w1": w1, f"lora_unet_{name}.lokr_w2": w2})
    deltas[name] = torch.kron(w1, w2)
    return tensors, deltas


def test_sd3_loha_and_lokr_on_fused_qkv_and_a_swapped_adaln(app, root):
    """kohya LoHa / LoKr files in Stability's names: a fused qkv's update is cut into q, k, v (and an adaLN's halves
    swapped) as for LoRA; the image is the update merged into Stability's weights and read back by diffusers."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from webui.families.sd3_layout import from_diffusers

    folder = app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    tensors, deltas = lycoris_sd3_lora(torch.Generator().manual_seed(12))
    save_file(tensors, str(folder / "sd3_lycoris.safetensors"))
    plain = sd3(app, PROMPT).images[0]
    result = sd3(app, PROMPT + " <lora:sd3_lycoris:0.8>")
    assert not any("LoRA" in w for w in result.warnings), result.warnings
    assert psnr(result.images[0], plain) < 35
    report = app.models.get("tiny-sd35-medium").patches["lora_patcher"].last_report
    assert report.matched == 2 * 3 + 1 + 1 and not report.unmatched  # two qkv (three each), the adaLN, the proj

    pipe = sd3_pipe(root)
    transformer = pipe.transformer
    state = from_diffusers(transformer.state_dict(), dict(transformer.config))
    names = {k.removesuffix(".weight").replace(".", "_"): k for k in state if k.endswith(".weight")}
    for name, delta in deltas.items():
        state[names[name]] = state[names[name]] + 0.8 * delta
    transformer.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(dict(state)), strict=True)
    measured = psnr(result.images[0], sd3_reference(app, pipe))
    print(f"SD 3 LoHa/LoKr, kohya layout: Easel vs the update merged into Stability's weights PSNR {measured:.1f} dB")
    assert measured >= 40
    assert np.array_equal(np.asarray(sd3(app, PROMPT).images[0]), np.asarray(plain))  # weights restored


# ---- Z-Image ------------------------------------------------------------------------------------------------------


def zimage_lora(generator, spelling: str) -> dict[str, torch.Tensor]:
    """The same LoRA as ai-toolkit (`diffusion_model.` + diffusers names, lora_A/B) or kohya / musubi-tuner
    (`lora_unet_` flattened, lora_down/up with alpha) save Z-Image LoRAs."""
    tensors = {}
    for module, rows, columns in (("layers.0.attention.to_q", 64, 64), ("layers.1.attention.to_out.0", 64, 64),
                                  ("noise_refiner.0.feed_forward.w1", 170, 64),
                                  ("layers.0.adaLN_modulation.0", 256, 64)):
        down, up = pair(generator, rows, columns, 0.2)
        if spelling == "ai-toolkit":
            tensors[f"diffusion_model.{module}.lora_A.weight"] = down
            tensors[f"diffusion_model.{module}.lora_B.weight"] = up
        else:
            flat = "lora_unet_" + module.replace(".", "_")
            tensors[f"{flat}.lora_down.weight"], tensors[f"{flat}.lora_up.weight"] = down, up
            tensors[f"{flat}.alpha"] = torch.tensor(8.0)
    return tensors


@pytest.mark.parametrize("spelling", ["ai-toolkit", "kohya"])
def test_zimage_loras_give_the_pipelines_load_lora_weights_image(app, root, spelling):
    from diffusers import ZImagePipeline

    folder = app.paths.model_dir("lora")
    folder.mkdir(parents=True, exist_ok=True)
    for each in ("ai-toolkit", "kohya"):
        save_file(zimage_lora(torch.Generator().manual_seed(5), each), str(folder / f"z_{each}.safetensors"))
    path = folder / f"z_{spelling}.safetensors"
    base = dict(negative_prompt="", steps=3, width=64, height=64, seed=5, sampler_name="Euler", scheduler="Automatic",
                cfg_scale=1.0, checkpoint="tiny-zimage-turbo", save_images=False)
    plain = app.txt2img(GenerationRequest(prompt=PROMPT, **base)).images[0]
    result = app.txt2img(GenerationRequest(prompt=f"{PROMPT} <lora:z_{spelling}:1>", **base))
    assert not any("LoRA" in w for w in result.warnings), result.warnings
    assert psnr(result.images[0], plain) < 35
    pipe = ZImagePipeline.from_pretrained(str(root / "ckpt" / "tiny-zimage-turbo"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path))
    reference = pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=0.0,
                     latents=noise(app)).images[0]
    measured = psnr(result.images[0], reference)
    print(f"Z-Image LoRA ({spelling}): Easel vs ZImagePipeline.load_lora_weights PSNR {measured:.1f} dB")
    assert measured >= 40
    if spelling == "kohya":  # and the modes that keep LoRAs apart run on Z-Image too
        two = f"{PROMPT} <lora:z_kohya:1> <lora:z_ai-toolkit:0.5>"
        for mode in ("Switch", "Composite"):
            mixed = app.txt2img(GenerationRequest(prompt=two, lora_composition=mode, **base))
            assert np.asarray(mixed.images[0]).std() > 1 and f"Lora composition: {mode}" in mixed.infotexts[0]


def test_xyz_plot_over_checkpoints_of_both_families(app):
    """X/Y/Z plot's Checkpoint axis switches between an SD 3.5 and a Z-Image checkpoint; each cell is that model's
    own image."""
    base = dict(prompt=PROMPT, negative_prompt="", width=64, height=64, seed=7, sampler_name="Euler",
                scheduler="Automatic", cfg_scale=1.0, checkpoint="tiny-sd35-medium", save_images=False)
    request = GenerationRequest(**base, steps=2, script_name="xyz_plot",
                                script_args={"x_type": "Checkpoint name", "x_values": "tiny-sd35-medium, tiny-zimage-turbo",
                                             "y_type": "Nothing", "y_values": "", "z_type": "Nothing",
                                             "z_values": "", "draw_legend": True, "include_cells": True})
    result = app.txt2img(request)
    cells = result.images[1:]
    assert len(cells) == 2
    for index, checkpoint in enumerate(("tiny-sd35-medium", "tiny-zimage-turbo")):
        single = app.txt2img(GenerationRequest(**{**base, "checkpoint": checkpoint, "steps": 2})).images[0]
        assert np.array_equal(np.asarray(cells[index]), np.asarray(single)), checkpoint
        assert f"Model: {checkpoint}" in result.infotexts[index + 1]
