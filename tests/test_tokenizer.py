"""The CLIP tokenizer is rebuilt offline from open_clip's merges file; ids must match CLIP's."""
from webui.model_manager.tokenizer import VOCAB_SIZE, clip_tokenizer, clip_vocab_and_merges


def test_vocabulary_has_clip_size_and_special_tokens():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == VOCAB_SIZE
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0
    assert len(merges) == 48894


def test_known_prompt_token_ids():
    tokenizer = clip_tokenizer()
    # "a photo of a cat" in the published CLIP vocabulary
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_pad_tokens_per_encoder_family():
    assert clip_tokenizer().pad_token_id == 49407   # CLIP ViT-L pads with the end token
    assert clip_tokenizer("!").pad_token_id == 0     # OpenCLIP encoders pad with "!"
