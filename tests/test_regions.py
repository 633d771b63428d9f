"""Regional prompting (Regional Prompter's Matrix, Mask and Prompt modes) on the tiny SD 1.x model.

What "each region depends only on its prompt" can mean, measured honestly:
- exactly, in the layer it changes: a cross-attention layer's output at a region's positions is
  the wrapped processor's output for that region's tokens alone, bit for bit, whatever the other
  regions' tokens are (test_cross_attention_is_exactly_regional);
- end to end, only approximately: convolutions, self-attention and GroupNorm statistics (UNet and
  VAE) see the whole picture, so swapping the right region's prompt still moves the left side
  a little. On a 512x64 picture split 1,1 we measure the mean pixel change far from the border
  (the left quarter) against the change in the right half, with and without regions
  (test_swapping_one_regions_prompt_changes_mostly_that_region).

Prompt mode's regions come from the attention the picture's prompt pays to each region's target.
In the random-weight tiny model those maps are speckle (measured: the normalised map spans about
0.7-1.0 with no spatial structure), so a region is a scatter of single latent cells and the
end-to-end "only inside the mask" cannot be seen in pixels: every cell borders other cells. So
it is tested where it is exact: the mask is the thresholded attention (recomputed here from
q and k), and the layer's output outside it is the base prompt's, bit for bit
(test_prompt_mode_layer_changes_only_where_the_target_is_attended); end to end, the masks do
not depend on the region prompts, and an empty region leaves the picture bit-identical to the
base prompt alone (test_prompt_mode_generates_pastes_and_leaves_unmasked_cells_alone).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.features.regions.args import args_from_params
from webui.features.regions.attention import RegionalAttnProcessor, RegionMap, regional_attention
from webui.features.regions.layout import matrix_regions, rect_masks, region_colour

from conftest import make_easel

CKPT = "tiny-sd1.safetensors"


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    app = make_easel(tmp_path_factory.mktemp("regions"), tiny_ckpt_dir)
    yield app
    app.close()


def rp(ratios="1,1", mode="Matrix", submode="Columns", base_ratios="0", use_base=False, use_common=False,
       calc="Attention", mask=None, flip=False, prompt_submode="Prompt", threshold="0"):
    """Regional Prompter's always-on args, in its documented order."""
    return {"Regional Prompter": {"args": [True, False, mode, submode, "Mask", prompt_submode, ratios, base_ratios,
                                           use_base, use_common, False, calc, False, "0", "0", threshold, mask, "0",
                                           "0", flip]}}


def generate(app, prompt, regions=None, width=512, height=64, steps=4, **kw):
    base = dict(prompt=prompt, negative_prompt="blurry", steps=steps, width=width, height=height, seed=5,
                sampler_name="Euler", checkpoint=CKPT, save_images=False, alwayson_scripts=regions or {})
    base.update(kw)
    return app.txt2img(GenerationRequest(**base))


def arr(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB")).astype(np.float64)


def test_divide_ratios_as_regional_prompter_lays_them_out():
    assert matrix_regions("1,1") == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    assert matrix_regions("1,3", "Rows") == [(0.0, 0.0, 1.0, 0.25), (0.0, 0.25, 1.0, 1.0)]
    # 2D: each ; group a row, its first number the row's height, the rest its columns
    two_d = matrix_regions("1,2,1,1;2,4,6")
    assert len(two_d) == 5 and two_d[0] == (0.0, 0.0, 0.5, 1 / 3) and two_d[3] == (0.0, 1 / 3, 0.4, 1.0)
    assert matrix_regions("1,2,1,1;2,4,6", "Rows")[0] == (0.0, 0.0, 1 / 3, 0.5)
    assert matrix_regions("1;1", flip=True) == matrix_regions("1,1")
    masks = rect_masks(matrix_regions("1,1,2"), 3, 8)
    assert masks.sum(0).eq(1).all()  # a partition
    assert masks[0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0] and masks[2, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [region_colour(n) for n in range(3)] == [(128, 64, 64), (64, 128, 128), (96, 128, 64)]


def test_cross_attention_is_exactly_regional(app):
    """Left positions get the wrapped processor's answer for the left prompt's tokens alone."""
    unet = app.models.get(CKPT).unet
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    attn = unet.get_submodule(name.removesuffix(".processor"))
    inner = attn.processor
    regions = RegionMap((4, 8), [(0, 1), (1, 2)], lambda h, w: (rect_masks(matrix_regions("1,1"), h, w), None))
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 32, attn.to_q.in_features, generator=generator)
    context = torch.randn(2, 154, attn.to_k.in_features, generator=generator)
    other = context.clone()
    other[:, 77:] = torch.randn(2, 77, attn.to_k.in_features, generator=generator)  # the right prompt changed
    processor = RegionalAttnProcessor(inner, regions)
    with torch.no_grad():
        out, out_other = processor(attn, hidden, context), processor(attn, hidden, other)
        left_alone = inner(attn, hidden, context[:, :77])
    left = rect_masks(matrix_regions("1,1"), 4, 8)[0].reshape(32).bool()
    assert torch.equal(out[:, left], out_other[:, left])
    assert torch.equal(out[:, left], left_alone[:, left])
    assert (out[:, ~left] - out_other[:, ~left]).abs().max() > 1e-3
    # installed only while sampling: the UNet's own processors come back
    before = dict(unet.attn_processors)
    with regional_attention(unet, regions):
        assert isinstance(unet.attn_processors[name], RegionalAttnProcessor)
    assert unet.attn_processors == before


def test_swapping_one_regions_prompt_changes_mostly_that_region(app):
    """Measured: with regions, the left quarter moves < 0.6x as much as the right half; without, about as much."""
    ratios = {}
    for regional in (True, False):
        a = arr(generate(app, "a red apple BREAK a blue sky", rp() if regional else None))
        b = arr(generate(app, "a red apple BREAK a green forest at night", rp() if regional else None))
        change = np.abs(a - b).mean(-1)
        ratios[regional] = change[:, :128].mean() / change[:, 256:].mean()
    assert ratios[True] < 0.6, ratios
    assert ratios[False] > 0.75, ratios
    assert ratios[True] < 0.7 * ratios[False], ratios


def test_latent_mode_prediction_is_strictly_regional(app):
    """Latent mode: in one model evaluation the left half of the prediction depends on the left prompt only."""
    from webui.core.pipeline import Pass, Run
    from webui.features.regions.feature import RegionalPrompter

    feature = app.engine.feature(RegionalPrompter.name)
    model = app.models.get(CKPT)
    x = torch.randn(1, 4, 8, 64, generator=torch.Generator().manual_seed(1)) * 10
    predictions = []
    for prompt in ("a red apple BREAK a blue sky", "a red apple BREAK a green forest at night",
                   "a yellow dog BREAK a blue sky"):
        request = GenerationRequest(prompt=prompt, steps=4, width=512, height=64, seed=5, sampler_name="Euler",
                                    checkpoint=CKPT, save_images=False, alwayson_scripts=rp(calc="Latent"))
        prepared = app.engine.prepare(request)
        plan = app.engine.plan(request, model)
        run = Run(request, model, None, None, args=prepared.args)
        feature.begin_pass(run, Pass("first", request, plan, (512, 64), 4))
        predictions.append(plan.prompts.denoiser(1, None, None).predict(x, 500.0))
    same_left, swapped_left = predictions[0], predictions[2]
    assert torch.equal(predictions[0][..., :32], predictions[1][..., :32])  # right prompt swapped: left exact
    assert (predictions[0][..., 32:] - predictions[1][..., 32:]).abs().mean() > 1e-3
    assert torch.equal(same_left[..., 32:], swapped_left[..., 32:])  # left prompt swapped: right exact
    # and it generates end to end, recorded as Regional Prompter records it
    result = generate(app, "a red apple <lora:absent:1> BREAK a blue sky", rp(calc="Latent"))
    assert "RP Calc Mode: Latent" in result.infotexts[0]
    # per-region LoRA is not built: said in the result, and its arguments refused when set
    assert any("LoRAs to the whole picture" in w for w in result.warnings), result.warnings


def test_off_base_common_and_infotext(app):
    plain = generate(app, "a red apple BREAK a blue sky")
    off = generate(app, "a red apple BREAK a blue sky", {"Regional Prompter": {"args": [False, False, "Matrix"]}})
    assert np.array_equal(arr(plain), arr(off)) and "RP Active" not in off.infotexts[0]
    on = generate(app, "a red apple BREAK a blue sky", rp())
    assert not np.array_equal(arr(plain), arr(on))
    # ADDCOMM: the common part goes in front of each region; use_common with BREAK says the same
    common = arr(generate(app, "fruit ADDCOMM a red apple BREAK a blue sky", rp()))
    flagged = arr(generate(app, "fruit BREAK a red apple BREAK a blue sky", rp(use_common=True)))
    assert np.array_equal(common, flagged)
    # base prompt at ratio 0 is ignored, at 0.5 it is not; 2D layouts run
    base0 = arr(generate(app, "a garden ADDBASE a red apple BREAK a blue sky", rp(base_ratios="0")))
    assert np.array_equal(base0, arr(on))
    base5 = arr(generate(app, "a garden ADDBASE a red apple BREAK a blue sky", rp(base_ratios="0.5")))
    assert not np.array_equal(base5, arr(on))
    generate(app, "a ADDCOL b ADDROW c ADDCOL d ADDCOL e", rp("1,1,1;1,2,1,1", submode="Rows"), width=128, height=128)
    params = parse_infotext(on.infotexts[0]).params
    assert params["RP Active"] == "True" and params["RP Divide mode"] == "Matrix"
    assert params["RP Matrix submode"] == "Columns" and params["RP Ratios"] == "1,1"
    assert params["RP Calc Mode"] == "Attention" and params["RP Base Ratios"] == "0"
    # paste: the keys give back the same args, and the same picture
    again = generate(app, "a red apple BREAK a blue sky", {"Regional Prompter": {"args": args_from_params(params)}})
    assert np.array_equal(arr(again), arr(on))


def test_mask_mode_uses_the_painted_regions(app):
    mask = Image.new("RGB", (512, 64), (255, 255, 255))
    mask.paste(region_colour(0), (0, 0, 256, 64))
    mask.paste(region_colour(1), (256, 0, 512, 64))
    by_mask = arr(generate(app, "a red apple BREAK a blue sky", rp(mode="Mask", mask=mask)))
    by_ratio = arr(generate(app, "a red apple BREAK a blue sky", rp()))
    assert np.array_equal(by_mask, by_ratio)  # the same two halves, painted instead of divided


def test_validation_names_the_argument(app):
    def errors(prompt, regions):
        with pytest.raises(ValidationError) as info:
            app.engine.validate(GenerationRequest(prompt=prompt, checkpoint=CKPT, alwayson_scripts=regions))
        return {e.field: e.message for e in info.value.errors}

    field = "alwayson_scripts.Regional Prompter.args"
    assert "3 region part(s)" in errors("a BREAK b BREAK c", rp("1,1"))["prompt"]
    assert f"{field}.ratios" in errors("a BREAK b", rp("1,x"))
    assert f"{field}.calc_mode" in errors("a BREAK b", rp(calc="Sideways"))
    latent_lora = rp(calc="Latent")
    latent_lora["Regional Prompter"]["args"][17] = "10"   # LoRA stop step
    assert "per-region LoRA" in errors("a BREAK b", latent_lora)[f"{field}.lora_stop_step"]
    # Prompt mode: the whole picture's prompt first, then "effect, target" parts whose target it names
    assert "Prompt mode needs" in errors("a shirt", rp(mode="Prompt"))["prompt"]
    assert "missing: skirt" in errors("a lady, shirt BREAK red, skirt", rp(mode="Prompt"))["prompt"]
    assert f"{field}.threshold" in errors("a lady, shirt BREAK red, shirt", rp(mode="Prompt", threshold="x"))
    assert f"{field}.prompt_submode" in errors("a lady, shirt BREAK red, shirt", rp(mode="Prompt",
                                                                                   prompt_submode="Ex"))
    assert "server paths" in errors("a BREAK b", rp(mode="Mask", mask="mask.png"))[f"{field}.mask"]
    assert f"{field}.active" in errors("a", {"Regional Prompter": {"args": ["yes"]}})


def test_txt2img_accordion_generates_and_pastes_back(app):
    import gradio as gr

    from webui.ui.regions_ui import PREFIX
    from webui.ui.runner import SessionJobs
    from webui.ui.send_to import SendTarget, paste_updates
    from webui.ui.txt2img import build_txt2img

    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=[CKPT], value=CKPT)
        controls = build_txt2img(app, checkpoint, SessionJobs())
    i = controls.inputs
    assert i[f"{PREFIX}active"].elem_id == "txt2img_regional_prompter_active"
    run = next(f.fn for f in blocks.fns.values() if f.api_name == "txt2img")
    values = {"prompt": "a red apple BREAK a blue sky", "negative_prompt": "blurry", "steps": 4,
              "sampler_name": "Euler", "cfg_scale": 7, "seed": 5, "width": 512, "height": 64,
              f"{PREFIX}active": True, f"{PREFIX}ratios": "1,1", f"{PREFIX}base_ratios": "0"}
    inputs = {i[name]: value for name, value in values.items()}
    inputs[checkpoint] = CKPT
    *_, last = run(inputs, type("Request", (), {"session_hash": "regions-ui"})())
    texts = last[4]
    engine = generate(app, "a red apple BREAK a blue sky", rp())
    assert texts and texts[0].split(", Version")[0] == engine.infotexts[0].split(", Version")[0]
    target = SendTarget(tab="txt2img", label="txt2img", controls=controls)
    pasted = texts[0].replace("RP Ratios: \"1,1\"", "RP Ratios: \"2,1\"").replace("Columns", "Vertical")
    updates = dict(zip(target.fields(), paste_updates(app, target, pasted)))
    assert updates[f"{PREFIX}active"] is True and updates[f"{PREFIX}ratios"] == "2,1"
    assert updates[f"{PREFIX}matrix_submode"] == "Rows"
    # Prompt mode's keys paste into its controls
    pasted = (texts[0].replace("RP Divide mode: Matrix", "RP Divide mode: Prompt")
              .replace("RP Prompt submode: Prompt", "RP Prompt submode: Prompt-Ex")
              .replace("RP threshold: 0", 'RP threshold: "0.7,0.5"'))
    updates = dict(zip(target.fields(), paste_updates(app, target, pasted)))
    assert updates[f"{PREFIX}mode"] == "Prompt" and updates[f"{PREFIX}prompt_submode"] == "Prompt-Ex"
    assert updates[f"{PREFIX}threshold"] == "0.7,0.5"
    assert "Prompt" in i[f"{PREFIX}mode"].choices[-1]


# ---- Prompt mode -----------------------------------------------------------------------------------

def test_prompt_mode_targets_and_overlaps():
    from webui.features.regions.args import parse
    from webui.features.regions.prompt_mode import PromptRegions, target_positions
    from webui.features.regions.prompts import split_prompt_mode

    args, _ = parse(rp(mode="Prompt", threshold="0.7,0.55")["Regional Prompter"])
    texts = split_prompt_mode("girl in street, shirt, (shortshorts:0.5) BREAK (forest printed:1.3) T-shirt, shirt "
                              "BREAK red skirt, (shortshorts:0.5)", "bad BREAK BREAK dark", args)
    assert texts.base == "girl in street, shirt, (shortshorts:0.5)" and texts.targets == ("shirt", "(shortshorts:0.5)")
    assert texts.negatives == ["bad", "", "dark"] and args.thresholds == (0.7, 0.55) and not texts.uses_base

    class Tokenized:  # a base prompt tokenized as [start] 5 7 9 7 8 [end] [pad]
        def __init__(self, *chunks):
            self.chunks = [type("Chunk", (), {"tokens": tokens})() for tokens in chunks]

    tokenizer = type("Tokenizer", (), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})()
    base = Tokenized([1, 5, 7, 9, 7, 8, 2, 2], [1, 7, 8, 2, 2, 2, 2, 2])
    assert target_positions(tokenizer, base, Tokenized([1, 7, 8, 2])) == [4, 5, 78, 79]  # the whole run, each chunk
    assert target_positions(tokenizer, base, Tokenized([1, 8, 7, 2])) == [2, 4, 5, 78, 79]  # no run: each token
    # Prompt adds overlapping regions; Prompt-Ex gives an overlap to the later region
    sums = torch.tensor([[[[1.0, 0.9, 0.1]]], [[[0.1, 0.9, 1.0]]]])   # (regions, batch, h, w)
    regions = PromptRegions((1, 3), (0, 1), [(1, 2), (2, 3)], [[1], [2]], (0.5,), (0.0,), exclusive=False)
    regions.sums, regions.step = sums, 0
    assert regions.masks_now().flatten(1).tolist() == [[1, 1, 0], [0, 1, 1]]
    regions.exclusive = True
    assert regions.masks_now().flatten(1).tolist() == [[1, 0, 0], [0, 1, 1]]
    regions.step, regions.exclusive = 90, False  # the threshold drops 0.005 a step: 0.5 - 0.45 lets 0.1 in
    assert regions.masks_now().flatten(1).tolist() == [[1, 1, 1], [1, 1, 1]]


def test_prompt_mode_layer_changes_only_where_the_target_is_attended(app):
    """The mask is the base prompt's attention to the target (recomputed here) above the threshold; outside it
    the layer's output is the base prompt's alone, bit for bit, inside it the region prompt's."""
    from webui.features.regions.prompt_mode import PromptRegionProcessor, PromptRegions

    unet = app.models.get(CKPT).unet
    name = next(n for n in unet.attn_processors if n.endswith("attn2.processor"))
    attn = unet.get_submodule(name.removesuffix(".processor"))
    inner = attn.processor
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 32, attn.to_q.in_features, generator=generator)     # (negative, positive) x 4x8
    context = torch.randn(2, 154, attn.to_k.in_features, generator=generator)   # base chunk, region chunk
    regions = PromptRegions((4, 8), (0, 1), [(1, 2)], [[3, 4]], (0.85,), (0.0,), exclusive=False)
    processor = PromptRegionProcessor(inner, regions)
    regions.begin_batch(1)
    with torch.no_grad():
        base_alone = inner(attn, hidden, context[:, :77])
        region_alone = inner(attn, hidden, context[:, 77:])
        regions.begin_call(step=1, cond_parts=1, record=True)
        assert torch.equal(processor(attn, hidden, context), base_alone)  # no sums yet: the base prompt alone
        regions.begin_call(step=2, cond_parts=1, record=False)
        out = processor(attn, hidden, context)
        # the positive side's attention to tokens 3 and 4 of the base chunk
        heads = attn.heads
        q = attn.to_q(hidden[1:]).reshape(1, 32, heads, -1).transpose(1, 2)
        k = attn.to_k(context[1:, :77]).reshape(1, 77, heads, -1).transpose(1, 2)
        probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)
        attended = (probs[..., [3, 4]] ** 1.2).sum(-1).mean(1)[0]
    expected = attended / attended.max() > 0.85 - 2 * 0.005
    inside = regions.current[0, 0].reshape(32).bool()
    assert torch.equal(inside, expected) and 0 < inside.sum() < 32
    assert torch.equal(out[:, ~inside], base_alone[:, ~inside])
    assert torch.allclose(out[:, inside], region_alone[:, inside], atol=1e-5)
    assert (region_alone[:, inside] - base_alone[:, inside]).abs().max() > 1e-3


def test_prompt_mode_generates_pastes_and_leaves_unmasked_cells_alone(app):
    from webui.features.regions.feature import RegionalPrompter

    feature = app.engine.feature(RegionalPrompter.name)
    base = "a lady in a street, shirt, shorts"
    red, blue = f"{base} BREAK red forest, shirt", f"{base} BREAK blue ocean waves at night, shirt"
    a = generate(app, red, rp(mode="Prompt", threshold="0.85"), width=64, height=64, steps=5)
    masks_a = feature.last_masks.clone()
    b = generate(app, blue, rp(mode="Prompt", threshold="0.85"), width=64, height=64, steps=5)
    # the regions come from the base prompt's attention: the same for both region prompts
    assert torch.equal(masks_a, feature.last_masks) and 0.1 < masks_a.mean() < 0.9
    assert not np.array_equal(arr(a), arr(b))
    # no cell above the threshold: the picture is the base prompt's, bit for bit, whatever the region says
    alone = arr(generate(app, base, width=64, height=64, steps=5))
    empty = arr(generate(app, blue, rp(mode="Prompt", threshold="2"), width=64, height=64, steps=5))
    assert np.array_equal(empty, alone)
    params = parse_infotext(a.infotexts[0]).params
    assert params["RP Divide mode"] == "Prompt" and params["RP Prompt submode"] == "Prompt"
    assert params["RP threshold"] == "0.85" and params["RP Calc Mode"] == "Attention"
    # paste: the keys give back the same args, and the same picture
    again = generate(app, red, {"Regional Prompter": {"args": args_from_params(params)}}, width=64, height=64, steps=5)
    assert np.array_equal(arr(again), arr(a))
    # Latent calculation mode runs too, and is another picture than Attention's
    latent = generate(app, red, rp(mode="Prompt", calc="Latent", threshold="0.85"), width=64, height=64, steps=5)
    assert "RP Calc Mode: Latent" in latent.infotexts[0] and not np.array_equal(arr(latent), arr(a))


def test_prompt_mode_latent_prediction_changes_only_inside_the_masks(app):
    """Prompt mode in Latent calculation mode: in one model evaluation the prediction outside the masks (found
    from the base prompt's attention in the earlier steps) is the base prompt's, bit for bit."""
    from webui.core.pipeline import Pass, Run
    from webui.features.regions.feature import RegionalPrompter

    feature = app.engine.feature(RegionalPrompter.name)
    model = app.models.get(CKPT)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 10
    out = {}
    for name, prompt, threshold in (("red", "a lady in a street, shirt BREAK red forest, shirt", "0.85"),
                                    ("blue", "a lady in a street, shirt BREAK blue ocean at night, shirt", "0.85"),
                                    ("none", "a lady in a street, shirt BREAK blue ocean at night, shirt", "2")):
        request = GenerationRequest(prompt=prompt, steps=4, width=64, height=64, seed=5, sampler_name="Euler",
                                    checkpoint=CKPT, save_images=False,
                                    alwayson_scripts=rp(mode="Prompt", calc="Latent", threshold=threshold))
        prepared = app.engine.prepare(request)
        plan = app.engine.plan(request, model)
        run = Run(request, model, None, None, args=prepared.args)
        first = Pass("first", request, plan, (64, 64), 4)
        feature.begin_pass(run, first)
        denoiser = plan.prompts.denoiser(1, None, None)
        with feature.installed(run, first):
            for step in (1, 2):   # step 1 gathers the attention, step 2 predicts with the masks
                for inner in denoiser.inner_denoisers():
                    inner.step = step
                prediction = denoiser.predict(x, 500.0)
        out[name] = (prediction, run.state[f"{feature.name}.first"].regions.current[0, 0])
    (red, mask), (blue, mask_blue), (none, empty) = out["red"], out["blue"], out["none"]
    assert torch.equal(mask, mask_blue) and 0 < mask.sum() < 64 and not empty.any()
    outside = ~mask.bool()
    assert torch.equal(red[..., outside], none[..., outside]) and torch.equal(blue[..., outside], none[..., outside])
    assert (red[..., ~outside] - blue[..., ~outside]).abs().mean() > 1e-3
