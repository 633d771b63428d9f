"""GGUF checkpoints: a tiny SD 1.x checkpoint written as GGUF (Q8_0 2-D weights, F32 the rest) loads
through the model manager and generates nearly the image its safetensors original makes; the library
and the load notes show the quantization (UNet-only GGUF files: test_unet_only_files.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from tests.conftest import make_easel
from webui.core.request import GenerationRequest
from webui.model_manager.gguf import read_gguf_tensors, write_gguf_checkpoint


@pytest.fixture(scope="module")
def gguf_world(tmp_path_factory, tiny_ckpt_dir):
    root = tmp_path_factory.mktemp("gguf")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    shutil.copy(tiny_ckpt_dir / "tiny-sd1.safetensors", ckpts / "tiny-sd1.safetensors")
    shutil.copy(tiny_ckpt_dir / "tiny-sd1.json", ckpts / "tiny-sd1.json")
    tensors = load_file(str(ckpts / "tiny-sd1.safetensors"))
    write_gguf_checkpoint(ckpts / "tiny-sd1-q8.gguf", tensors, "Q8_0", "sd1")
    shutil.copy(tiny_ckpt_dir / "tiny-sd1.json", ckpts / "tiny-sd1-q8.json")  # the tiny model's sizes
    write_gguf_checkpoint(ckpts / "tiny-sd1-q8conv.gguf", tensors, "Q8_0", "sd1", convs=True)
    shutil.copy(tiny_ckpt_dir / "tiny-sd1.json", ckpts / "tiny-sd1-q8conv.json")
    easel = make_easel(root, ckpts)
    yield easel, ckpts, tensors
    easel.close()


def _image(easel, checkpoint: str) -> np.ndarray:
    request = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=11, sampler_name="Euler",
                                checkpoint=checkpoint, save_images=False)
    return np.asarray(easel.generate(request).images[0], dtype=np.float32)


def test_tensors_keep_shapes_and_types(gguf_world):
    _, ckpts, original = gguf_world
    tensors, types = read_gguf_tensors(ckpts / "tiny-sd1-q8.gguf")
    assert set(tensors) == set(original)
    assert all(tuple(tensors[k].shape) == tuple(v.shape) for k, v in original.items())
    quantized = [k for k, t in types.items() if t == "Q8_0"]
    assert quantized and all(original[k].ndim == 2 for k in quantized)
    assert "F32" in types.values()
    key = quantized[0]
    error = (tensors[key] - original[key].float()).abs().max() / original[key].abs().max()
    assert 0 < error < 0.02  # really quantized, and Q8_0-close


def test_gguf_checkpoint_generates_close_to_original(gguf_world):
    easel, _, _ = gguf_world
    names = [c.name for c in easel.models.checkpoints()]
    assert "tiny-sd1-q8.gguf" in names
    assert easel.models.find("tiny-sd1-q8.gguf").format == "gguf"
    reference = _image(easel, "tiny-sd1.safetensors")
    quantized = _image(easel, "tiny-sd1-q8.gguf")
    assert np.isfinite(quantized).all() and quantized.shape == (64, 64, 3)
    difference = np.abs(quantized - reference).mean()
    print(f"\nGGUF Q8_0 vs safetensors: mean |diff| {difference:.3f} of 255")
    assert difference < 4, f"mean pixel difference {difference:.2f} of 255"
    model = easel.models.current
    assert model.info.name == "tiny-sd1-q8.gguf"
    assert any("Q8_0" in note for note in model.notes)
    assert any(note.startswith("GGUF kept quantized in memory") for note in model.notes)  # any family's UNet too


def test_library_shows_quantization(gguf_world):
    easel, _, _ = gguf_world
    easel.library.refresh()
    entry = next(e for e in easel.library.entries() if e.name == "tiny-sd1-q8.gguf")
    assert entry.kind == "checkpoint" and entry.format == "gguf"
    assert entry.quantization.startswith(("Q8_0", "F32")) and "Q8_0" in entry.quantization
    assert entry.architecture == "SD 1.x"


def test_conv_weights_stay_quantized_and_the_image_stays_close(gguf_world):
    """Conv kernels stored flattened to rows (ComfyUI-GGUF's orig_shape field) keep their Q8_0 blocks in
    GGUFConv2d layers, the text encoders' Linear layers in GGUFLinear, and the picture stays close."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from webui.model_manager.gguf_quantized import GGUFConv2d

    easel, _, _ = gguf_world
    reference = _image(easel, "tiny-sd1.safetensors")
    quantized = _image(easel, "tiny-sd1-q8conv.gguf")
    model = easel.models.current
    assert model.info.name == "tiny-sd1-q8conv.gguf"
    convs = [m for m in model.unet.modules() if isinstance(m, GGUFConv2d)]
    assert convs and all(m.weight.quant_type.name == "Q8_0" for m in convs)
    # every convolution whose kernel rows fit a Q8_0 block was kept quantized
    assert not [m for m in model.unet.modules() if type(m) is torch.nn.Conv2d and m.weight[0].numel() % 32 == 0]
    assert any(isinstance(m, GGUFLinear) for m in model.text_encoders["text_encoder"].modules())
    difference = np.abs(quantized - reference).mean()
    print(f"\nGGUF Q8_0 with conv kernels vs safetensors: mean |diff| {difference:.3f} of 255")
    assert difference < 4, f"mean pixel difference {difference:.2f} of 255"


def test_a_lora_patches_a_quantized_conv_and_restores_it(gguf_world):
    """A LoRA's change to a GGUFConv2d (delta in the rows shape the patcher asks for): while on, a plain
    Conv2d with the dequantized kernel plus the change; restored, the same quantized blocks."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from webui.features.lora_formats import quantized_patch
    from webui.model_manager.gguf_quantized import GGUFConv2d

    easel, _, _ = gguf_world
    model = easel.models.get("tiny-sd1-q8conv.gguf")
    conv = next(m for m in model.unet.modules() if isinstance(m, GGUFConv2d) and m.kernel_size == (3, 3))
    blocks = conv.weight
    x = torch.randn(1, conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    delta = torch.full(tuple(blocks.quant_shape), 1e-2)
    kernel = dequantize_gguf_tensor(blocks).float().reshape(conv.out_channels, -1, 3, 3)
    backup = quantized_patch(conv, delta)
    try:
        assert type(conv) is torch.nn.Conv2d
        expected = torch.nn.functional.conv2d(x, kernel + 1e-2, conv.bias, conv.stride, conv.padding)
        assert torch.allclose(conv(x), expected, atol=1e-5)
    finally:
        backup.restore(conv)
    assert type(conv) is GGUFConv2d and conv.weight is blocks


def test_token_embeddings_stay_quantized_and_look_up_the_dequantized_rows(gguf_world):
    """The text encoder's token table keeps its Q8_0 blocks (GGUFEmbedding, 1.06 bytes a value) and gives
    exactly the rows of the dequantized table."""
    import torch
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from webui.model_manager.gguf_quantized import GGUFEmbedding

    easel, _, _ = gguf_world
    model = easel.models.get("tiny-sd1-q8.gguf")
    table = model.text_encoders["text_encoder"].get_input_embeddings()
    assert isinstance(table, GGUFEmbedding)
    assert table.weight.dtype == torch.uint8 and table.weight.quant_type.name == "Q8_0"
    assert table.weight.nbytes < table.num_embeddings * table.embedding_dim * 1.1
    ids = torch.tensor([[0, 5, 7, 5, table.num_embeddings - 1]])
    expected = torch.nn.functional.embedding(ids, dequantize_gguf_tensor(table.weight).float())
    assert torch.equal(table(ids), expected)


def test_textual_inversion_puts_its_vectors_into_a_quantized_table(gguf_world):
    """An embedding file on a GGUF checkpoint: its vectors take the name's place in the quantized table's output
    (textual inversion's forward hook on get_input_embeddings), and change the prompt's encoding."""
    import torch
    from safetensors.torch import save_file

    from webui.core.conditioning import PromptEncoder
    from webui.features.embeddings import read_embedding

    easel, _, _ = gguf_world
    model = easel.models.get("tiny-sd1-q8.gguf")
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    path = easel.paths.model_dir("embedding") / "ggufstyle.safetensors"
    save_file({"emb_params": vectors}, str(path))
    embedding = read_embedding(path, allow_pickle=False)
    encoder = model.text_encoders["text_encoder"]
    text = getattr(encoder, "text_model", encoder).embeddings  # token table + positions
    seen = []
    handle = text.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        with_vectors = PromptEncoder(model, embeddings=[embedding]).encode("a ggufstyle dog").embeds
        without = PromptEncoder(model).encode("a ggufstyle dog").embeds
    finally:
        handle.remove()
    positions = text.position_embedding(torch.arange(2, 4))
    assert torch.allclose(seen[0][0, 2:4], vectors + positions, atol=1e-6)  # after the start token and "a"
    assert not torch.equal(with_vectors, without)


def test_a_tied_table_is_read_once(tmp_path):
    """T5's `shared` table is also its `encoder.embed_tokens` (saved once; the loader gives both keys the same
    file tensor): kept quantized, both modules hold one table, read once."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from webui.model_manager.gguf_quantized import GGUFEmbedding, quantize_layers
    from webui.model_manager.lazy_tensors import gguf_tensors

    path = write_gguf_checkpoint(tmp_path / "t5.gguf", {"shared.weight": torch.randn(64, 32)}, "Q8_0", "t5")
    stored = gguf_tensors(path)["shared.weight"]
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    done = quantize_layers(model, {"shared.weight": stored, "encoder.embed_tokens.weight": stored}, torch.float32)
    assert done == {"shared.weight", "encoder.embed_tokens.weight"}
    assert isinstance(model.shared, GGUFEmbedding) and isinstance(model.encoder.embed_tokens, GGUFEmbedding)
    assert model.shared.weight is model.encoder.embed_tokens.weight
    assert model.shared.weight.quant_type.name == "Q8_0"


def test_a_big_kernel_runs_in_slices_with_the_whole_kernels_result(monkeypatch):
    """GGUFConv2d dequantizes a kernel bigger than CONV_SLICE_BYTES a slice of output channels at a time; the
    output is the whole dequantized kernel's convolution."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from webui.model_manager import gguf_quantized

    conv = gguf_quantized.GGUFConv2d(32, 12, 3, padding=1)
    conv.compute_dtype = torch.float32
    kernel = torch.randn(12, 8 * 4 * 9, generator=torch.Generator().manual_seed(0))  # rows of 288: 9 blocks
    conv.weight = GGUFParameter(torch.from_numpy(quantize(kernel.numpy(), GGMLQuantizationType.Q8_0)),
                                quant_type=GGMLQuantizationType.Q8_0)
    x = torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(1))
    whole = dequantize_gguf_tensor(conv.weight).float().reshape(12, 32, 3, 3)
    expected = torch.nn.functional.conv2d(x, whole, conv.bias, padding=1)
    slices = []
    real = gguf_quantized.GGUFConv2d._kernel
    monkeypatch.setattr(gguf_quantized.GGUFConv2d, "_kernel",
                        lambda self, start, stop: slices.append(stop - start) or real(self, start, stop))
    monkeypatch.setattr(gguf_quantized, "CONV_SLICE_BYTES", 5 * 32 * 9 * 4)  # five output channels a slice
    with torch.no_grad():
        out = conv(x)
    assert slices == [5, 5, 2]
    assert torch.allclose(out, expected, atol=1e-5)


def test_a_quantized_vae_retries_nans_in_fp32(tmp_path, gguf_world):
    """The GGUF VAE keeps its blocks (GGUFConv2d) and computes in the VAE's dtype: a half-precision decode that
    gives NaN switches it, quantized layers included, to fp32, and the image comes out whole."""
    import torch

    from webui.model_manager.gguf_quantized import GGUFConv2d

    _, ckpts, _ = gguf_world
    easel = make_easel(tmp_path, ckpts, precision="fp16")
    try:
        model = easel.models.get("tiny-sd1-q8conv.gguf")
        convs = [m for m in model.vae.modules() if isinstance(m, GGUFConv2d)]
        assert convs and {m.compute_dtype for m in convs} == {torch.float16}

        def nan_in_half(module, args, output):
            return torch.full_like(output, float("nan")) if output.dtype == torch.float16 else None

        hook = model.vae.decoder.register_forward_hook(nan_in_half)
        try:
            image = _image(easel, "tiny-sd1-q8conv.gguf")
        finally:
            hook.remove()
        assert model.vae_upcast and {m.compute_dtype for m in convs} == {torch.float32}
        assert image.std() > 5  # a picture, not the black frame NaNs would give
    finally:
        easel.close()


def test_the_bench_breakdown_shows_every_component_quantized(gguf_world):
    """bench_weights' storage breakdown of a GGUF checkpoint with conv kernels: Q8_0 bytes in the UNet, the text
    encoder (token table included) and the VAE, and float32 only for what the file kept in F32."""
    from webui.bench_weights import breakdown_rows, storage_breakdown

    easel, _, _ = gguf_world
    model = easel.models.get("tiny-sd1-q8conv.gguf")
    breakdown = storage_breakdown(model)
    assert set(breakdown) == {"unet", "text_encoder", "vae"}
    for component, kinds in breakdown.items():
        assert kinds.get("Q8_0", 0) > kinds.get("float32", 0), (component, kinds)
    rows = dict(breakdown_rows("gguf-q8", {"breakdown": breakdown}))
    assert "Q8_0" in rows["gguf-q8: vae MiB"]
