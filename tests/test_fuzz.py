"""Property-based: random scene-graph JSON never escapes as anything but SceneGraphError (benchmark/scene_graph.py).

Documents are random JSON (nested junk, wrong types, NaN/Infinity, huge numbers), graph-shaped objects with
random names, indices, boxes and ids, lists of them, and raw bytes. Whatever ``load_graphs`` accepts goes on
through the generate path (collate, then sampling with a small SG2Im) and must give images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark import registry
from benchmark.batch import collate
from benchmark.config import build_run_config
from benchmark.evaluate import generate_images
from benchmark.scene_graph import MAX_OBJECTS, MAX_RELATIONSHIPS, SceneGraphError, file_stems, load_graphs
from benchmark.train import build_dataset, dataset_info

DS = build_dataset("shapes", "test", 32)
VOCAB = DS.vocab
OBJECTS = [n for n in VOCAB.object_idx_to_name if not n.startswith("__")]
PREDICATES = [n for n in VOCAB.pred_idx_to_name if not n.startswith("__")]
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)  # fmt: skip
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
names = st.one_of(st.sampled_from(OBJECTS), st.sampled_from(["__image__", "red circel", "", " red circle"]), junk)
preds = st.one_of(st.sampled_from(PREDICATES), st.sampled_from(["__in_image__", "on top of"]), junk)
index = st.one_of(st.integers(-2, 8), st.integers(-(2**40), 2**40), junk)
coord = st.one_of(st.floats(-0.5, 1.5), st.just(math.nan), st.integers(-1, 2), junk)
box = st.one_of(st.lists(coord, min_size=4, max_size=4), st.tuples(*[st.floats(0, 1)] * 4).map(sorted).map(
    lambda v: [v[0], v[1], v[2] if v[2] > v[0] else 1.0, v[3] if v[3] > v[1] else 1.0]), junk)  # fmt: skip
relationship = st.one_of(st.tuples(index, preds, index).map(list), st.lists(index, max_size=4), junk)


@st.composite
def graphs(draw: st.DrawFn) -> object:
    objects = draw(st.one_of(st.lists(names, max_size=6), st.lists(st.sampled_from(OBJECTS), min_size=1, max_size=6),
                             st.just([OBJECTS[0]] * (MAX_OBJECTS + 1)), junk))  # fmt: skip
    g: dict[str, object] = {}
    if draw(st.integers(0, 9)):  # sometimes no 'objects' at all
        g["objects"] = objects
    if draw(st.booleans()):
        g["relationships"] = draw(st.one_of(st.lists(relationship, max_size=6), junk))
    if draw(st.booleans()):
        n = len(objects) if isinstance(objects, list) else 2
        g["boxes"] = draw(st.one_of(st.lists(box, min_size=n, max_size=n), st.lists(box, max_size=3), junk))
    if draw(st.booleans()):
        g["image_id"] = draw(st.one_of(st.text(max_size=20), st.integers(), st.just("../../etc/passwd"), junk))
    if draw(st.integers(0, 9)) == 0:
        g[draw(st.text(max_size=6))] = draw(junk)
    return g


documents = st.one_of(graphs(), st.lists(graphs(), max_size=4), junk)


@pytest.fixture(scope="module")
def sg2im() -> torch.nn.Module:
    cfg = build_run_config("sg2im", "shapes", "smoke", device="cpu")
    torch.manual_seed(0)
    return registry.get("method", "sg2im")(cfg.method_cfg, dataset_info(DS, "1.0")).eval()


def _check(path: Path, method: torch.nn.Module) -> None:
    try:
        items = load_graphs(path, VOCAB)
    except SceneGraphError as e:
        assert str(path) in str(e)  # the message names the file
        return
    assert items and all(it.objs.numel() <= MAX_OBJECTS + 1 for it in items)
    for it in items:
        n = it.objs.numel()
        assert it.triples.numel() == 0 or (0 <= int(it.triples[:, [0, 2]].min()) and int(it.triples[:, [0, 2]].max()) < n)
        assert 0 <= int(it.objs.min()) and int(it.objs.max()) < VOCAB.num_objects
    batch = collate(items)
    idx = list(range(len(items)))
    images = generate_images(method, batch, 0, "generate", idx, 0, "pred", torch.device("cpu"))
    assert images.shape == (len(items), 3, 32, 32) and images.dtype == torch.uint8
    if all(bool(it.has_layout.all()) for it in items):
        generate_images(method, batch, 0, "generate", idx, 0, "gt", torch.device("cpu"))
    stems = file_stems([it.image_id for it in items])
    assert len(set(stems)) == len(stems) and all("/" not in s and not s.startswith(".") for s in stems)


@SETTINGS
@given(doc=documents)
def test_random_scene_graph_json(doc: object, sg2im: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "g.json"
    path.write_text(json.dumps(doc), encoding="utf-8")  # NaN / Infinity are written as such (Python's json reads them)
    _check(path, sg2im)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_random_bytes(raw: bytes, sg2im: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "g.json"
    path.write_bytes(raw)
    _check(path, sg2im)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"objects": [' + "9" * 5000 + "]}", "not valid JSON"),
        (json.dumps({"objects": ["red circle"] * (MAX_OBJECTS + 1)}), f"at most {MAX_OBJECTS} are supported"),
        (json.dumps({"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]] * (MAX_RELATIONSHIPS + 1)}),
         f"at most {MAX_RELATIONSHIPS} are supported"),  # fmt: skip
        (json.dumps({"objects": ["red circle"], "image_id": {"a": 1}}), "field 'image_id' must be a string"),
        (json.dumps({"objects": ["x" * 10_000]}), r"unknown object 'xxxxx.*\.\.\."),
        (json.dumps([]), "empty list of scene graphs"),
    ],
    ids=["deep", "huge-int", "objects", "relationships", "image-id", "long-name", "empty"],
)
def test_very_large_deep_or_odd_inputs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(SceneGraphError, match=message) as e:
        load_graphs(path, VOCAB)
    assert len(str(e.value)) < 2000  # a long bad value is shortened in the message


def test_directory_and_largest_graph_through_generate(tmp_path: Path, sg2im: torch.nn.Module) -> None:
    with pytest.raises(SceneGraphError, match="cannot read scene-graph file"):
        load_graphs(tmp_path, VOCAB)
    n = MAX_OBJECTS
    big = {"objects": [OBJECTS[i % len(OBJECTS)] for i in range(n)], "image_id": "take1/000001",
           "relationships": [[i, PREDICATES[(i + j) % len(PREDICATES)], j] for i in range(n) for j in range(n) if i != j]}  # fmt: skip
    assert len(big["relationships"]) == MAX_RELATIONSHIPS
    path = tmp_path / "big.json"
    path.write_text(json.dumps([big, {"objects": [OBJECTS[0]], "image_id": 7}]))
    items = load_graphs(path, VOCAB)
    images = generate_images(sg2im, collate(items), 0, "generate", [0, 1], 0, "pred", torch.device("cpu"))
    assert images.shape == (2, 3, 32, 32) and not math.isnan(float(images.float().mean()))
    assert file_stems([it.image_id for it in items]) == ["take1_000001", "7"]
