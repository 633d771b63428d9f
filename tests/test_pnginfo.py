"""PNG Info: reading parameters written by Easel and by the other tools, and mapping them to fields."""
import json

from PIL import Image, PngImagePlugin

from webui.core.images import encode_image
from webui.pnginfo import infotext_to_fields, read_generation_info
from webui.core.request import GenerationRequest


def png_with(tmp_path, texts: dict[str, str]) -> Image.Image:
    meta = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        meta.add_text(key, value)
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=meta)
    return Image.open(path)


def test_our_txt2img_and_img2img_outputs_round_trip(easel, tmp_path):
    result = easel.txt2img(GenerationRequest(prompt="a fox, (snow:1.2)", negative_prompt="blurry", steps=3, width=64,
                                             height=64, seed=12, sampler_name="Euler a", checkpoint="tiny-sd1"))
    info = read_generation_info(Image.open(result.paths[0]))
    assert info.tool == "automatic1111"
    fields = infotext_to_fields(info.info)
    assert fields["prompt"] == "a fox, (snow:1.2)" and fields["negative_prompt"] == "blurry"
    assert (fields["steps"], fields["seed"], fields["sampler_name"], fields["width"]) == (3, 12, "Euler a", 64)
    again = easel.img2img(GenerationRequest(mode="img2img", init_images=[Image.open(result.paths[0])], prompt="x",
                                            steps=3, width=64, height=64, seed=1, denoising_strength=0.4,
                                            checkpoint="tiny-sd1"))
    assert infotext_to_fields(read_generation_info(Image.open(again.paths[0])).info)["denoising_strength"] == 0.4


def test_jpeg_exif_parameters(tmp_path):
    text = "a cat\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 3, Size: 512x768"
    path = tmp_path / "x.jpg"
    path.write_bytes(encode_image(Image.new("RGB", (8, 8)), "jpg", text))
    fields = infotext_to_fields(read_generation_info(Image.open(path)).info)
    assert fields["sampler_name"] == "DPM++ 2M" and fields["scheduler"] == "Karras"
    assert (fields["width"], fields["height"]) == (512, 768)


def test_comfyui_graph(tmp_path):
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m",
                                                   "scheduler": "karras", "denoise": 1, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
    }
    info = read_generation_info(png_with(tmp_path, {"prompt": json.dumps(graph), "workflow": "{}"}))
    assert info.tool == "comfyui"
    fields = infotext_to_fields(info.info)
    assert fields["prompt"] == "a lighthouse at dusk" and fields["negative_prompt"] == "ugly"
    assert (fields["seed"], fields["steps"], fields["cfg_scale"]) == (42, 25, 6.5)
    assert (fields["sampler_name"], fields["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (fields["width"], fields["height"]) == (512, 640)
    assert fields["checkpoint_hint"]["name"] == "dreamshaper_8"


def test_invokeai_metadata(tmp_path):
    meta = {"positive_prompt": "a cabin", "negative_prompt": "people", "seed": 7, "steps": 30, "cfg_scale": 7.5,
            "scheduler": "dpmpp_2m_k", "width": 768, "height": 512, "model": {"name": "juggernaut"}}
    fields = infotext_to_fields(read_generation_info(png_with(tmp_path, {"invokeai_metadata": json.dumps(meta)})).info)
    assert fields["prompt"] == "a cabin" and fields["negative_prompt"] == "people"
    assert (fields["sampler_name"], fields["scheduler"], fields["steps"]) == ("DPM++ 2M", "Karras", 30)
    assert (fields["width"], fields["height"], fields["seed"]) == (768, 512, 7)


def test_novelai_comment(tmp_path):
    comment = {"prompt": "1girl, scenery", "uc": "lowres", "steps": 28, "scale": 11, "seed": 99,
               "sampler": "k_euler_ancestral", "width": 832, "height": 1216}
    info = read_generation_info(png_with(tmp_path, {"Comment": json.dumps(comment), "Software": "NovelAI"}))
    fields = infotext_to_fields(info.info)
    assert info.tool == "novelai" and fields["sampler_name"] == "Euler a"
    assert (fields["prompt"], fields["negative_prompt"], fields["cfg_scale"]) == ("1girl, scenery", "lowres", 11.0)


def test_fooocus_scheme(tmp_path):
    data = {"prompt": "a car", "negative_prompt": "", "full_prompt": "a car, cinematic", "full_negative_prompt": "bad",
            "steps": 30, "guidance_scale": 4, "seed": 5, "resolution": "(1152, 896)", "sampler": "dpmpp_2m_sde_gpu",
            "scheduler": "karras", "base_model": "juggernautXL.safetensors", "fooocus_scheme": "fooocus"}
    info = read_generation_info(png_with(tmp_path, {"parameters": json.dumps(data)}))
    fields = infotext_to_fields(info.info)
    assert info.tool == "fooocus" and fields["prompt"] == "a car, cinematic" and fields["negative_prompt"] == "bad"
    assert (fields["width"], fields["height"], fields["steps"]) == (1152, 896, 30)


def test_hires_and_clip_skip_fields():
    from webui.core.infotext import parse_infotext

    text = ("p\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.55, "
            "Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (bicubic)")
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["enable_hr"] and fields["hr_scale"] == 2 and fields["hr_second_pass_steps"] == 10
    assert fields["hr_upscaler"] == "Latent (bicubic)" and fields["denoising_strength"] == 0.55
    assert fields["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert fields["override_settings"]["randn_source"] == "GPU"  # no RNG key: AUTOMATIC1111's default


def test_image_without_parameters(tmp_path):
    info = read_generation_info(png_with(tmp_path, {"Software": "GIMP"}))
    assert info.info is None and info.raw["Software"] == "GIMP"
