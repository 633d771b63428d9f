"""AUTOMATIC1111's prompt language: parser table, chunking, and its exact numerical effect."""
import pytest
import torch

from webui.core.conditioning import CHUNK_TOKENS, PromptEncoder, count_tokens, tokenize
from webui.core.prompts import (BREAK, ScheduleEntry, parse_attention, prompt_schedule, schedule_prompt,
                                split_and, text_at_step)
from webui.model_manager.tokenizer import clip_tokenizer

ATTENTION = [
    ("plain text", [("plain text", 1.0)]),
    ("a (cat) b", [("a ", 1.0), ("cat", 1.1), (" b", 1.0)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(cat:1.3)", [("cat", 1.3)]),
    ("(cat: 0.5 )", [("cat", 0.5)]),
    ("[dog]", [("dog", pytest.approx(1 / 1.1))]),
    ("[[dog]]", [("dog", pytest.approx(1 / 1.21))]),
    ("(a (b:2) c)", [("a ", pytest.approx(1.1)), ("b", pytest.approx(2.2)), (" c", pytest.approx(1.1))]),
    (r"\(literal\) \[x\]", [("(literal) [x]", 1.0)]),
    (r"back\\slash", [("back\\slash", 1.0)]),
    ("a BREAK b", [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]),
    ("(unclosed", [("unclosed", pytest.approx(1.1))]),
    ("[unclosed", [("unclosed", pytest.approx(1 / 1.1))]),
    ("stray) and ]", [("stray) and ]", 1.0)]),
    ("(x:1.2:3)", [("x:1.2", 3.0)]),  # only the last ":number)" is a weight, as in AUTOMATIC1111
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("text,expected", ATTENTION, ids=[t or "empty" for t, _ in ATTENTION])
def test_attention_parse(text, expected):
    assert parse_attention(text) == expected


SCHEDULES = [
    ("a [cat:dog:0.5] z", 10, [(5, "a cat z"), (10, "a dog z")]),
    ("[cat:dog:4]", 10, [(4, "cat"), (10, "dog")]),
    ("[to:3]", 10, [(3, ""), (10, "to")]),
    ("[from::3]", 10, [(3, "from"), (10, "")]),
    ("[a|b]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
    ("[a|b|c]", 3, [(1, "a"), (2, "b"), (3, "c")]),
    ("[word]", 10, [(10, "[word]")]),
    ("[a:b]", 10, [(10, "[a:b]")]),
    ("(x [a:b:0.5]:1.2)", 10, [(5, "(x a:1.2)"), (10, "(x b:1.2)")]),
    ("[[a|b]:c:3]", 6, [(1, "a"), (2, "b"), (3, "a"), (6, "c")]),
    ("[a:[b:c:0.6]:0.2]", 10, [(2, "a"), (6, "b"), (10, "c")]),
    ("[a:b:1.0]", 10, [(10, "a")]),          # "." means a fraction: 1.0 of the steps, never switches
    ("[a:b:99]", 10, [(10, "a")]),           # beyond the last step
    ("x [unclosed: 5", 10, [(10, "x [unclosed: 5")]),
    (r"\[a:b:2\]", 10, [(10, r"\[a:b:2\]")]),
]


@pytest.mark.parametrize("text,steps,expected", SCHEDULES, ids=[t for t, _, _ in SCHEDULES])
def test_prompt_schedule(text, steps, expected):
    assert prompt_schedule(text, steps) == [ScheduleEntry(end, t) for end, t in expected]


def test_and_splits_with_weights():
    parts = split_and("a cat AND a dog :0.5 AND bird:2")
    assert [(p.text.strip(), p.weight) for p in parts] == [("a cat", 1.0), ("a dog", 0.5), ("bird", 2.0)]
    assert [p.text for p in split_and("ANDROID")] == ["ANDROID"]


def test_step_lookup_follows_automatic1111():
    schedule = prompt_schedule("[cat:dog:4]", 10)
    assert [text_at_step(schedule, i) for i in range(10)] == ["cat"] * 5 + ["dog"] * 5


def test_very_deep_nesting_and_long_prompts_do_not_crash():
    deep = "(" * 10_000 + "x" + ")" * 10_000
    assert prompt_schedule(deep, 20)[0].text == deep
    weight = parse_attention(deep)[0][1]
    assert 1 < weight <= 1000  # capped, stays finite
    deep_alt = "[" * 10_000 + "a|b" + "]" * 10_000
    assert len(prompt_schedule(deep_alt, 4)) == 4
    long = ", ".join(["word"] * 2_000)
    assert prompt_schedule(long, 20) == [ScheduleEntry(20, long)]


# ---- chunking -----------------------------------------------------------------------------------

TOKENIZER = clip_tokenizer()


def test_short_prompt_is_one_padded_chunk():
    result = tokenize(TOKENIZER, "a (cat:1.5)")
    assert len(result.chunks) == 1 and result.token_count == 2
    chunk = result.chunks[0]
    assert len(chunk.tokens) == CHUNK_TOKENS + 2 == 77
    assert chunk.tokens[:4] == [49406, 320, 2368, 49407] and chunk.tokens[-1] == 49407
    assert chunk.multipliers[:4] == [1.0, 1.0, 1.5, 1.0]


def test_long_prompt_breaks_at_a_comma_near_the_boundary():
    words = ["cat"] * 70 + [","] + ["dog"] * 10  # the comma sits 5 tokens before the 75 limit
    result = tokenize(TOKENIZER, " ".join(words))
    assert len(result.chunks) == 2
    first = result.chunks[0].tokens
    assert first[71] == TOKENIZER(",", add_special_tokens=False).input_ids[0]  # chunk ends at the comma
    assert first[72] == 49407
    assert result.chunks[1].tokens[1:11] == [TOKENIZER("dog", add_special_tokens=False).input_ids[0]] * 10


def test_break_starts_a_new_chunk_and_counts():
    result = tokenize(TOKENIZER, "a cat BREAK a dog")
    assert len(result.chunks) == 2
    assert count_tokens(TOKENIZER, "a cat BREAK a dog") == 4
    assert count_tokens(TOKENIZER, " ".join(["cat"] * 80)) == 80


# ---- numerical effect on the tiny model --------------------------------------------------------


@pytest.fixture
def sd1(easel):
    return easel.models.get("tiny-sd1.safetensors")


def test_emphasis_multiplies_tokens_then_restores_the_mean(sd1):
    encoder = PromptEncoder(sd1)
    plain = PromptEncoder(sd1, emphasis=False).encode("a cat").embeds
    weighted = encoder.encode("a (cat:1.5)").embeds
    multipliers = torch.ones(77)
    multipliers[2] = 1.5  # [start, a, cat, ...]
    expected = plain * multipliers[None, :, None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected, rtol=0, atol=1e-6)
    assert not torch.equal(weighted, plain)


def test_clip_skip_takes_an_earlier_layer(sd1):
    skip1 = PromptEncoder(sd1, clip_skip=1).encode("a cat").embeds
    skip2 = PromptEncoder(sd1, clip_skip=2).encode("a cat").embeds
    encoder = sd1.text_encoders["text_encoder"]
    tokens = torch.tensor([tokenize(sd1.tokenizers["text_encoder"], "a cat").chunks[0].tokens])
    hidden = encoder(input_ids=tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(skip2, encoder.final_layer_norm(hidden[-2]))
    assert not torch.equal(skip1, skip2)


def _record_conditioning(easel, monkeypatch, prompt, steps=6):
    """Run a real generation and record the text conditioning the UNet saw at every call."""
    from webui.core.request import GenerationRequest

    model = easel.models.get("tiny-sd1.safetensors")
    seen = []
    handle = model.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        easel.txt2img(GenerationRequest(prompt=prompt, steps=steps, width=64, height=64, seed=1, cfg_scale=7,
                                        sampler_name="Euler", checkpoint="tiny-sd1.safetensors", save_images=False))
    finally:
        handle.remove()
    encoder = PromptEncoder(model)
    return seen, encoder


def _which(call: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str:
    cond = call[1:2]  # [uncond, cond] batch
    return next(name for name, c in candidates.items() if torch.allclose(cond, c, atol=1e-6))


def test_prompt_editing_switches_at_the_right_step(easel, monkeypatch):
    seen, encoder = _record_conditioning(easel, monkeypatch, "a [cat:dog:2]", steps=6)
    candidates = {"cat": encoder.encode("a cat").embeds, "dog": encoder.encode("a dog").embeds}
    assert [_which(c, candidates) for c in seen] == ["cat", "cat", "cat", "dog", "dog", "dog"]


def test_alternation_alternates(easel, monkeypatch):
    seen, encoder = _record_conditioning(easel, monkeypatch, "a [cat|dog]", steps=6)
    candidates = {"cat": encoder.encode("a cat").embeds, "dog": encoder.encode("a dog").embeds}
    # AUTOMATIC1111 repeats the first option once at the start, then alternates every step
    assert [_which(c, candidates) for c in seen] == ["cat", "cat", "dog", "cat", "dog", "cat"]


def test_and_combines_weighted_predictions(sd1):
    from webui.core.denoiser import CFGDenoiser

    encoder = PromptEncoder(sd1)
    cond = encoder.encode_scheduled(schedule_prompt("a cat AND a dog :0.5", 4))
    uncond = encoder.encode_scheduled(schedule_prompt("", 4))
    denoiser = CFGDenoiser(sd1, cond, uncond, 6.0, 1, encoder.encode(""))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = denoiser.predict(x, 500.0)
    t = torch.tensor([500.0])

    def unet(text):
        return sd1.unet(x, t, encoder_hidden_states=encoder.encode(text).embeds).sample

    u, c1, c2 = unet(""), unet("a cat "), unet(" a dog")
    torch.testing.assert_close(out, u + 6.0 * (1.0 * (c1 - u) + 0.5 * (c2 - u)), rtol=1e-4, atol=1e-4)


def test_long_prompts_and_negatives_of_different_length_generate(easel):
    from webui.core.request import GenerationRequest

    long_prompt = ", ".join(f"word{i}" for i in range(120))
    result = easel.txt2img(GenerationRequest(prompt=long_prompt, negative_prompt="x", steps=2, width=64, height=64,
                                             seed=1, checkpoint="tiny-sdxl.safetensors", save_images=False))
    assert len(result.images) == 1
    assert schedule_prompt(long_prompt, 2).parts[0][0][0].text == long_prompt
