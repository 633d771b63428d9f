"""Wildcards and dynamic prompts: syntax and files (through the dynamicprompts library), per-image draws
from the image seed, combinatorial runs, infotext and paste, Dynamic Prompts' args; on tiny models."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest, ValidationError
from webui.core.processing import alike_runs
from webui.core.pipeline import ImagePrompt
from webui.features.wildcards import WildcardFolder
from webui.pnginfo import infotext_to_fields

from conftest import make_easel

DP = "dynamic prompts v2.17.1"


def write_wildcards(folder) -> None:
    (folder / "colors").mkdir(parents=True, exist_ok=True)
    (folder / "colors" / "warm.txt").write_text("# warm colours\norange\n\nyellow\n", encoding="utf-8")
    (folder / "colors" / "cool.txt").write_text("blue\ngreen\n", encoding="utf-8")
    (folder / "animals.yaml").write_text("animals:\n  pets:\n    - cat\n    - dog\n", encoding="utf-8")
    (folder / "moods.json").write_text(json.dumps({"moods": ["calm", "wild"]}), encoding="utf-8")
    (folder / "odd.txt").write_text("__init__ style\n", encoding="utf-8")   # drawn text that looks like syntax


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("wildcards")
    write_wildcards(root / "data" / "wildcards")
    easel = make_easel(root, tiny_ckpt_dir)
    yield easel
    easel.close()


def request(prompt: str, args, **kw) -> GenerationRequest:
    base = dict(prompt=prompt, steps=2, width=64, height=64, seed=100, sampler_name="Euler",
                checkpoint="tiny-sd1.safetensors", save_images=False, alwayson_scripts={DP: {"args": args}})
    base.update(kw)
    return GenerationRequest(**base)


def prompts(result) -> list[str]:
    return [parse_infotext(text).prompt for text in result.infotexts]


def test_syntax_and_file_formats(tmp_path):
    write_wildcards(tmp_path)
    folder = WildcardFolder(tmp_path)
    assert folder.names() == ["animals/pets", "colors/cool", "colors/warm", "moods", "odd"]
    assert sorted(folder.combinations("__colors/warm__", 10)) == ["orange", "yellow"]     # comments, blank lines
    assert sorted(folder.combinations("__colors/*__", 10)) == ["blue", "green", "orange", "yellow"]   # a glob
    assert sorted(folder.combinations("__animals/pets__ __moods__", 10)) == ["cat calm", "cat wild", "dog calm",
                                                                           "dog wild"]  # yaml and json
    for text in folder.draw("{2$$ and $$a|b|c}", 20, list(range(20))):
        first, second = text.split(" and ")
        assert {first, second} <= {"a", "b", "c"} and first != second
    counts = folder.draw("{1-3$$a|b|c}", 30, list(range(30)))
    assert {len(t.split(",")) for t in counts} == {1, 2, 3}
    weighted = folder.draw("{0.05::rare|10::common}", 200, list(range(200)))
    assert weighted.count("common") > 150
    # the same seed draws the same prompt, whatever else is drawn around it
    assert folder.draw("{a|b|c|d|e} __colors/*__", 3, [7, 8, 9])[1] == folder.draw("{a|b|c|d|e} __colors/*__", 1, [8])[0]


def test_alike_runs_split_batches_by_prompt_and_consecutive_seed():
    images = [ImagePrompt("a", "", 1), ImagePrompt("a", "", 2), ImagePrompt("b", "", 3), ImagePrompt("b", "", 4)]
    assert [len(run) for run in alike_runs(images, 4)] == [2, 2]
    assert [len(run) for run in alike_runs(images, 1)] == [1, 1, 1, 1]
    fixed = [ImagePrompt("a", "", 5), ImagePrompt("a", "", 5)]
    assert [len(run) for run in alike_runs(fixed, 2)] == [1, 1]


def test_random_draws_follow_each_image_seed(app):
    template = "a {red|green|blue|pink|gold|grey} fox, __colors/*__"
    batch = app.generate(request(template, [True], batch_size=2, n_iter=2, seed=100,
                                 negative_prompt="{blurry|dark}"))
    assert batch.seeds == [100, 101, 102, 103]
    assert len(set(prompts(batch))) > 1
    for text in batch.infotexts:
        info = parse_infotext(text)
        assert info.params["Template"] == template and info.params["Negative Template"] == "{blurry|dark}"
        assert "{" not in info.prompt and info.negative_prompt in ("blurry", "dark")
    alone = app.generate(request(template, [True], seed=102, negative_prompt="{blurry|dark}"))
    assert prompts(alone) == [prompts(batch)[2]]
    assert parse_infotext(alone.infotexts[0]).negative_prompt == parse_infotext(batch.infotexts[2]).negative_prompt
    # the drawn prompt is what was generated: the same request without wildcards gives the same pixels
    plain = app.generate(request(prompts(alone)[0], [False], seed=102,
                                 negative_prompt=parse_infotext(alone.infotexts[0]).negative_prompt))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(alone.images[0]))


def test_combinatorial_makes_every_combination_once(app):
    result = app.generate(request("{a|b} fox, __colors/warm__", {"is_enabled": True, "is_combinatorial": True},
                                  batch_size=2))
    assert sorted(prompts(result)) == ["a fox, orange", "a fox, yellow", "b fox, orange", "b fox, yellow"]
    assert result.seeds == [100, 101, 102, 103]
    capped = app.generate(request("{a|b|c} {d|e}", {"is_enabled": True, "is_combinatorial": True,
                                                    "max_generations": 3}))
    assert prompts(capped) == ["a d", "a e", "b d"]
    fixed = app.generate(request("{a|b}", {"is_enabled": True, "is_combinatorial": True, "use_fixed_seed": True,
                                           "combinatorial_batches": 2}))
    assert prompts(fixed) == ["a", "b", "a", "b"] and fixed.seeds == [100, 100, 101, 101]


def test_off_or_nothing_to_draw_runs_the_request_as_it_is(app):
    base = app.generate(request("a fox", [False], batch_size=2))
    for args in ([True], {"is_enabled": True}, None):
        same = app.generate(request("a fox", args, batch_size=2) if args is not None else
                            replace(request("a fox", [False], batch_size=2), alwayson_scripts={}))
        assert same.infotexts == base.infotexts and "Template" not in same.infotexts[0]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(same.images, base.images))


def test_bad_templates_and_options_name_the_field(app):
    cases = [(request("a __nowhere__ fox", [True]), "prompt"),
             (request("a {red|blue fox", [True]), "prompt"),
             (request("a fox", [True], negative_prompt="__missing/*__"), "negative_prompt"),
             (request("a fox", [True, False, 1, True]), f"alwayson_scripts.{DP}.args.is_magic_prompt"),
             (request("a fox", {"is_enabled": True, "max_generations": 5000}),
              f"alwayson_scripts.{DP}.args.max_generations"),
             (request("a fox", {"is_enabled": True, "bogus": 1}), f"alwayson_scripts.{DP}.args")]
    for bad, field in cases:
        with pytest.raises(ValidationError) as caught:
            app.engine.prepare(bad)
        assert [e.field for e in caught.value.errors] == [field], caught.value.errors


def test_paste_restores_the_template():
    text = ('a red fox\nNegative prompt: dark\nSteps: 2, Sampler: Euler, Seed: 5, Size: 64x64, '
            'Template: "a {red|blue} fox", Negative Template: "{dark|dim}"')
    fields = infotext_to_fields(parse_infotext(text))
    assert fields["prompt"] == "a {red|blue} fox" and fields["negative_prompt"] == "{dark|dim}"
    assert fields["dynamic_prompts"] is True
    assert "dynamic_prompts" not in infotext_to_fields(parse_infotext("a fox\nSteps: 2, Sampler: Euler, Seed: 5"))


def test_prompt_comments_and_disabled_extra_networks(app):
    from webui.core.prompt_plan import strip_comments

    assert strip_comments("a fox\n# a note\nin snow # and more") == "a fox\nin snow "
    commented = app.generate(request("a fox\n# a note for me", [False], override_settings={}))
    plain = app.generate(request("a fox", [False]))
    assert parse_infotext(commented.infotexts[0]).prompt == "a fox"
    assert np.array_equal(np.asarray(commented.images[0]), np.asarray(plain.images[0]))
    kept = app.generate(request("a fox\n# a note", [False], override_settings={"enable_prompt_comments": False}))
    assert parse_infotext(kept.infotexts[0]).prompt == "a fox\n# a note"
    tagged = app.generate(request("a fox <lora:nowhere:1>", [False]))
    assert any("nowhere" in w for w in tagged.warnings)
    ignored = app.generate(request("a fox <lora:nowhere:1>", [False], disable_extra_networks=True))
    assert not any("nowhere" in w for w in ignored.warnings)


def test_a_drawn_text_is_not_drawn_again(app):
    result = app.generate(request("a __odd__ fox", [True]))
    assert prompts(result) == ["a __init__ style fox"]
