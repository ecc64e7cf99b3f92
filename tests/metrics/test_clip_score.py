"""CLIP score: the graph phrase, the score formula, loading an open_clip checkpoint file (a random-init tiny
model saved as ``open_clip_pytorch_model.bin``, open_clip's own format), and unavailability without weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmark import registry
from benchmark.data.shapes import ShapesDataset
from benchmark.interfaces import EvalInputs, MetricUnavailable
from benchmark.metrics import clip_score as cs
from benchmark.text_encoders.clip import TINY_MODEL, register_tiny_config


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import open_clip

    register_tiny_config()
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture()
def no_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("SG2I_CLIP_WEIGHTS", raising=False)
    monkeypatch.setattr(cs, "OPENAI_URL_CACHE", "~/.cache/clip")  # open_clip's default, under this HOME


def _data(n: int = 6) -> tuple[ShapesDataset, list]:
    ds = ShapesDataset.build("val", 32)
    return ds, [ds[i] for i in range(n)]


def _inputs(ds: ShapesDataset, items: list) -> EvalInputs:
    fake = (torch.stack([it.image for it in items]) * 255).round().to(torch.uint8)
    owners = torch.arange(len(items))
    return EvalInputs(
        "shapes", "val", 32, ds.vocab, fake, fake, owners, items, torch.device("cpu"), lambda s: ds
    )


def test_graph_phrase() -> None:
    ds, items = _data(1)
    it = items[0]
    names, preds = ds.vocab.object_idx_to_name, ds.vocab.pred_idx_to_name
    want = [
        f"{names[it.objs[s]]} {preds[p]} {names[it.objs[o]]}" for s, p, o in it.triples.tolist() if p != 0
    ]
    mentioned = {i for s, _, o in it.triples.tolist() for i in (s, o) if preds[_] != "__in_image__"}
    want += [
        names[o]
        for i, o in enumerate(it.objs.tolist())
        if i not in mentioned and not names[o].startswith("__")
    ]
    assert cs.graph_phrase(it, ds.vocab) == ", ".join(want)
    assert "__" not in cs.graph_phrase(it, ds.vocab)


def test_score_with_a_checkpoint_file(tiny_file: Path, no_caches: None) -> None:
    ds, items = _data()
    metric = cs.ClipScore(weights=f"{TINY_MODEL}:{tiny_file}")
    assert registry.get("metric", "clip_score").outputs == {"clip_score": True}
    inputs = _inputs(ds, items)
    out = metric.compute(inputs)
    # Independent check: the loaded weights are the file's, and the score is 100 * max(cosine, 0).
    model, preprocess, tokenizer = cs.load_clip(cs._encoder(f"{TINY_MODEL}:{tiny_file}"))
    state = torch.load(tiny_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    from PIL import Image

    x = torch.stack([preprocess(Image.fromarray(a.permute(1, 2, 0).numpy())) for a in inputs.fake])
    with torch.no_grad():
        cos = F.cosine_similarity(
            model.encode_image(x),
            model.encode_text(tokenizer([cs.graph_phrase(it, ds.vocab) for it in items])),
            dim=-1,
        )
    assert out["clip_score"] == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-5, abs=1e-6)
    (prov,) = metric.provenance()
    assert prov.random_init and "not the pinned ViT-B-32" in prov.source and prov.sha256


def test_random_spec_is_flagged(no_caches: None) -> None:
    ds, items = _data(3)
    metric = cs.ClipScore(weights=f"random:{TINY_MODEL}")
    out = metric.compute(_inputs(ds, items))
    assert 0.0 <= out["clip_score"] <= 100.0
    assert metric.provenance()[0].random_init


def test_unavailable_without_weights(
    no_caches: None, tiny_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, items = _data(2)
    with pytest.raises(MetricUnavailable, match="no ViT-B-32 \\(openai\\) weights in the local caches"):
        cs.ClipScore().compute(_inputs(ds, items))
    monkeypatch.setenv("SG2I_CLIP_WEIGHTS", str(tiny_file))  # a bare file must hold ViT-B-32: it does not
    with pytest.raises(MetricUnavailable, match="could not load"):
        cs.ClipScore().compute(_inputs(ds, items))


def test_finds_openai_weights_in_the_hugging_face_cache(tmp_path: Path, no_caches: None) -> None:
    assert cs.cached_openai_file() is None
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"x")
    assert cs.cached_openai_file() == snap / "open_clip_pytorch_model.bin"
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").unlink()
    (tmp_path / ".cache" / "clip" / "ViT-B-32.pt").write_bytes(b"x")
    assert cs.cached_openai_file() == tmp_path / ".cache" / "clip" / "ViT-B-32.pt"
