"""PhotoMaker v1 and v2 (Li et al. 2024): photos of a person stacked into the prompt's class word.

The prompt names a class word followed by the trigger word, `a man img ...`. The trigger is
removed and the class word repeated once per ID token (v1: one per photo; v2: two per photo);
each copy's text embedding is fused with that token's ID embedding (an MLP over the pair,
then a residual MLP and a layer norm). The ID encoder:
- v1: a CLIP ViT-L vision tower; its pooled output through `visual_projection` (to the first
  text encoder's width) and `visual_projection_2` (to the second's), concatenated;
- v2: the insightface face embedding through a token projection, refined by a perceiver
  resampler that attends to the vision tower's last hidden states (Q-Former style).
Modules are built from the file's shapes, so published files and the tests' tiny ones load
the same way. Before the style-strength step the prompt without the trigger is used, after
it the fused one. The file's `lora_weights` (UNet attention) are merged through the LoRA
patcher together with the request's own LoRAs, and restored by it like any LoRA.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...core.conditioning import CHUNK_TOKENS, Conditioning, PromptEncoder, StepConditioning, tokenize
from ...core.extra_networks import extract
from ...model_manager.hashing import legacy_short_hash
from ...model_manager.store import ModelStore
from ..ip_adapter import clip_pixels
from .args import TRIGGER, IdentityArgs
from .weights import IdentityFileError, read_groups


KIND = "photomaker"  # the model store's kind for a loaded encoder + LoRA


class PhotoMakerError(ValueError):
    user_facing = True


# ---- modules ------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, residual: bool):
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(nn.functional.gelu(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class FuseModule(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp1 = MLP(2 * dim, dim, dim, residual=False)
        self.mlp2 = MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, text: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """(tokens, dim) class-word embeddings fused with (tokens, dim) ID embeddings."""
        fused = self.mlp1(torch.cat([text, identity], dim=-1)) + text
        return self.layer_norm(self.mlp2(fused))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
        weights = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        return self.to_out((weights @ v).transpose(1, 2).reshape(b, n, -1))


def feed_forward(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, dim, bias=False))


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, embedding_dim: int, inner: int, heads: int, depth: int, ff_hidden: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, inner, heads), feed_forward(dim, ff_hidden)])
                                    for _ in range(depth))

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attention, ff in self.layers:
            latents = attention(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    def __init__(self, id_dim: int, hidden: int, dim: int, tokens: int, resampler: PerceiverResampler):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.token_proj = nn.Sequential(nn.Linear(id_dim, hidden), nn.GELU(), nn.Linear(hidden, dim * tokens))
        self.token_norm = nn.LayerNorm(dim)
        self.perceiver_resampler = resampler

    def forward(self, face: torch.Tensor, vision_hidden: torch.Tensor) -> torch.Tensor:
        x = self.token_norm(self.token_proj(face).reshape(-1, self.tokens, self.dim))
        return x + self.perceiver_resampler(x, vision_hidden)


class IDEncoder(nn.Module):
    """PhotoMaker's `id_encoder`, v1 or v2, sized from the file."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        hidden = tensors["vision_model.embeddings.class_embedding"].shape[0]
        patch = tensors["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        positions = tensors["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = len({k.split(".")[3] for k in tensors if k.startswith("vision_model.encoder.layers.")})
        config = CLIPVisionConfig(
            hidden_size=hidden, intermediate_size=tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64), patch_size=patch,
            image_size=patch * int(round(math.sqrt(positions - 1))), hidden_act="quick_gelu", layer_norm_eps=1e-5,
            projection_dim=tensors["visual_projection.weight"].shape[0])
        self.clip = CLIPVisionModelWithProjection(config)
        self.image_size = config.image_size
        second = tensors["visual_projection_2.weight"]
        self.visual_projection_2 = nn.Linear(second.shape[1], second.shape[0], bias=False)
        dim = tensors["fuse_module.layer_norm.weight"].shape[0]
        self.fuse_module = FuseModule(dim)
        self.version = 2 if "qformer_perceiver.token_proj.0.weight" in tensors else 1
        self.tokens = 1
        if self.version == 2:
            p = "qformer_perceiver."
            first, last = tensors[p + "token_proj.0.weight"], tensors[p + "token_proj.2.weight"]
            self.tokens = last.shape[0] // dim
            r = p + "perceiver_resampler."
            inner = tensors[r + "layers.0.0.to_q.weight"].shape[0]
            heads = max(1, inner // 128)  # the published resampler uses 128-wide heads
            depth = len({k.split(".")[3] for k in tensors if k.startswith(r + "layers.")})
            resampler = PerceiverResampler(dim, tensors[r + "proj_in.weight"].shape[1], inner, heads, depth,
                                           tensors[r + "layers.0.1.1.weight"].shape[0])
            self.qformer_perceiver = QFormerPerceiver(first.shape[1], first.shape[0], dim, self.tokens, resampler)
        own = {("clip." + k if k.startswith(("vision_model.", "visual_projection.")) else k): v
               for k, v in tensors.items() if not k.endswith("position_ids")}
        expected = {k for k in self.state_dict() if not k.endswith("position_ids")}
        missing = sorted(expected - set(own))
        if missing:
            raise IdentityFileError(f"PhotoMaker ID encoder: {len(missing)} tensors missing (first: {missing[0]})")
        self.load_state_dict({k: own[k] for k in expected}, strict=False)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def id_tokens(self, pixels: torch.Tensor, faces: torch.Tensor | None) -> torch.Tensor:
        """(photos * tokens, dim) ID embeddings, in photo order."""
        vision = self.clip.vision_model(pixel_values=pixels)
        if self.version == 1:
            pooled = vision.pooler_output
            out = torch.cat([self.clip.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)
            return out
        out = self.qformer_perceiver(faces.to(pixels.dtype), vision.last_hidden_state)
        return out.reshape(-1, out.shape[-1])


# ---- prompt ------------------------------------------------------------------------------------------


def split_trigger(prompt: str) -> tuple[str, str, str]:
    """(text before the class word, class word, text after the trigger); error when there is no trigger."""
    match = re.search(rf"(\S+)\s+{TRIGGER}\b", prompt)
    if match is None:
        raise PhotoMakerError(f"PhotoMaker: write the class word followed by the trigger word in the prompt, "
                              f"e.g. 'a photo of a man {TRIGGER}, ...'")
    return prompt[:match.start(1)], match.group(1), prompt[match.end():]


def class_positions(tokenizer, before: str, repeated: str, count: int) -> list[int]:
    """Where the repeated class-word tokens sit in the encoded sequence (77-token chunks)."""
    class_ids = tokenizer(repeated.split()[0], add_special_tokens=False).input_ids
    if len(class_ids) != 1:
        raise PhotoMakerError(f"PhotoMaker: the class word {repeated.split()[0]!r} must be a single token "
                              "(e.g. man, woman, boy, girl, person)")
    tokens = [t for chunk in tokenize(tokenizer, before + repeated).chunks for t in chunk.tokens]
    start = tokenize(tokenizer, before).token_count + 1 if before.strip() else 1
    for index in range(max(0, start - 1), len(tokens) - count + 1):
        if tokens[index:index + count] == class_ids * count:
            return list(range(index, index + count))
    raise PhotoMakerError("PhotoMaker: the class word could not be placed (the prompt's first chunk of "
                          f"{CHUNK_TOKENS} tokens must hold it)")


def read_photomaker(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return read_groups(path, ("id_encoder", "lora_weights"))


def photomaker_lora(path: Path, tensors: dict[str, torch.Tensor]):
    """The file's `lora_weights` as a LoraFile the patcher applies (attention-processor key form)."""
    from ..lora import LoraFile, LoraModule, _split_key

    modules: dict[str, LoraModule] = {}
    for key, value in tensors.items():
        split = _split_key(key)
        if split is not None:
            modules.setdefault(split[0], LoraModule()).tensors[split[1]] = value
    return LoraFile(f"{path.stem} (LoRA)", path, modules, {}, path.stat().st_mtime)


def load_photomaker(path: Path, device, dtype, store: ModelStore) -> tuple[IDEncoder, Any]:
    """(ID encoder on the device, the file's LoRA) for a PhotoMaker file, kept in the model store:
    the file is read once per (path, mtime, device, dtype), not on every generation (published ones are ~1 GB)."""
    key = (str(path), path.stat().st_mtime, str(device), str(dtype))

    def load() -> tuple[IDEncoder, Any]:
        state = read_photomaker(path)
        return IDEncoder(state["id_encoder"]).to(device, dtype), photomaker_lora(path, state["lora_weights"])

    if store.peek(KIND, key) is None:
        store.make_room(KIND, 0)  # one at a time: they are large, so the old one goes before the new one loads
    return store.get(KIND, key, load)


def prepare_photomaker(args: IdentityArgs, request, plan, path: Path, analyzer, notes: list[str],
                       store: ModelStore) -> dict[str, Any]:
    """Fused conditioning from the style-strength step on, and the LoRA merged; returns infotext files."""
    from ..lora import LoraPatcher, LoraSpec

    model = plan.model
    encoder, lora = load_photomaker(path, model.device.device, model.device.dtype, store)
    wanted = 2 if args.method == "PhotoMaker v2" else 1
    if encoder.version != wanted:
        raise PhotoMakerError(f"{path.name} is a PhotoMaker v{encoder.version} file, not v{wanted}")
    cross = model.configs["unet"]["cross_attention_dim"]
    if encoder.fuse_module.layer_norm.weight.shape[0] != cross:
        raise PhotoMakerError(f"{path.name} is for another model family; PhotoMaker needs SDXL")
    faces = None
    if encoder.version == 2:
        found = []
        for i, image in enumerate(args.images):
            face = analyzer.largest(image, f"photo {i + 1}" if len(args.images) > 1 else "photo")
            if face.note:
                notes.append(face.note)
            found.append(face.embedding)
        faces = torch.from_numpy(np.stack(found))
    pixels = torch.cat([clip_pixels(image, encoder.image_size) for image in args.images])
    param = next(encoder.parameters())
    tokens = encoder.id_tokens(pixels.to(param.device, param.dtype),
                               faces.to(param.device) if faces is not None else None)

    text, _ = extract(plan.prompts.prompt)  # <lora:> tags were applied by plan_prompts
    before, word, after = split_trigger(text)
    count = tokens.shape[0]
    text_only = before + word + after
    repeated = " ".join([word] * count)
    options = plan.options
    prompt_encoder = PromptEncoder(model, options["CLIP_stop_at_last_layers"], [], options["comma_padding_backtrack"],
                                   options["emphasis"] == "Original")
    plain = prompt_encoder.encode(text_only)
    with_class = prompt_encoder.encode(before + repeated + after)
    positions = class_positions(model.tokenizers[model.architecture.text_encoders[0]], before, repeated, count)
    embeds = with_class.embeds.clone()
    with torch.no_grad():
        class_embeds = embeds[0, positions].to(param.device, param.dtype)
        fused = encoder.fuse_module(class_embeds, tokens)
    embeds[0, positions] = fused.to(embeds.device, embeds.dtype)
    identity = Conditioning(embeds, with_class.pooled)
    start = int(round(args.style_strength / 100 * request.steps))
    schedule = ([(start - 1, plain)] if start > 0 else []) + [(10 ** 9, identity)]
    conditioning = StepConditioning([(schedule, 1.0)])

    def use_identity(denoiser) -> None:
        for inner in denoiser.inner_denoisers():
            inner.set_conditioning(conditioning)

    plan.prompts.denoiser_edits.append(use_identity)  # every denoiser this pass makes
    plan.prompts.extra_patches.append(LoraSpec(lora, 0.0, args.lora_weight))  # applied while the pass samples
    report = LoraPatcher.of(model).set(plan.prompts.weight_patches())
    if report.unmatched and not report.cached and args.lora_weight:
        notes.append(f"PhotoMaker LoRA: {len(report.unmatched)} layer(s) do not exist in this model")
    return {"Encoder": f"{path.name} [{legacy_short_hash(path)}]"}
