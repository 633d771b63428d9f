"""InstantID (Wang et al. 2024) on the existing ControlNet and IP-Adapter machinery.

The face photo's insightface embedding (512-d) is the "image embedding" of the face adapter
(`ip-adapter.bin`: a Resampler image projection to 16 tokens + decoupled cross-attention),
installed with IPAdapterPatch like any IP-Adapter unit. The IdentityNet is a ControlNet on
the keypoint image; unlike other ControlNets its cross-attention reads the projected face
tokens instead of the prompt (zero-embedding tokens on the unconditional half), which
ControlApplication.context provides. Both join the request's other ControlNet units.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...model_manager.hashing import legacy_short_hash
from ..controlnet.apply import ControlApplication, Controls
from ..controlnet.models import ControlNetLibrary
from ..img2img import resize_image
from ..ip_adapter import AdapterFile, IPAdapterApplication, IPAdapterPatch, batch_layout
from .args import IdentityArgs
from .faces import FaceAnalyzer, draw_keypoints
from .weights import IdentityFileError, read_groups

CROP_AND_RESIZE = 1


@dataclass
class FaceTokens:
    """Projected face tokens for the IdentityNet, laid out like the denoiser's batch."""

    positive: torch.Tensor   # (1, tokens, width)
    negative: torch.Tensor
    _cache: dict = field(default_factory=dict)

    def __call__(self, batch: int, copies: int, uncond_first: bool) -> torch.Tensor:
        key = (batch, copies, uncond_first)
        if key not in self._cache:
            self._cache[key] = batch_layout(self.positive, self.negative, batch, copies, uncond_first)
        return self._cache[key]


def read_face_adapter(path: Path) -> AdapterFile:
    state = read_groups(path, ("image_proj", "ip_adapter"))
    if "latents" not in state["image_proj"]:
        raise IdentityFileError(f"{path.name}: not an InstantID face adapter (no Resampler latents in image_proj)")
    return AdapterFile(path.stem, path, state)


@torch.no_grad()
def project_face(unet, adapter: AdapterFile, embedding: torch.Tensor, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's Resampler applied to the face embedding and to zeros: (positive, negative) tokens.

    On the compute device in the compute dtype, not the UNet's first weight's: in model offload that
    weight waits in system memory, and with fp8 storage it is fp8."""
    projection = unet._convert_ip_adapter_image_proj_to_diffusers(adapter.state["image_proj"], low_cpu_mem_usage=False)
    projection = projection.to(device, dtype).eval()
    face = embedding.reshape(1, 1, -1).to(device, dtype)
    return projection(face), projection(torch.zeros_like(face))


def prepare_instantid(args: IdentityArgs, model, controls: Controls, analyzer: FaceAnalyzer, adapter_path: Path,
                      identitynets: ControlNetLibrary, identitynet_path: Path, width: int, height: int,
                      notes: list[str]) -> dict[str, str]:
    """Adds the IdentityNet and the face adapter to `controls`; returns the infotext file titles.

    `identitynets`: the service's library over models/instantid, whose cache keeps the
    IdentityNet loaded from one generation to the next.
    """
    face = analyzer.largest(args.images[0], "face image")
    if face.note:
        notes.append(face.note)
    keypoints, source_size = face.kps, face.image_size
    if args.pose_image is not None:
        pose = analyzer.largest(args.pose_image, "pose image")
        if pose.note:
            notes.append(pose.note)
        keypoints, source_size = pose.kps, pose.image_size
    adapter = read_face_adapter(adapter_path)
    cross = model.configs["unet"]["cross_attention_dim"]
    if adapter.cross_attention_width != cross:
        raise IdentityFileError(f"{adapter_path.name} is for another model family (cross-attention "
                                f"{adapter.cross_attention_width}, this checkpoint {cross}); InstantID needs SDXL")
    embedding = torch.from_numpy(face.embedding)
    positive, negative = project_face(model.unet, adapter, embedding, model.device.device, model.device.dtype)
    net = identitynets.load(identitynet_path.name, model)
    param = next(net.parameters())
    hint_image = resize_image(draw_keypoints(source_size, keypoints), width, height, CROP_AND_RESIZE)
    hint = torch.from_numpy(np.asarray(hint_image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    # the IdentityNet applies between guidance_start and guidance_end; the face adapter throughout
    controls.nets.append(ControlApplication(net, hint.to(param.device, param.dtype), args.identitynet_strength,
                                            args.guidance_start, args.guidance_end, 0,
                                            context=FaceTokens(positive, negative)))
    face_embeds = embedding.reshape(1, 1, 1, -1).float()
    application = IPAdapterApplication(adapter, face_embeds, torch.zeros_like(face_embeds), args.adapter_strength,
                                       0.0, 1.0)
    if controls.ip_adapter is None:
        controls.ip_adapter = IPAdapterPatch(model.unet, [application])
    else:
        controls.ip_adapter.applications.append(application)
    return {"Adapter": f"{adapter_path.name} [{legacy_short_hash(adapter_path)}]",
            "IdentityNet": identitynets.find(identitynet_path.name).title}


def keypoint_preview(analyzer: FaceAnalyzer, image: Image.Image) -> Image.Image:
    """The IdentityNet's control image for a photo (for the tab's preview)."""
    face = analyzer.largest(image, "face image")
    return draw_keypoints(face.image_size, face.kps)
