"""Tiny identity models for the tests: an insightface pack, PhotoMaker v1/v2 and InstantID files.

The insightface pack holds two ONNX graphs with the signatures insightface's model_zoo
routes on: an SCRFD-style detector (one input, 9 outputs: scores, boxes and 5 keypoints at
strides 8/16/32, two anchors per cell) and an ArcFace-style recognizer (112x112 in, 512 out).
The detector is hand-made, not random: it measures image detail (the grey image's deviation
from its local mean), and at stride 32 reports a face where the detail within 3x3 cells peaks
(a local maximum over 5x5 cells) above a threshold, with a box that grows with the detail
around it. So a photo gives faces, a flat card gives none, and a large textured patch gives a
larger box than a small one. Strides 8 and 16 always score zero. (The sample photos that ship
with insightface are partly greyscale, so colour could not be the cue.)

PhotoMaker and InstantID files are written in the published key layouts, sized for the tiny
SDXL checkpoint (cross-attention 64 = 32 + 32).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

STRIDES = (8, 16, 32)
ANCHORS = 2
# keypoint offsets from a cell centre, in units of the box half-size: eyes, nose, mouth corners
TEXTURE_THRESHOLD = 0.015
KPS = np.array([[-0.35, -0.3], [0.35, -0.3], [0.0, 0.05], [-0.3, 0.4], [0.3, 0.4]], dtype=np.float32)


def sample_images() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images"


def _tensor(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _detector_graph():
    from onnx import TensorProto, helper

    nodes, inits, outputs = [], [], {}
    inits.append(_tensor("zero", np.zeros(1)))
    for width in (1, 4, 10):
        inits.append(helper.make_tensor(f"shape_{width}", TensorProto.INT64, [2], [-1, width]))
    inits.append(_tensor("grey_w", np.full((1, 3, 1, 1), 1 / 3)))
    inits.append(_tensor("thresh", np.array([TEXTURE_THRESHOLD])))
    inits.append(_tensor("gain", np.array([60.0])))
    inits.append(_tensor("eps", np.array([1e-4])))
    inits.append(_tensor("sharp", np.array([1e4])))
    inits.append(_tensor("size_gain", np.array([20.0])))
    inits.append(_tensor("size_base", np.array([0.5])))
    inits.append(_tensor("kps_offsets", KPS.reshape(1, 10, 1, 1)))
    # texture: mean absolute deviation of the grey image from its 9x9 local mean
    nodes += [helper.make_node("Conv", ["input.1", "grey_w"], ["grey"]),
              helper.make_node("AveragePool", ["grey"], ["local"], kernel_shape=[9, 9], pads=[4, 4, 4, 4]),
              helper.make_node("Sub", ["grey", "local"], ["detail"]),
              helper.make_node("Abs", ["detail"], ["texture"])]
    for s in STRIDES:
        nodes.append(helper.make_node("AveragePool", ["texture"], [f"cell{s}"], kernel_shape=[s, s], strides=[s, s]))
        nodes.append(helper.make_node("AveragePool", [f"cell{s}"], [f"area{s}"], kernel_shape=[5, 5],
                                      pads=[2, 2, 2, 2]))
        if s == 32:  # a face where the textured area peaks (local maximum over 5x5 cells)
            nodes += [helper.make_node("MaxPool", [f"area{s}"], [f"max{s}"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
                      helper.make_node("Sub", [f"area{s}", f"max{s}"], [f"below{s}"]),
                      helper.make_node("Add", [f"below{s}", "eps"], [f"margin{s}"]),
                      helper.make_node("Mul", [f"margin{s}", "sharp"], [f"peaklogit{s}"]),
                      helper.make_node("Sigmoid", [f"peaklogit{s}"], [f"peak{s}"]),
                      helper.make_node("Sub", [f"area{s}", "thresh"], [f"centred{s}"]),
                      helper.make_node("Mul", [f"centred{s}", "gain"], [f"logit{s}"]),
                      helper.make_node("Sigmoid", [f"logit{s}"], [f"strong{s}"]),
                      helper.make_node("Mul", [f"strong{s}", f"peak{s}"], [f"score{s}"])]
        else:
            nodes.append(helper.make_node("Mul", [f"area{s}", "zero"], [f"score{s}"]))
        # box half-size (in strides) grows with the surrounding texture
        nodes.append(helper.make_node("Mul", [f"area{s}", "size_gain"], [f"grow{s}"]))
        nodes.append(helper.make_node("Add", [f"grow{s}", "size_base"], [f"half{s}"]))
        nodes.append(helper.make_node("Mul", [f"half{s}", "kps_offsets"], [f"kpsmap{s}"]))
        for kind, source, width in (("score", f"score{s}", 1), ("bbox", f"half{s}", 4), ("kps", f"kpsmap{s}", 10)):
            channels = [source] * (ANCHORS * (4 if kind == "bbox" else 1))
            nodes.append(helper.make_node("Concat", channels, [f"{kind}cat{s}"], axis=1))
            nodes.append(helper.make_node("Transpose", [f"{kind}cat{s}"], [f"{kind}t{s}"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [f"{kind}t{s}", f"shape_{width}"], [f"{kind}_{s}"]))
            outputs[f"{kind}_{s}"] = width
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", outputs[name]]) for name in order]
    graph = helper.make_graph(nodes, "tiny_scrfd", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _recognizer_graph(seed: int = 0):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_tensor("conv_w", rng.normal(0, 0.3, (8, 3, 8, 8))), _tensor("conv_b", np.zeros(8)),
             _tensor("fc_w", rng.normal(0, 1.0, (512, 8))), _tensor("fc_b", np.zeros(512))]
    nodes = [helper.make_node("Conv", ["input.1", "conv_w", "conv_b"], ["c1"], strides=[8, 8], name="conv0"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu0"),
             helper.make_node("GlobalAveragePool", ["r1"], ["g1"], name="pool0"),
             helper.make_node("Flatten", ["g1"], ["f1"], name="flatten0"),
             helper.make_node("Gemm", ["f1", "fc_w", "fc_b"], ["683"], transB=1, name="fc0")]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])]
    graph = helper.make_graph(nodes, "tiny_arcface", inputs, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_insightface_pack(folder: Path) -> Path:
    """A pack folder like antelopev2 (scrfd_10g_bnkps.onnx + glintr100.onnx), tiny."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_detector_graph(), str(folder / "scrfd_10g_bnkps.onnx"))
    onnx.save(_recognizer_graph(), str(folder / "glintr100.onnx"))
    return folder


# ---- InstantID -----------------------------------------------------------------------------------


def _resampler(prefix: str, dim: int, embedding_dim: int, output_dim: int, queries: int, depth: int,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """IP-Adapter "plus" Resampler keys (InstantID's image_proj), 64-wide heads."""
    r = lambda *shape: torch.randn(*shape, generator=generator) * 0.2  # noqa: E731
    t = {f"{prefix}latents": r(1, queries, dim), f"{prefix}proj_in.weight": r(dim, embedding_dim),
         f"{prefix}proj_in.bias": torch.zeros(dim), f"{prefix}proj_out.weight": r(output_dim, dim),
         f"{prefix}proj_out.bias": torch.zeros(output_dim), f"{prefix}norm_out.weight": torch.ones(output_dim),
         f"{prefix}norm_out.bias": torch.zeros(output_dim)}
    inner = dim  # heads * 64
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        t.update({p + "0.norm1.weight": torch.ones(dim), p + "0.norm1.bias": torch.zeros(dim),
                  p + "0.norm2.weight": torch.ones(dim), p + "0.norm2.bias": torch.zeros(dim),
                  p + "0.to_q.weight": r(inner, dim), p + "0.to_kv.weight": r(2 * inner, dim),
                  p + "0.to_out.weight": r(dim, inner),
                  p + "1.0.weight": torch.ones(dim), p + "1.0.bias": torch.zeros(dim),
                  p + "1.1.weight": r(4 * dim, dim), p + "1.3.weight": r(dim, 4 * dim)})
    return t


def write_instantid(folder: Path, unet, seed: int = 0, adapter_format: str = "bin") -> Path:
    """models/instantid/: ip-adapter.bin (or .safetensors) + ControlNetModel/ (diffusers folder)."""
    from diffusers import ControlNetModel

    from webui.features.ip_adapter import write_test_adapter

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    scratch = folder / "_scratch.safetensors"
    write_test_adapter(scratch, unet, 512, seed=seed)  # for the published to_k_ip/to_v_ip numbering
    from safetensors.torch import load_file, save_file

    ip = {k.removeprefix("ip_adapter."): v for k, v in load_file(str(scratch)).items() if k.startswith("ip_adapter.")}
    scratch.unlink()
    proj = _resampler("", 64, 512, cross, 16, 4, generator)
    if adapter_format == "bin":
        torch.save({"image_proj": proj, "ip_adapter": ip}, folder / "ip-adapter.bin")
    else:
        flat = {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in ip.items()}}
        save_file({k: v.contiguous() for k, v in flat.items()}, str(folder / "ip-adapter.safetensors"))
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    with torch.no_grad():  # zero convs start at zero in training; give them signal so the effect is visible
        for module in list(net.controlnet_down_blocks) + [net.controlnet_mid_block,
                                                          net.controlnet_cond_embedding.conv_out]:
            module.weight.normal_(0, 0.2, generator=generator)
    net.save_pretrained(str(folder / "ControlNetModel"))
    return folder


# ---- PhotoMaker --------------------------------------------------------------------------------------

VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 1,
          "patch_size": 14, "image_size": 56, "projection_dim": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def _mlp(prefix: str, in_dim: int, hidden: int, out: int, r) -> dict[str, torch.Tensor]:
    return {f"{prefix}layernorm.weight": torch.ones(in_dim), f"{prefix}layernorm.bias": torch.zeros(in_dim),
            f"{prefix}fc1.weight": r(hidden, in_dim), f"{prefix}fc1.bias": torch.zeros(hidden),
            f"{prefix}fc2.weight": r(out, hidden), f"{prefix}fc2.bias": torch.zeros(out)}


def _lora_weights(unet, rank: int, r) -> dict[str, torch.Tensor]:
    """The attention-processor LoRA keys PhotoMaker ships (`unet.<block>.processor.to_k_lora.down.weight`)."""
    out = {}
    for name, module in unet.named_modules():
        if not (name.endswith("attn1") or name.endswith("attn2")):
            continue
        for proj, ours in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out", "to_out.0")):
            layer = module.get_submodule(ours)
            base = f"unet.{name}.processor.{proj}_lora"
            out[f"{base}.down.weight"] = r(rank, layer.in_features)
            out[f"{base}.up.weight"] = r(layer.out_features, rank)
    return out


def write_photomaker(path: Path, unet, version: int = 1, seed: int = 0) -> Path:
    """photomaker-v1.bin / photomaker-v2.bin layout: {"id_encoder": {...}, "lora_weights": {...}}."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    generator = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=generator) * 0.2  # noqa: E731
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))
    cross = unet.config.cross_attention_dim
    hidden = VISION["hidden_size"]
    encoder = {k: v for k, v in vision.state_dict().items() if not k.endswith("position_ids")}
    encoder = {(k if k.startswith(("vision_model.", "visual_projection")) else "vision_model." + k): v
               for k, v in encoder.items()}
    encoder["visual_projection_2.weight"] = r(cross - VISION["projection_dim"], hidden)
    encoder.update(_mlp("fuse_module.mlp1.", 2 * cross, cross, cross, r))
    encoder.update(_mlp("fuse_module.mlp2.", cross, cross, cross, r))
    encoder["fuse_module.layer_norm.weight"] = torch.ones(cross)
    encoder["fuse_module.layer_norm.bias"] = torch.zeros(cross)
    if version == 2:
        p = "qformer_perceiver."
        tokens = 2
        encoder.update({p + "token_proj.0.weight": r(512 * 4, 512), p + "token_proj.0.bias": torch.zeros(512 * 4),
                        p + "token_proj.2.weight": r(cross * tokens, 512 * 4),
                        p + "token_proj.2.bias": torch.zeros(cross * tokens),
                        p + "token_norm.weight": torch.ones(cross), p + "token_norm.bias": torch.zeros(cross)})
        encoder.update(_perceiver(p + "perceiver_resampler.", cross, hidden, r))
    state = {"id_encoder": {k: v.contiguous() for k, v in encoder.items()}, "lora_weights": _lora_weights(unet, 4, r)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{group}.{k}": v.contiguous() for group, tensors in state.items() for k, v in tensors.items()},
                  str(path))
    else:
        torch.save(state, path)
    return path


def _perceiver(prefix: str, dim: int, embedding_dim: int, r, depth: int = 4) -> dict[str, torch.Tensor]:
    """FacePerceiverResampler keys (PhotoMaker v2's ID encoder), inner width = dim."""
    t = {f"{prefix}proj_in.weight": r(dim, embedding_dim), f"{prefix}proj_in.bias": torch.zeros(dim),
         f"{prefix}proj_out.weight": r(dim, dim), f"{prefix}proj_out.bias": torch.zeros(dim),
         f"{prefix}norm_out.weight": torch.ones(dim), f"{prefix}norm_out.bias": torch.zeros(dim)}
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        t.update({p + "0.norm1.weight": torch.ones(dim), p + "0.norm1.bias": torch.zeros(dim),
                  p + "0.norm2.weight": torch.ones(dim), p + "0.norm2.bias": torch.zeros(dim),
                  p + "0.to_q.weight": r(dim, dim), p + "0.to_kv.weight": r(2 * dim, dim),
                  p + "0.to_out.weight": r(dim, dim),
                  p + "1.0.weight": torch.ones(dim), p + "1.0.bias": torch.zeros(dim),
                  p + "1.1.weight": r(4 * dim, dim), p + "1.3.weight": r(dim, 4 * dim)})
    return t


def face_card(size: tuple[int, int] = (256, 256), faces: list[tuple[int, int, int]] = ()):
    """A grey picture with skin-coloured discs (cx, cy, radius): faces for the tiny detector."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for cx, cy, radius in faces:
        box = (cx - radius, int(cy - radius * 1.2), cx + radius, int(cy + radius * 1.2))
        draw.ellipse(box, fill=(224, 172, 140))
        for y in range(box[1], box[3], 6):  # stripes: the detail the tiny detector looks for
            draw.line((box[0], y, box[2], y), fill=(90, 60, 50), width=2)
    return image
