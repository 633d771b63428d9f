"""Token merging (features/token_merging) on tiny SD 1.x and SDXL checkpoints.

The matching itself on plain tensors (counts, one destination per 2x2 cell, unmerge puts every row
back), then whole jobs: ratio 0 is bit-identical to no token merging; a ratio > 0 hands the
self-attention of the highest-resolution blocks fewer tokens (counted with hooks here) and gives a
close image; the hooks are gone after the job; the infotext round trip and the API's
override_settings.
"""
from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
import torch

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.token_merging.feature import pass_ratio
from webui.features.token_merging.matching import bipartite_matching, destination_mask
from webui.features.token_merging.patch import block_grid, transformer_blocks, transformer_levels
from webui.pnginfo import infotext_to_fields, override_item_fields, override_items

SD1, SDXL = "tiny-sd1.safetensors", "tiny-sdxl.safetensors"


# ---- the matching --------------------------------------------------------------------------------

def test_one_destination_per_cell_seeded_and_odd_edges_are_sources():
    first = destination_mask(5, 6, torch.Generator().manual_seed(3))
    again = destination_mask(5, 6, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    grid = first.view(5, 6)
    assert not grid[4].any()  # the odd last row has no whole cell
    cells = grid[:4].reshape(2, 2, 3, 2).permute(0, 2, 1, 3).reshape(2, 3, 4)
    assert torch.equal(cells.sum(-1), torch.ones(2, 3, dtype=torch.long))
    fixed = destination_mask(4, 4, None).view(4, 4)
    assert fixed[::2, ::2].all() and fixed.sum() == 4  # no random: each cell's first token


def test_merge_removes_r_tokens_and_unmerge_restores_every_position():
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    merge = bipartite_matching(x, 8, 8, 0.5, torch.Generator().manual_seed(1))
    assert merge is not None and merge.merged == 32
    merged = merge.merge(x)
    assert merged.shape == (2, 32, 8)
    back = merge.unmerge(merged)
    kept = merge.kept_src[..., None].expand(-1, -1, 8)
    assert torch.equal(back.gather(1, kept), x.gather(1, kept))  # untouched sources come back as they were
    # a merged source gets its destination's row: the mean of that destination and what merged into it
    b, s = 0, int(merge.merged_src[0, 0])
    dst_token = int(merge.dst[merge.target[0, 0]])
    group = [dst_token] + [int(t) for t, d in zip(merge.merged_src[b], merge.target[b]) if int(merge.dst[d]) == dst_token]
    assert torch.allclose(back[b, s], x[b, group].mean(0), atol=1e-6)
    assert torch.allclose(back[b, dst_token], back[b, s])
    assert bipartite_matching(x, 8, 8, 0.0, None) is None


def test_block_grid_and_levels():
    assert block_grid((8, 8), 64) == (1, 8, 8) and block_grid((8, 8), 16) == (2, 4, 4)
    assert block_grid((9, 7), 20) == (2, 5, 4)  # odd latents: the UNet rounds up
    assert block_grid((8, 8), 77) is None


def test_pass_ratio_follows_automatic1111():
    options = {"token_merging_ratio": 0.3, "token_merging_ratio_img2img": 0.5, "token_merging_ratio_hr": 0.0}
    assert pass_ratio(options, "txt2img", {}) == 0.3
    assert pass_ratio(options, "img2img", {}) == 0.5
    assert pass_ratio(options, "img2img", {"token_merging_ratio": 0.3}) == 0.3  # the request's own wins
    assert pass_ratio(options, "txt2img", {}, hires=True) == 0.3  # hr 0: the first pass's
    assert pass_ratio({**options, "token_merging_ratio_hr": 0.6}, "txt2img", {}, hires=True) == 0.6


# ---- whole jobs ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    from conftest import make_easel

    easel = make_easel(tmp_path_factory.mktemp("tome"), tiny_ckpt_dir)
    yield easel
    easel.close()


def request(**changes) -> GenerationRequest:
    base = dict(prompt="a red fox", negative_prompt="blurry", steps=3, width=64, height=64, seed=42,
                sampler_name="Euler", checkpoint=SD1, save_images=False)
    base.update(changes)
    return GenerationRequest(**base)


def generate(app, **changes) -> tuple[np.ndarray, dict[str, str], list[str]]:
    result = app.generate(request(**changes))
    return (np.asarray(result.images[0]).astype(np.float64), parse_infotext(result.infotexts[0]).params,
            list(getattr(result, "warnings", []) or []))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


class SelfAttentionTokens:
    """Tokens each self-attention call projects to queries (a pre-hook on every attn1.to_q: it runs inside the
    attention, after whatever hooks the feature put on attn1)."""

    def __init__(self, unet):
        self.unet, self.tokens, self.handles = unet, [], []
        for block in transformer_blocks(unet):
            self.handles.append(block.attn1.to_q.register_forward_pre_hook(
                lambda module, args: self.tokens.append(args[0].shape[-2])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def hook_count(unet) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())


@pytest.fixture(scope="module")
def sd1_off(app):
    return generate(app)


def test_ratio_zero_is_bit_identical_and_writes_nothing(app, sd1_off):
    image, params, _ = generate(app, override_settings={"token_merging_ratio": 0.0})
    assert np.array_equal(image, sd1_off[0])
    assert not any(key.startswith("Token merging") for key in params)


def test_ratio_merges_the_highest_resolution_self_attention_and_is_undone(app, sd1_off):
    unet = app.models.get(SD1).unet
    hooks_before = hook_count(unet)
    with SelfAttentionTokens(unet) as plain:
        generate(app)
    with SelfAttentionTokens(unet) as merged:
        image, params, _ = generate(app, override_settings={"token_merging_ratio": 0.5})
    # 64x64 pixels: an 8x8 latent, 64 tokens in the top blocks (downsample 1), 16 in the middle (downsample 2)
    assert sorted(set(plain.tokens)) == [16, 64]
    assert sorted(set(merged.tokens)) == [16, 32]  # half of the top blocks' tokens merged; the middle untouched
    assert len(merged.tokens) == len(plain.tokens)
    quality = psnr(image, sd1_off[0])
    print(f"SD 1.x tiny, ratio 0.5: PSNR {quality:.1f} dB against ratio 0")
    assert 15 < quality < math.inf  # changed, and still close
    assert params["Token merging ratio"] == "0.5" and "Token merging ratio hr" not in params
    again, _, _ = generate(app, override_settings={"token_merging_ratio": 0.5})
    assert np.array_equal(image, again)  # the seeded destination grid: the same image twice
    assert hook_count(unet) == hooks_before  # every hook removed after the job
    after, _, _ = generate(app)
    assert np.array_equal(after, sd1_off[0])


def test_sdxl_merges_at_downsample_2_and_warns_at_1(app):
    unet = app.models.get(SDXL).unet
    off, _, _ = generate(app, checkpoint=SDXL)
    assert min(transformer_levels(unet)) == 2  # SDXL's top blocks have no attention
    with SelfAttentionTokens(unet) as counted:
        same, params, warnings = generate(app, checkpoint=SDXL, override_settings={"token_merging_ratio": 0.5})
    assert np.array_equal(same, off) and set(counted.tokens) == {16}  # the tiny SDXL: an 8x8 latent, 4x4 grids
    assert any("token_merging_downsample to 2" in w for w in warnings), warnings
    with SelfAttentionTokens(unet) as counted:
        image, params, _ = generate(app, checkpoint=SDXL, override_settings={"token_merging_ratio": 0.5,
                                                                            "token_merging_downsample": 2})
    assert set(counted.tokens) == {8}  # downsample 2: 16 -> 8 tokens in every block (its middle one too)
    quality = psnr(image, off)
    print(f"SDXL tiny, ratio 0.5, downsample 2: PSNR {quality:.1f} dB against ratio 0")
    assert 15 < quality < math.inf
    assert params["Token merging ratio"] == "0.5" and params["Token merging downsample"] == "2"
    fields = infotext_to_fields(parse_infotext("a red fox\nSteps: 3, Seed: 42, Token merging ratio: 0.5, "
                                               "Token merging downsample: 2"))
    assert fields["override_settings"]["token_merging_downsample"] == 2


def test_infotext_round_trip_makes_the_same_image(app):
    result = app.generate(request(override_settings={"token_merging_ratio": 0.3}))
    text = result.infotexts[0]
    assert "Token merging ratio: 0.3" in text
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["override_settings"]["token_merging_ratio"] == 0.3
    assert "token_merging_ratio_hr" not in fields["override_settings"]
    pasted = app.generate(request(override_settings=fields["override_settings"]))
    assert np.array_equal(np.asarray(pasted.images[0]), np.asarray(result.images[0]))
    hr = infotext_to_fields(parse_infotext("x\nSteps: 3, Token merging ratio: 0.3, Token merging ratio hr: 0.5"))
    assert hr["override_settings"]["token_merging_ratio_hr"] == 0.5
    # the UI's "Override settings" list after a paste: the entries, and the settings they give back
    assert "Token merging ratio: 0.3" in override_items(parse_infotext(text))
    assert override_item_fields(["Token merging ratio: 0.3"]) == {"override_settings": {"token_merging_ratio": 0.3}}


def test_hires_pass_writes_its_ratio(app):
    _, params, _ = generate(app, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5,
                            override_settings={"token_merging_ratio_hr": 0.4})
    assert params["Token merging ratio hr"] == "0.4" and "Token merging ratio" not in params


def test_a_ratio_out_of_range_names_the_setting(app):
    with pytest.raises(ValidationError) as error:
        app.generate(request(override_settings={"token_merging_ratio": 1.5}))
    assert "override_settings.token_merging_ratio" in str(error.value)


def test_api_override_settings(api_server):
    from api_helpers import decode, max_diff, payload

    with httpx.Client(base_url=api_server.url, timeout=120) as client:
        assert client.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.0
        off = client.post("/sdapi/v1/txt2img", json=payload())
        on = client.post("/sdapi/v1/txt2img", json=payload(override_settings={"token_merging_ratio": 0.5}))
        assert off.status_code == on.status_code == 200, on.text
        assert "Token merging ratio: 0.5" in on.json()["info"]
        assert "Token merging" not in off.json()["info"]
        assert max_diff(decode(off.json()["images"][0]), decode(on.json()["images"][0])) > 0
        bad = client.post("/sdapi/v1/txt2img", json=payload(override_settings={"token_merging_ratio": 2}))
        assert bad.status_code == 422 and "override_settings.token_merging_ratio" in bad.text


def test_hooks_are_removed_when_sampling_fails(app):
    from webui.features.token_merging.patch import MergeOptions, TokenMerging

    unet = app.models.get(SD1).unet
    before = hook_count(unet)
    with pytest.raises(RuntimeError):
        with TokenMerging(unet, MergeOptions(ratio=0.5)).installed():
            assert hook_count(unet) > before
            raise RuntimeError("interrupted")
    assert hook_count(unet) == before
