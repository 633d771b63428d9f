"""What a job keeps of its request once queued: the fields, never the input images.

A finished job stays in the history (the last 200) so its result can be fetched again. Its
request body may carry megabytes of base64 (init_images, mask) and its GenerationRequest
the decoded images; kept for every job, that is gigabytes. Like AUTOMATIC1111, which sets
`init_images` and `mask` to null in the `parameters` it answers unless `include_init_images`
is set, the history keeps the body without them; the engine gets the full request.
"""
from __future__ import annotations

import dataclasses

from ..core.request import GenerationRequest
from .models import GenerationFields, Img2ImgRequest


def kept_body(body: GenerationFields) -> GenerationFields:
    """The body without its input images (kept when the client asked for them back: include_init_images)."""
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        return body.model_copy(update={"init_images": None, "mask": None, "latent_mask": None})
    return body


def kept_request(request: GenerationRequest, body: GenerationFields) -> GenerationRequest:
    """The request for the `info` of the response: without decoded images (ControlNet's are in alwayson_scripts)."""
    keep_inits = isinstance(body, Img2ImgRequest) and body.include_init_images
    return dataclasses.replace(request, init_images=list(request.init_images) if keep_inits else [], mask=None,
                               latent_mask=None, firstpass_image=None, alwayson_scripts={})
