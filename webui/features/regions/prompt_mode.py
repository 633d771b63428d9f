"""Regional Prompter's Prompt mode: each region is where the picture's own prompt attends to a target word.

The prompt's first part describes the whole picture (the "base"); each further part is
`effect, target`, and the region of that part is found while sampling, from the cross-attention
the base prompt pays to the target's tokens:

- every cross-attention layer's attention probabilities of the positive base prompt at the
  target's token positions (raised to a power, summed over those tokens, averaged over heads)
  are added up at the latents' size, over the layers and the steps so far (from the second step
  on, as Regional Prompter does: the first step's attention on pure noise says little);
- before each model call the sums become masks: divided by their maximum per image and compared
  with the region's threshold (lowered by 0.005 a step, as Regional Prompter does), then sampled
  to each layer's size;
- each cross-attention layer runs the wrapped processor on the base prompt's chunks and on each
  region's, and adds every region's change over the base where its mask is on (scaled by
  1 - base ratio when a base ratio applies). *Prompt* adds overlapping regions' changes;
  *Prompt-Ex* lets a later region replace an earlier one where they overlap.

In the Latent calculation mode the processor only records (PromptProbeProcessor) while the base
prompt predicts, and the guided predictions of the regions are added through the masks at latent
size instead (prompt_latent_couple).

Until the sums exist (the first two steps) the picture follows the base prompt alone. Written
here: diffusers has no attention-derived regional processor; the probabilities come from
diffusers' own `Attention.get_attention_scores`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .attention import TOKENS_PER_CHUNK, _chunk, layer_size, regional_context

STEP_LOWERING = 0.005   # the threshold drops this much per step (Regional Prompter's makepmask)


def target_positions(tokenizer, tokenized_base, tokenized_target) -> list[int]:
    """Positions of the target's tokens in the base prompt's chunks (77 per chunk).

    Where the target's whole token sequence occurs, those runs; otherwise every position holding
    one of its tokens (a word that tokenizes differently in context)."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    target = [t for t in tokenized_target.chunks[0].tokens if t not in specials]
    if not target:
        return []
    runs, loose = [], []
    for index, chunk in enumerate(tokenized_base.chunks):
        tokens = chunk.tokens
        offset = index * TOKENS_PER_CHUNK
        for start in range(1, len(tokens) - len(target) + 1):
            if tokens[start:start + len(target)] == target:
                runs.extend(range(offset + start, offset + start + len(target)))
        loose.extend(offset + i for i, t in enumerate(tokens) if t in target and t not in specials)
    return sorted(set(runs or loose))


@dataclass
class PromptRegions:
    """What the processors of one pass share: chunk ranges, targets, and the attention sums of a batch."""

    latent_size: tuple[int, int]
    base_range: tuple[int, int]
    ranges: list[tuple[int, int]]           # each region's chunks
    positions: list[list[int]]              # each region's target positions within the base chunks
    thresholds: tuple[float, ...]
    base_ratios: tuple[float, ...]          # (0,) unless the base ratios apply
    exclusive: bool                         # Prompt-Ex
    power: float = 1.2                      # Regional Prompter: 1.2 (SD 1.x/2.x), 4 (SDXL)
    # per batch (reset by `begin_batch`)
    batch: int = 1
    cond_parts: int = 1
    recording: bool = False
    step: int = 0
    sums: torch.Tensor | None = None        # (regions, batch, H, W) at latent size
    current: torch.Tensor | None = None     # (regions, batch, H, W) 0/1, the masks of this model call
    _at_size: dict[int, torch.Tensor] = field(default_factory=dict)

    def begin_batch(self, batch: int) -> None:
        self.batch, self.sums, self.current, self._at_size = batch, None, None, {}

    def begin_call(self, step: int, cond_parts: int, record: bool) -> None:
        """Before a model call: masks from the sums so far; record this call's attention when asked."""
        self.step, self.cond_parts, self.recording = step, max(1, cond_parts), record
        self._at_size = {}
        self.current = None if self.sums is None else self.masks_now()

    def masks_now(self) -> torch.Tensor:
        """(regions, batch, H, W) 0/1: each region's sum over its maximum, above its threshold."""
        sums = self.sums
        peak = sums.flatten(2).amax(-1).clamp_min(torch.finfo(sums.dtype).tiny)[..., None, None]
        normalised = sums / peak
        masks = torch.stack([(normalised[i] > self.threshold(i) - self.step * STEP_LOWERING).float()
                             for i in range(len(sums))])
        if self.exclusive:  # a later region takes over where it overlaps an earlier one
            later = torch.zeros_like(masks[0])
            for i in reversed(range(len(masks))):
                masks[i] = masks[i] * (1 - later)
                later = torch.maximum(later, masks[i])
        return masks

    def threshold(self, region: int) -> float:
        return self.thresholds[region] if region < len(self.thresholds) else self.thresholds[0]

    def ratio(self, region: int) -> float:
        return self.base_ratios[region] if region < len(self.base_ratios) else self.base_ratios[0]

    def masks_for(self, tokens: int) -> torch.Tensor | None:
        """(regions, batch, tokens) at a layer of `tokens` positions (centre sampling), or None before any sums."""
        if self.current is None:
            return None
        if tokens not in self._at_size:
            h, w = layer_size(self.latent_size, tokens)
            big_h, big_w = self.current.shape[-2:]
            device = self.current.device
            ys = ((torch.arange(h, device=device) + 0.5) * big_h / h).long().clamp(max=big_h - 1)
            xs = ((torch.arange(w, device=device) + 0.5) * big_w / w).long().clamp(max=big_w - 1)
            self._at_size[tokens] = self.current[:, :, ys][:, :, :, xs].reshape(*self.current.shape[:2], h * w)
        return self._at_size[tokens]

    def record(self, attn: Any, hidden_states: torch.Tensor, base_context: torch.Tensor) -> None:
        """Add this layer's attention to the targets (positive base prompt, first sub-prompt) to the sums."""
        if not self.recording:
            return
        entries = hidden_states.shape[0]
        start = entries - self.cond_parts * self.batch
        if start < 0:
            return
        hidden = hidden_states[start:start + self.batch]
        context = base_context[start:start + self.batch]
        if getattr(attn, "norm_cross", None) is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None).float()        # (batch*heads, hw, tokens)
        probs = probs.reshape(self.batch, -1, *probs.shape[1:])             # (batch, heads, hw, tokens)
        h, w = layer_size(self.latent_size, hidden.shape[1])
        maps = []
        for positions in self.positions:
            if positions:
                weight = (probs[..., positions] ** self.power).sum(-1).mean(1)   # (batch, hw)
            else:
                weight = probs.new_zeros(probs.shape[0], probs.shape[2])
            maps.append(weight.reshape(self.batch, 1, h, w))
        stacked = torch.cat(maps, dim=1)                                    # (batch, regions, h, w)
        if (h, w) != tuple(self.latent_size):
            stacked = F.interpolate(stacked, size=self.latent_size, mode="bilinear", align_corners=False)
        stacked = stacked.transpose(0, 1)   # kept where the model runs: no copy back per layer
        self.sums = stacked if self.sums is None else self.sums + stacked


class PromptRegionProcessor:
    """A cross-attention processor for Prompt mode, wrapping the one installed (IP-Adapter's keep working)."""

    def __init__(self, inner: Any, regions: PromptRegions):
        self.inner = inner
        self.regions = regions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        plain = lambda context: self.inner(attn, hidden_states, encoder_hidden_states=context,  # noqa: E731
                                           attention_mask=attention_mask, temb=temb, **kwargs)
        regions = self.regions
        split = regional_context(hidden_states, encoder_hidden_states, regions.ranges + [regions.base_range])
        if split is None:
            return plain(encoder_hidden_states)
        text, context = split
        base = plain(context(regions.base_range))
        masks = regions.masks_for(hidden_states.shape[1])   # from earlier calls: this call's sums come after
        regions.record(attn, hidden_states, _chunk(text, regions.base_range))
        if masks is None:
            return base
        copies = hidden_states.shape[0] // regions.batch
        out = base
        for index, span in enumerate(regions.ranges):
            mask = masks[index]
            if not mask.any():
                continue
            mask = mask.repeat(copies, 1)[:, :, None].to(base.device, base.dtype)
            out = out + mask * (1 - regions.ratio(index)) * (plain(context(span)) - base)
        return out


class PromptProbeProcessor:
    """Latent calculation mode: the wrapped processor unchanged, recording the base prompt's attention."""

    def __init__(self, inner: Any, regions: PromptRegions):
        self.inner = inner
        self.regions = regions

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb, **kwargs)
        if self.regions.recording and encoder_hidden_states is not None and hidden_states.ndim == 3:
            text = encoder_hidden_states[0] if isinstance(encoder_hidden_states, tuple) else encoder_hidden_states
            if text.shape[1] >= self.regions.base_range[1] * TOKENS_PER_CHUNK:
                self.regions.record(attn, hidden_states, _chunk(text, self.regions.base_range))
        return out


def prompt_latent_couple(denoiser: Any, base: tuple[Any, Any], pairs: list[tuple[Any, Any]],
                         regions: PromptRegions) -> None:
    """Latent calculation mode for Prompt mode: each CFG denoiser predicts with the base prompt (recording its
    attention), then once per region whose mask is not empty, and adds each region's change over the base
    prediction where its mask (at latent size) is on."""
    regions.begin_batch(denoiser.inner_denoisers()[0].batch_size)
    for inner in denoiser.inner_denoisers():
        inner.predict = _prompt_regional_predict(inner, inner.predict, base, pairs, regions)


def _prompt_regional_predict(inner, predict, base, pairs, regions: PromptRegions):
    def with_prompts(x, t, cond, uncond):
        inner.uncond = uncond
        inner.set_conditioning(cond)
        return predict(x, t)

    def regional(x: torch.Tensor, t) -> torch.Tensor:
        regions.begin_call(inner.step, len(base[0].at(inner.step)), record=inner.step > 0)
        try:
            out = with_prompts(x, t, *base)
        finally:
            regions.recording = False
        if regions.current is None:
            return out
        base_out = out
        for index, (cond, uncond) in enumerate(pairs):
            mask = regions.current[index]
            if not mask.any():
                continue
            change = with_prompts(x, t, cond, uncond) - base_out
            out = out + mask[:, None].to(out) * (1 - regions.ratio(index)) * change
        return out

    return regional
