"""NodeEmbedding: learned vs frozen text table + projection, gradients, lazy table, checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from benchmark.nn.embedding import NodeEmbedding
from benchmark.text_encoders.base import WeightsUnavailable

PHRASES = ["image", "red circle", "blue square", "green triangle"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("SG2I_CLIP_WEIGHTS", raising=False)


def no_encoder(monkeypatch) -> None:
    """Make any text-encoder run fail: loading must work from the state dict alone."""
    import benchmark.text_encoders.base as base

    def boom(*args, **kwargs):
        raise AssertionError("the text encoder ran")

    monkeypatch.setattr(base, "embedding_table", boom)


def test_learned() -> None:
    m = NodeEmbedding(PHRASES, 16)
    y = m(torch.tensor([0, 3, 3]))
    assert y.shape == (3, 16)
    assert m.provenance() == []
    assert [n for n, _ in m.named_parameters()] == ["embedding.weight"]
    assert list(m.state_dict()) == ["embedding.weight"]


def test_text_frozen_table_and_projection() -> None:
    m = NodeEmbedding(PHRASES, 16, encoder="clip", weights="random")
    assert not m.materialized  # lazy: the constructor does not run the encoder
    names = [n for n, _ in m.named_parameters()]
    assert names == ["proj.weight", "proj.bias"]
    y = m(torch.tensor([[1, 2], [0, 3]]))
    assert y.shape == (2, 2, 16) and m.materialized
    assert not m.table.requires_grad and "table" in dict(m.named_buffers())
    y.sum().backward()
    assert m.proj.weight.grad is not None and m.proj.weight.grad.abs().sum() > 0
    assert m.table.grad is None
    (prov,) = m.provenance()
    assert prov.random_init is True and "clip" in prov.name


def test_minilm_provenance_real() -> None:
    m = NodeEmbedding(PHRASES, 8, encoder="minilm")
    (prov,) = m.provenance()
    assert prov.random_init is False and len(prov.sha256) == 64
    assert m.table.shape == (4, 384)


def test_materialize_in_inference_mode_then_train() -> None:
    m = NodeEmbedding(PHRASES, 8, encoder="clip", weights="random")
    with torch.inference_mode():
        m(torch.tensor([1]))
    m(torch.tensor([1, 2])).sum().backward()  # the buffer is a normal tensor, usable for training
    assert m.proj.weight.grad is not None


def test_checkpoint_round_trip_without_encoder(monkeypatch) -> None:
    src = NodeEmbedding(PHRASES, 16, encoder="clip", weights="random")
    with torch.no_grad():
        src.proj.weight.add_(1.0)  # "trained"
    sd = src.state_dict()
    idx = torch.tensor([0, 1, 2, 3])
    no_encoder(monkeypatch)
    dst = NodeEmbedding(PHRASES, 16, encoder="clip", weights="random")
    dst.load_state_dict(sd)
    assert dst.materialized
    assert torch.equal(dst(idx), src(idx))
    assert dst.provenance() == src.provenance()


def test_round_trip_through_project_checkpoint(tmp_path, monkeypatch) -> None:
    """safetensors checkpoints hold tensors only: provenance travels as a uint8 buffer."""
    from benchmark.checkpoint import load_checkpoint, save_checkpoint

    src = NodeEmbedding(PHRASES, 16, encoder="data2vec", weights="random")
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, src.state_dict(), {"method": "test"})
    no_encoder(monkeypatch)
    _, state, _ = load_checkpoint(path)
    dst = NodeEmbedding(PHRASES, 16, encoder="data2vec", weights="random")
    dst.load_state_dict(state)
    assert torch.equal(dst(torch.tensor([2])), src(torch.tensor([2])))
    assert dst.provenance() == src.provenance() and dst.provenance()[0].random_init is True


def test_unavailable_weights_are_lazy(monkeypatch) -> None:
    """Building with missing weights succeeds; only running the encoder fails; a checkpoint fills the table."""
    m = NodeEmbedding(PHRASES, 16, encoder="clip")  # default OpenAI weights: not available offline
    with pytest.raises(WeightsUnavailable, match="SG2I_CLIP_WEIGHTS"):
        m(torch.tensor([0]))
    src = NodeEmbedding(PHRASES, 16, encoder="clip", weights="random")  # 32-d table vs 512-d default guess
    sd = src.state_dict()
    m.load_state_dict(sd)
    assert m.table.shape == (4, 32) and m.proj.in_features == 32
    assert torch.equal(m(torch.tensor([1, 2])), src(torch.tensor([1, 2])))
    assert m.provenance()[0].random_init is True


def test_empty_phrases_rejected() -> None:
    with pytest.raises(ValueError, match="phrase"):
        NodeEmbedding([], 8)
