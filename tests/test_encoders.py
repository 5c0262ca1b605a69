import numpy as np
import pytest
import torch

from laionet.selection.encoders import EncoderError, canonical_spec, create_text_encoder, resolve_precision, spec_slug

COUGAR_TEXT = "cougar which is large American feline resembling a lion"


def test_specs_resolve_presets_and_reject_unknown_names() -> None:
    assert canonical_spec("clip") == "open_clip:ViT-B-32-quickgelu@openai"
    assert canonical_spec("minilm") == "st:all-MiniLM-L6-v2"
    assert spec_slug("clip") == "open_clip-ViT-B-32-quickgelu-openai"
    with pytest.raises(EncoderError, match="unknown text encoder 'bert'"):
        canonical_spec("bert")


def test_open_clip_text_tower_trims_padding_exactly(tiny_clip) -> None:
    encoder = create_text_encoder(f"open_clip:{tiny_clip}", device="cpu", precision="fp32")
    long_caption = "a mountain lion at dusk " * 40  # far beyond 77 tokens: truncated, never a crash
    texts = ["a lion", long_caption, "a lion", "", "Puma running shoes sale"]
    emb = encoder.encode(texts)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])  # duplicates encoded once, scattered back
    with torch.inference_mode():
        full = torch.nn.functional.normalize(encoder.model.encode_text(encoder.tokenizer(texts)), dim=-1).numpy()
    np.testing.assert_allclose(emb, full, atol=1e-5)  # trimmed to the batch's longest sequence == full 77 tokens
    encoder.autocast = "bf16"  # the same (random) weights under bf16 autocast
    half = encoder.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, rtol=1e-5)  # re-normalised in fp32
    assert np.abs(half - emb).max() < 0.05


def test_precision_rules() -> None:
    with pytest.raises(EncoderError, match="unknown precision 'int4'"):
        resolve_precision("int4", "cpu")
    with pytest.raises(EncoderError, match="'fp16' needs a GPU"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("auto", "cuda:0") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")


def test_open_clip_loads_a_local_checkpoint(tiny_clip, tmp_path) -> None:
    first = create_text_encoder(f"open_clip:{tiny_clip}", device="cpu")
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": first.model.state_dict()}, checkpoint)
    second = create_text_encoder(f"open_clip:{tiny_clip}@{checkpoint}", device="cpu")
    np.testing.assert_allclose(second.encode(["a lion"]), first.encode(["a lion"]), atol=1e-6)


def test_unknown_open_clip_model_or_weights_fail_before_any_work(tiny_clip) -> None:
    with pytest.raises(EncoderError, match="open_clip has no model 'ViT-Nope'"):
        create_text_encoder("open_clip:ViT-Nope", device="cpu")
    with pytest.raises(EncoderError, match="neither a checkpoint file nor a pretrained tag"):
        create_text_encoder(f"open_clip:{tiny_clip}@/no/such/file.pt", device="cpu")


def test_minilm_offline_ranks_the_animal_above_the_brand() -> None:
    """The paper's 'puma' example in spirit, with the real offline MiniLM weights."""
    encoder = create_text_encoder("minilm", device="cpu")
    assert encoder.dim == 384
    emb = encoder.encode([COUGAR_TEXT, "a mountain lion at dusk in the Rockies", "Puma running shoes sale -50%"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    animal, brand = emb[1] @ emb[0], emb[2] @ emb[0]
    assert animal > 0.4 > brand


def test_sentence_transformer_batches_are_small_on_the_cpu_and_do_not_change_embeddings() -> None:
    """Without a batch size the CPU gets ST_BATCH_CPU (small batches ran ~2x faster there); any batch size gives the
    same embeddings, as the cache key (which leaves the batch size out) assumes: equal within 1e-5 in fp32; in bf16
    (``auto`` on a CPU with native bf16) within bf16's own noise, since a batch's padding changes the sums (1.4e-3
    seen on an AVX512-BF16 CPU, under the ≤ 0.004 bf16 moves similarities by against fp32)."""
    from laionet.selection.encoders import ST_BATCH_CPU

    assert getattr(create_text_encoder("minilm", device="cpu"), "batch_size", None) == ST_BATCH_CPU < 256
    texts = [f"photo {i} of a {'very ' * (i % 9)}small cougar near a lake" for i in range(70)]
    for precision, tolerance in [("fp32", 1e-5), ("bf16", 5e-3)]:
        encoder = create_text_encoder("minilm", device="cpu", precision=precision)
        assert getattr(encoder, "batch_size", None) == ST_BATCH_CPU
        small = encoder.encode(texts)
        large = create_text_encoder("minilm", device="cpu", batch_size=256, precision=precision).encode(texts)
        np.testing.assert_allclose(small, large, atol=tolerance)


def test_sentence_transformer_that_cannot_load_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(EncoderError, match="cannot load sentence-transformers model"):
        create_text_encoder(f"st:{tmp_path / 'missing-model'}", device="cpu")
