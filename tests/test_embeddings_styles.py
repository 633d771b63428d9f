"""Textual-inversion embeddings and prompt styles."""
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from webui.core.conditioning import PromptEncoder, tokenize
from webui.core.infotext import parse_infotext
from webui.core.request import GenerationRequest
from webui.core.styles import PromptStyle, StyleStore
from webui.features.embeddings import EmbeddingIndex, read_embedding

from conftest import make_easel


def generate(app, prompt, checkpoint="tiny-sd1.safetensors", **kw):
    return app.txt2img(GenerationRequest(prompt=prompt, steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                                         checkpoint=checkpoint, save_images=False, **kw))


def px(result):
    return np.asarray(result.images[0]).astype(np.int16)


@pytest.fixture
def app(tmp_path, tiny_ckpt_dir):
    app = make_easel(tmp_path, tiny_ckpt_dir)
    yield app
    app.close()


def test_embedding_changes_output_and_unknown_tokens_do_not(app):
    before_with_word = generate(app, "a photo of shinytoken")
    plain = generate(app, "a photo of a cat")
    folder = app.paths.model_dir("embedding")
    save_file({"emb_params": torch.randn(3, 32, generator=torch.Generator().manual_seed(1))},
              str(folder / "shinytoken.safetensors"))
    with_embedding = generate(app, "a photo of shinytoken")
    unrelated = generate(app, "a photo of a cat")
    assert np.abs(px(before_with_word) - px(with_embedding)).mean() > 1
    assert np.array_equal(px(plain), px(unrelated))
    info = parse_infotext(with_embedding.infotexts[0])
    assert info.params["TI hashes"].startswith("shinytoken: ")
    assert "TI hashes" not in parse_infotext(unrelated.infotexts[0]).params


def test_embedding_vectors_take_the_names_place(app):
    model = app.models.get("tiny-sd1.safetensors")
    folder = app.paths.model_dir("embedding")
    vectors = torch.randn(2, 32)
    save_file({"emb_params": vectors}, str(folder / "mystyle.safetensors"))
    embedding = read_embedding(folder / "mystyle.safetensors", allow_pickle=False)
    tokenizer = model.tokenizers["text_encoder"]
    index = EmbeddingIndex(tokenizer, [embedding], "clip_l", 32)
    result = tokenize(tokenizer, "a mystyle dog", index)
    chunk = result.chunks[0]
    assert result.token_count == 4  # a + 2 vectors + dog
    assert chunk.fixes[0][0] == 2 and torch.equal(chunk.fixes[0][1], vectors)
    encoder = PromptEncoder(model, embeddings=[embedding])
    assert encoder.encode("a mystyle dog").embeds.shape == (1, 77, 32)
    assert "mystyle" in encoder.used_embeddings


def test_sdxl_embedding_with_clip_l_and_clip_g(app):
    folder = app.paths.model_dir("embedding")
    plain = generate(app, "xlemb portrait", checkpoint="tiny-sdxl.safetensors")
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 32)}, str(folder / "xlemb.safetensors"))
    with_embedding = generate(app, "xlemb portrait", checkpoint="tiny-sdxl.safetensors")
    assert np.abs(px(plain) - px(with_embedding)).mean() > 1


def test_embedding_of_wrong_width_is_ignored(app):
    folder = app.paths.model_dir("embedding")
    plain = generate(app, "wideone portrait")
    save_file({"emb_params": torch.randn(1, 768)}, str(folder / "wideone.safetensors"))  # a real SD1 embedding
    assert np.array_equal(px(plain), px(generate(app, "wideone portrait")))


def test_styles_file_round_trip_and_application(tmp_path):
    store = StyleStore(tmp_path / "styles.csv")
    store.save(PromptStyle("cinematic", "cinematic still of {prompt}, film grain", "cartoon"))
    store.save(PromptStyle("sharp", "sharp focus", ""))
    store.save(PromptStyle("quoted, name", 'a "quoted", prompt', "x"))
    assert store.names() == ["cinematic", "sharp", "quoted, name"]
    assert store.get("quoted, name").prompt == 'a "quoted", prompt'
    prompt, negative, missing = store.apply("a cat", "blurry", ["cinematic", "sharp", "nope"])
    assert prompt == "cinematic still of a cat, film grain, sharp focus"
    assert negative == "blurry, cartoon" and missing == ["nope"]
    assert store.delete("sharp") and store.names() == ["cinematic", "quoted, name"]
    header = (tmp_path / "styles.csv").read_text().splitlines()[0]
    assert header == "name,prompt,negative_prompt"


def test_styles_apply_at_generation_and_reach_infotext(app):
    app.engine.styles.save(PromptStyle("painterly", "oil painting of {prompt}", "photo"))
    result = generate(app, "a cat", styles=["painterly"])
    info = parse_infotext(result.infotexts[0])
    assert info.prompt == "oil painting of a cat" and info.negative_prompt == "photo"
    missing = generate(app, "a cat", styles=["ghost"])
    assert any("ghost" in w for w in missing.warnings)


def test_clip_skip_override_changes_image_and_infotext(app):
    plain = generate(app, "a cat")
    skipped = generate(app, "a cat", override_settings={"CLIP_stop_at_last_layers": 2})
    assert np.abs(px(plain) - px(skipped)).mean() > 1
    assert parse_infotext(skipped.infotexts[0]).params["Clip skip"] == "2"
    assert "Clip skip" not in parse_infotext(plain.infotexts[0]).params


def test_embeddings_are_model_store_entries_reread_when_the_file_changes(app):
    folder = app.paths.model_dir("embedding")
    path = folder / "shinytoken.safetensors"
    save_file({"emb_params": torch.randn(3, 32, generator=torch.Generator().manual_seed(1))}, str(path))
    generate(app, "a photo of shinytoken")
    [(key_path, mtime)] = app.models.store.keys("embedding")
    assert key_path == str(path) and mtime == path.stat().st_mtime
    [first] = app.embeddings.all()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(2))}, str(path))
    os.utime(path, (time.time() + 5, time.time() + 5))
    [second] = app.embeddings.all()
    assert second is not first and first.length == 3 and second.length == 2
    assert app.models.store.keys("embedding") == [(str(path), path.stat().st_mtime)]
