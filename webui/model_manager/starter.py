"""The curated starter catalogue: models most people want first, each bound for its right folder.

Plain data, so the UI, the API and tests read the same list. Repository names and file
names are the ones published on the Hugging Face hub (or the project's own release page
where the hub has no copy). A sha256 appears only where the published file's hash could be
confirmed from a source; otherwise it is None and the download records the hash it computed.
Sizes are approximate and only for display.
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 1_000_000_000
MB = 1_000_000


@dataclass(frozen=True)
class StarterFile:
    """One file of a starter entry: where it comes from and where it lands (relative to the kind's folder)."""

    target: str                      # file name (may contain one sub-folder) inside the kind's folder
    repo: str = ""                   # Hugging Face repository id, or "" when `url` is set
    path: str = ""                   # path inside the repository
    revision: str = "main"
    url: str = ""                    # a direct URL, for files the hub does not host
    sha256: str | None = None
    size: int = 0                    # approximate bytes, for display
    unpack: bool = False             # a .zip whose contents go into the folder `target`


@dataclass(frozen=True)
class StarterModel:
    name: str                        # stable id used by the UI and the first-run button
    title: str
    kind: str                        # a key of paths.MODEL_FOLDERS
    files: tuple[StarterFile, ...]
    architecture: str = ""           # a family name (sd1, sdxl, flux-dev, zimage-turbo ...), or "" when it does not apply
    description: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _hub(target: str, repo: str, path: str, size: int, sha256: str | None = None) -> StarterFile:
    return StarterFile(target=target, repo=repo, path=path, size=size, sha256=sha256)


_ANNOTATOR_REPO = "lllyasviel/Annotators"
# every file the weight-based ControlNet preprocessors read (features/controlnet/preprocessors.py), except SAM
_ANNOTATOR_FILES = (
    ("ControlNetHED.pth", 29 * MB), ("table5_pidinet.pth", 3 * MB), ("sk_model.pth", 17 * MB),
    ("sk_model2.pth", 17 * MB), ("netG.pth", 218 * MB), ("mlsd_large_512_fp32.pth", 6 * MB),
    ("dpt_hybrid-midas-501f0c75.pt", 493 * MB), ("ZoeD_M12_N.pt", 1443 * MB), ("res101.pth", 531 * MB),
    ("latest_net_G.pth", 206 * MB), ("body_pose_model.pth", 209 * MB), ("hand_pose_model.pth", 147 * MB),
    ("facenet.pth", 154 * MB), ("scannet.pt", 292 * MB),
)

# What the loaders really do with each published pickle file (keep in step with them):
# identity files go through torch's weights-only unpickler without any opt-in
# (features/identity/weights.py); upscaler folders list .pth files only with --allow-pickle
# (features/upscalers/catalog.py).
WEIGHTS_ONLY_NOTE = (" Published as a pickle (.bin); Easel reads it with torch's weights-only loader (tensors only, "
                     "no code can run), so no extra flag is needed.")
PICKLE_NOTE = (" Published only as a pickle (.pth): the upscaler list shows it only when Easel is started with "
               "--allow-pickle (then read with the weights-only loader).")

_SD35 = "stabilityai/stable-diffusion-3.5-"
_GATED = (" Gated on the hub: accept the licence on the model's page and put an access token in Settings → "
          "Downloads.")

STARTERS: tuple[StarterModel, ...] = (
    StarterModel("sd15", "Stable Diffusion 1.5", "checkpoint", (
        _hub("v1-5-pruned-emaonly.safetensors", "stable-diffusion-v1-5/stable-diffusion-v1-5",
             "v1-5-pruned-emaonly.safetensors", 4_265_146_304,
             "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"),),
        "sd1", "The classic 512×512 base model; works with most LoRAs, embeddings and ControlNets."),
    StarterModel("sdxl-base", "SDXL 1.0 base", "checkpoint", (
        _hub("sd_xl_base_1.0.safetensors", "stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors",
             6_938_078_334, "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"),),
        "sdxl", "1024×1024 base model from Stability AI."),
    StarterModel("sdxl-refiner", "SDXL 1.0 refiner", "checkpoint", (
        _hub("sd_xl_refiner_1.0.safetensors", "stabilityai/stable-diffusion-xl-refiner-1.0",
             "sd_xl_refiner_1.0.safetensors", 6_075_981_930,
             "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f"),),
        "sdxl-refiner", "Finishing stage for SDXL base (the last steps of sampling)."),
    # Flux.1: the transformer alone (GGUF, kept quantized) or ComfyUI's fp8 all-in-one files, and the parts a
    # transformer-only file takes from models/text_encoder and models/VAE (hashes as published lists confirm them)
    StarterModel("flux1-schnell-q8", "Flux.1 schnell (GGUF Q8_0)", "checkpoint", (
        _hub("flux1-schnell-Q8_0.gguf", "city96/FLUX.1-schnell-gguf", "flux1-schnell-Q8_0.gguf", 12_687_821_728,
             "f6694941193b10148dbf1f0f498d4ccd3e9875c127fc53946213b68580c66f10"),),
        "flux-schnell", "Flux.1 schnell's transformer, quantized (4 steps, Apache 2.0). Needs the CLIP-L, T5-XXL "
                        "and Flux VAE entries."),
    StarterModel("flux1-dev-q8", "Flux.1 dev (GGUF Q8_0)", "checkpoint", (
        _hub("flux1-dev-Q8_0.gguf", "city96/FLUX.1-dev-gguf", "flux1-dev-Q8_0.gguf", 12_700 * MB),),
        "flux-dev", "Flux.1 dev's transformer, quantized (non-commercial licence). Needs the CLIP-L, T5-XXL "
                    "and Flux VAE entries."),
    StarterModel("flux1-schnell-fp8", "Flux.1 schnell fp8 (all in one)", "checkpoint", (
        _hub("flux1-schnell-fp8.safetensors", "Comfy-Org/flux1-schnell", "flux1-schnell-fp8.safetensors",
             17_200 * MB),),
        "flux-schnell", "ComfyUI's single file: fp8 transformer with CLIP-L, T5-XXL and the VAE inside."),
    StarterModel("flux1-dev-fp8", "Flux.1 dev fp8 (all in one)", "checkpoint", (
        _hub("flux1-dev-fp8.safetensors", "Comfy-Org/flux1-dev", "flux1-dev-fp8.safetensors", 17_200 * MB),),
        "flux-dev", "ComfyUI's single file: fp8 transformer with CLIP-L, T5-XXL and the VAE inside."),
    # text encoders and the VAE several families share: one entry per file, so two entries never write one path
    StarterModel("clip-l", "CLIP-L text encoder (Flux, SD 3)", "text_encoder", (
        _hub("clip_l.safetensors", "comfyanonymous/flux_text_encoders", "clip_l.safetensors", 246_144_152,
             "660c6f5b1abae9dc498ac2d21e1347d2abdb0cf6c0c0c8576cd796491d9a6cdd"),),
        "", "The CLIP-L encoder a Flux or SD 3 transformer-only file reads from models/text_encoder."),
    StarterModel("flux-text-encoders", "T5-XXL fp8 and T5 tokenizer (Flux, SD 3)", "text_encoder", (
        _hub("t5xxl_fp8_e4m3fn.safetensors", "comfyanonymous/flux_text_encoders", "t5xxl_fp8_e4m3fn.safetensors",
             4_893_934_904, "7d330da4816157540d6bb7838bf63a0f02f573fc48ca4d8de34bb0cbfd514f09"),
        *(_hub(f"t5_tokenizer/{name}", "black-forest-labs/FLUX.1-schnell", f"tokenizer_2/{name}", size)
          for name, size in (("tokenizer.json", 2_424_064), ("tokenizer_config.json", 20_817),
                             ("special_tokens_map.json", 2_543), ("spiece.model", 791_656)))),
        "", "The T5 encoder (fp8) and its tokenizer a Flux file reads from models/text_encoder; optional for SD 3."),
    StarterModel("flux-t5xxl-fp16", "T5-XXL fp16 (Flux, more precise)", "text_encoder", (
        _hub("t5xxl_fp16.safetensors", "comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors",
             9_790 * MB, "6e480b09fae049a72d2a8c5fbccb8d3e92febeb233bbe9dfe7256958a9167635"),),
        "", "The T5-XXL encoder in half precision (twice the memory of the fp8 one; Flux and SD 3). Its "
            "tokenizer comes with the T5-XXL fp8 entry."),
    StarterModel("flux-vae", "Flux VAE (ae)", "vae", (
        _hub("ae.safetensors", "black-forest-labs/FLUX.1-schnell", "ae.safetensors", 335_304_388,
             "afc8e28272cd15db3919bacdb6918ce9c1ed22e96cb12c4d5ed0fba823529e38"),),
        "", "The 16-channel autoencoder every Flux.1 and Z-Image model uses."),
    StarterModel("sd-turbo", "SD-Turbo", "checkpoint", (
        _hub("sd_turbo.safetensors", "stabilityai/sd-turbo", "sd_turbo.safetensors", 5_210 * MB),),
        "sd2", "Distilled SD 2.1: 512×512 in 1-4 steps at CFG 1."),
    StarterModel("sdxl-turbo", "SDXL-Turbo", "checkpoint", (
        _hub("sd_xl_turbo_1.0_fp16.safetensors", "stabilityai/sdxl-turbo", "sd_xl_turbo_1.0_fp16.safetensors",
             6_940 * MB),),
        "sdxl", "Distilled SDXL: 512×512 in 1-4 steps at CFG 1 (fp16 file)."),
    # Z-Image Turbo as ComfyUI's repackaged files: the transformer alone, then its text encoder (Qwen3-4B with
    # the tokenizer from Tongyi-MAI's folder) and VAE (Flux's ae) in models/text_encoder and models/VAE
    StarterModel("zimage-turbo", "Z-Image Turbo (transformer, bf16)", "checkpoint", (
        _hub("z_image_turbo_bf16.safetensors", "Comfy-Org/z_image_turbo",
             "split_files/diffusion_models/z_image_turbo_bf16.safetensors", 12_310 * MB),),
        "zimage-turbo", "6B distilled flow transformer: 1024×1024 in 8 steps at CFG 1. Needs the Qwen3-4B text "
                        "encoder below and the Flux VAE (ae) (about 21 GB in all; a GGUF transformer in models/Stable-diffusion "
                        "works too)."),
    StarterModel("zimage-text-encoder", "Qwen3-4B text encoder (Z-Image)", "text_encoder", (
        _hub("qwen_3_4b.safetensors", "Comfy-Org/z_image_turbo", "split_files/text_encoders/qwen_3_4b.safetensors",
             8_045 * MB),
        _hub("qwen_tokenizer/tokenizer.json", "Tongyi-MAI/Z-Image-Turbo", "tokenizer/tokenizer.json", 11 * MB),
        _hub("qwen_tokenizer/tokenizer_config.json", "Tongyi-MAI/Z-Image-Turbo", "tokenizer/tokenizer_config.json",
             10_000)),
        "zimage-turbo", "The prompt encoder Z-Image Turbo and base read (bf16), with its tokenizer."),
    # SD 3 / 3.5 (webui/families/sd3.py): gated repositories (accept the licence, put a token in Settings)
    StarterModel("sd35-medium", "SD 3.5 Medium", "checkpoint", (
        _hub("sd3.5_medium.safetensors", _SD35 + "medium", "sd3.5_medium.safetensors", 5_110 * MB),),
        "sd35-medium", "2.5B MMDiT with its VAE, 1024×1024; Euler, 40 steps, CFG 4.5, Skip Layer Guidance 7,8,9. "
                       "Needs the SD 3 text encoders (CLIP-L, CLIP-G; T5 optional)." + _GATED),
    StarterModel("sd35-large", "SD 3.5 Large", "checkpoint", (
        _hub("sd3.5_large.safetensors", _SD35 + "large", "sd3.5_large.safetensors", 16_460 * MB),),
        "sd35-large", "8B MMDiT with its VAE, 1024×1024; 28 steps, CFG 3.5. Needs the SD 3 text encoders." + _GATED),
    StarterModel("sd35-large-turbo", "SD 3.5 Large Turbo", "checkpoint", (
        _hub("sd3.5_large_turbo.safetensors", _SD35 + "large-turbo", "sd3.5_large_turbo.safetensors",
             16_460 * MB),),
        "sd35-large-turbo", "Large distilled to 4 steps at CFG 1 (the name keeps \"turbo\": that is how Easel "
                            "tells it from Large). Needs the SD 3 text encoders." + _GATED),
    StarterModel("sd3-text-encoders", "SD 3 CLIP-G text encoder", "text_encoder", (
        _hub("clip_g.safetensors", _SD35 + "large", "text_encoders/clip_g.safetensors", 1_390 * MB),),
        "sd3", "With the CLIP-L entry, the two CLIP encoders every SD 3 / 3.5 single file needs; with only these, "
               "SD 3 runs without T5 (as Stability allows, with weaker text following); the T5-XXL entries add "
               "it." + _GATED),
    StarterModel("lcm-lora-sd15", "LCM-LoRA for SD 1.5", "lora", (
        _hub("lcm-lora-sdv1-5.safetensors", "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors",
             135 * MB),),
        "sd1", "4-8 step sampling with the LCM sampler on any SD 1.5 model."),
    StarterModel("lcm-lora-sdxl", "LCM-LoRA for SDXL", "lora", (
        _hub("lcm-lora-sdxl.safetensors", "latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors",
             394 * MB),),
        "sdxl", "4-8 step sampling with the LCM sampler on any SDXL model."),
    StarterModel("controlnet-sd15-canny", "ControlNet canny (SD 1.5)", "controlnet", (
        _hub("control_v11p_sd15_canny_fp16.safetensors", "lllyasviel/control_v11p_sd15_canny",
             "diffusion_pytorch_model.fp16.safetensors", 723 * MB),),
        "sd1", "ControlNet 1.1 canny edges (fp16)."),
    StarterModel("controlnet-sd15-depth", "ControlNet depth (SD 1.5)", "controlnet", (
        _hub("control_v11f1p_sd15_depth_fp16.safetensors", "lllyasviel/control_v11f1p_sd15_depth",
             "diffusion_pytorch_model.fp16.safetensors", 723 * MB),),
        "sd1", "ControlNet 1.1 depth (fp16)."),
    StarterModel("controlnet-sd15-openpose", "ControlNet openpose (SD 1.5)", "controlnet", (
        _hub("control_v11p_sd15_openpose_fp16.safetensors", "lllyasviel/control_v11p_sd15_openpose",
             "diffusion_pytorch_model.fp16.safetensors", 723 * MB),),
        "sd1", "ControlNet 1.1 openpose (fp16)."),
    StarterModel("controlnet-sdxl-canny", "ControlNet canny (SDXL)", "controlnet", (
        _hub("controlnet-canny-sdxl-1.0_fp16.safetensors", "diffusers/controlnet-canny-sdxl-1.0",
             "diffusion_pytorch_model.fp16.safetensors", 2_500 * MB),),
        "sdxl", "SDXL canny ControlNet by diffusers (fp16)."),
    StarterModel("controlnet-sdxl-depth", "ControlNet depth (SDXL)", "controlnet", (
        _hub("controlnet-depth-sdxl-1.0_fp16.safetensors", "diffusers/controlnet-depth-sdxl-1.0",
             "diffusion_pytorch_model.fp16.safetensors", 2_500 * MB),),
        "sdxl", "SDXL depth ControlNet by diffusers (fp16)."),
    StarterModel("controlnet-sdxl-openpose", "ControlNet openpose (SDXL)", "controlnet", (
        _hub("OpenPoseXL2.safetensors", "thibaud/controlnet-openpose-sdxl-1.0", "OpenPoseXL2.safetensors",
             5_000 * MB),),
        "sdxl", "SDXL openpose ControlNet by thibaud."),
    # SD 3.5 Large's ControlNets (features/controlnet/sd3.py), Stability's single files as ComfyUI repackaged them
    *(StarterModel(f"controlnet-sd35-large-{kind}", f"ControlNet {kind} (SD 3.5 Large)", "controlnet", (
        _hub(f"sd3.5_large_controlnet_{kind}.safetensors", "Comfy-Org/stable-diffusion-3.5-controlnets_ComfyUI_repackaged",
             f"split_files/controlnet/sd3.5_large_controlnet_{kind}.safetensors", 8_650 * MB),),
        "sd35-large", f"Stability's {kind} ControlNet for SD 3.5 Large (Euler, about 60 steps, CFG 3.5 as Stability "
                      "recommends); the control map goes through the VAE.") for kind in ("canny", "depth", "blur")),
    StarterModel("ip-adapter-sd15", "IP-Adapter (SD 1.5)", "ipadapter", (
        _hub("ip-adapter_sd15.safetensors", "h94/IP-Adapter", "models/ip-adapter_sd15.safetensors", 44 * MB),),
        "sd1", "Image prompt adapter; needs the ViT-H image encoder below."),
    StarterModel("ip-adapter-sdxl", "IP-Adapter (SDXL, ViT-H)", "ipadapter", (
        _hub("ip-adapter_sdxl_vit-h.safetensors", "h94/IP-Adapter", "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
             698 * MB),),
        "sdxl", "Image prompt adapter for SDXL; uses the ViT-H image encoder below."),
    StarterModel("clip-vision-vit-h", "CLIP ViT-H image encoder", "clip_vision", (
        _hub("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "h94/IP-Adapter", "models/image_encoder/model.safetensors",
             2_530 * MB),),
        "", "The image encoder IP-Adapter (SD 1.5 and SDXL ViT-H) reads reference pictures with."),
    StarterModel("photomaker-v1", "PhotoMaker", "photomaker", (
        _hub("photomaker-v1.bin", "TencentARC/PhotoMaker", "photomaker-v1.bin", 934 * MB),),
        "sdxl", "Identity from a few photos, for SDXL." + WEIGHTS_ONLY_NOTE),
    StarterModel("photomaker-v2", "PhotoMaker V2", "photomaker", (
        _hub("photomaker-v2.bin", "TencentARC/PhotoMaker-V2", "photomaker-v2.bin", 1_840 * MB),),
        "sdxl", "PhotoMaker's second version (uses the insightface pack)." + WEIGHTS_ONLY_NOTE),
    StarterModel("instantid", "InstantID", "instantid", (
        _hub("ip-adapter.bin", "InstantX/InstantID", "ip-adapter.bin", 1_690 * MB),
        _hub("ControlNetModel/config.json", "InstantX/InstantID", "ControlNetModel/config.json", 2_000),
        _hub("ControlNetModel/diffusion_pytorch_model.safetensors", "InstantX/InstantID",
             "ControlNetModel/diffusion_pytorch_model.safetensors", 2_500 * MB)),
        "sdxl", "Identity from one photo, for SDXL: face adapter + IdentityNet (uses the insightface pack)."
                + WEIGHTS_ONLY_NOTE),
    StarterModel("insightface-antelopev2", "insightface antelopev2 pack", "insightface", (
        StarterFile(target="antelopev2", url="https://github.com/deepinsight/insightface/releases/download/v0.7/"
                    "antelopev2.zip", sha256="8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5",
                    size=361 * MB, unpack=True),),
        "", "Face detection and recognition models (ONNX) that PhotoMaker V2 and InstantID use; unpacked into "
            "insightface/antelopev2. Non-commercial research licence."),
    StarterModel("realesrgan-x4plus", "Real-ESRGAN 4x+", "realesrgan", (
        _hub("RealESRGAN_x4plus.pth", _ANNOTATOR_REPO, "RealESRGAN_x4plus.pth", 67_040_989),),
        "", "General-purpose 4× upscaler (listed as R-ESRGAN 4x+)." + PICKLE_NOTE),
    StarterModel("annotators", "ControlNet preprocessor annotators", "annotator",
                 tuple(_hub(name, _ANNOTATOR_REPO, name, size) for name, size in _ANNOTATOR_FILES),
                 "", "Weights for the HED, PiDiNet, lineart, MLSD, MiDaS, Zoe, LeReS, openpose and normal "
                     "preprocessors (read as tensors only)."),
    StarterModel("taesd", "TAESD live previews (SD 1.x/2.x)", "vae_approx", (
        _hub("taesd/config.json", "madebyollin/taesd", "config.json", 1_000),
        _hub("taesd/diffusion_pytorch_model.safetensors", "madebyollin/taesd", "diffusion_pytorch_model.safetensors",
             5 * MB)),
        "", "A tiny autoencoder: live previews that look like the final image (Settings: live_preview_method)."),
    StarterModel("taesdxl", "TAESDXL live previews (SDXL)", "vae_approx", (
        _hub("taesdxl/config.json", "madebyollin/taesdxl", "config.json", 1_000),
        _hub("taesdxl/diffusion_pytorch_model.safetensors", "madebyollin/taesdxl",
             "diffusion_pytorch_model.safetensors", 5 * MB)),
        "", "The same for SDXL's latent space."),
    StarterModel("taesd3", "TAESD3 live previews (SD 3 / 3.5)", "vae_approx", (
        _hub("taesd3/config.json", "madebyollin/taesd3", "config.json", 1_000),
        _hub("taesd3/diffusion_pytorch_model.safetensors", "madebyollin/taesd3",
             "diffusion_pytorch_model.safetensors", 5 * MB)),
        "", "The same for SD 3's 16-channel latent space."),
    StarterModel("taef1", "TAEF1 live previews (Flux.1, Z-Image)", "vae_approx", (
        _hub("taef1/config.json", "madebyollin/taef1", "config.json", 1_000),
        _hub("taef1/diffusion_pytorch_model.safetensors", "madebyollin/taef1",
             "diffusion_pytorch_model.safetensors", 5 * MB)),
        "", "The same for Flux.1's 16-channel latent space, which Z-Image shares."),
    StarterModel("annotator-sam", "Segment Anything annotator", "annotator", (
        _hub("sam_vit_h_4b8939.pth", _ANNOTATOR_REPO, "sam_vit_h_4b8939.pth", 2_560 * MB),),
        "", "Weights for the segmentation preprocessor."),
)

FIRST_RUN_STARTER = "sd15"


def starter(name: str) -> StarterModel:
    for item in STARTERS:
        if item.name == name:
            return item
    raise KeyError(name)
