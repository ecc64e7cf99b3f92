"""Core plumbing: registry, config overrides, batches, scene-graph JSON, checkpoints, packaging guards."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmark import registry
from benchmark.batch import SceneGraphItem, collate
from benchmark.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from benchmark.config import apply_overrides, build_run_config, parse_sets
from benchmark.scene_graph import SceneGraphError, Vocab, graph_from_json, graph_to_json, load_graphs

REPO = Path(__file__).resolve().parents[1]
VOCAB = Vocab(("__image__", "red circle", "blue square", "green triangle"), ("__in_image__", "left of", "above"))


def test_datasets_folder_never_shadows_hf_datasets():
    assert not (REPO / "datasets" / "__init__.py").exists()
    spec = importlib.util.find_spec("datasets")
    # Either HF datasets is installed (a regular package wins over the namespace folder) or nothing
    # importable is called `datasets` from this repository as a regular package.
    assert spec is None or spec.origin is None or REPO / "datasets" not in Path(spec.origin).parents


def test_ls_lists_registered_names_without_importing_torch():
    code = "import sys; from benchmark.cli import main; main(['ls']); assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "retrieval" in out and "methods:" in out and "datasets:" in out and "metrics:" in out


def test_registry_unknown_name_lists_valid_ones():
    with pytest.raises(registry.UnknownNameError, match="Valid methods: .*retrieval"):
        registry.get("method", "retreival")
    with pytest.raises(registry.UnknownNameError, match="Did you mean retrieval"):
        registry.get("method", "retreival")


def test_registry_names_match_what_modules_register():
    for kind in ("method", "dataset", "metric"):
        for name in registry.names(kind):
            obj = registry.get(kind, name)
            assert obj.registry_name == name


def test_presets_are_the_family_class_with_other_config_defaults():
    methods = registry.entries()["method"]
    presets = {n: e.family for n, e in methods.items() if e.family != n}
    assert presets == {
        "sg2im_clip": "sg2im", "sg2im_data2vec": "sg2im", "sg2im_minilm": "sg2im",
        "learned_ddpm": "ddpm", "minilm_ddpm": "ddpm", "clip_ddpm": "ddpm", "data2vec_ddpm": "ddpm",
    }  # fmt: skip
    assert registry.family("sg2im") == "sg2im" and registry.family("retrieval") == "retrieval"
    for name, fam in presets.items():
        cls = registry.get("method", name)
        (base,) = cls.__bases__
        assert base.family == fam == cls.family and cls.preset == name and cls.registry_name == name
        assert {k for k in vars(cls) if not k.startswith("_")} <= {"Config", "tier_overrides", "family", "preset",
                                                                   "registry_name", "registry_meta"}  # fmt: skip
        assert cls.__doc__.startswith(methods[name].summary)  # ls shows the table's summary
        mine, theirs = dataclasses.asdict(cls.Config()), dataclasses.asdict(base.Config())
        changed = {k for k in mine if mine[k] != theirs[k]}
        assert changed <= {"text_encoder"} and mine["text_encoder"] in registry.names("text_encoder")
        for tier, sets in base.tier_overrides.items():
            assert cls.tier_overrides[tier].items() >= {k: v for k, v in sets.items() if k not in
                                                        ("method.text_encoder_weights",)}.items()  # fmt: skip
        assert pickle.loads(pickle.dumps(cls.Config())) == cls.Config()  # submitit pickles run configs
        assert pickle.loads(pickle.dumps(cls)) is cls


def test_preset_tables_must_be_literal_and_name_real_fields(tmp_path):
    src = tmp_path / "fam.py"
    src.write_text('T = {}\n\n\n@register_presets("fam", T)\nclass Fam:\n    pass\n')
    with pytest.raises(ValueError, match=rf"{src}:4: register_presets: field 'table' must be a literal dict"):
        registry._preset_entries(ast.parse(src.read_text()), "fam", src)

    @dataclass(frozen=True)
    class Cfg:
        width: int = 1

    class Fam:
        Config = Cfg
        tier_overrides = {"smoke": {"method.width": 2}}

    with pytest.raises(ValueError, match=r"preset 'fam_wide': field 'config.widht' is not a field of Cfg"):
        registry.register_presets("fam", {"fam_wide": {"config": {"widht": 3}}})(Fam)
    with pytest.raises(ValueError, match=r"preset 'fam_wide': unknown field\(s\) \['tier'\]"):
        registry.register_presets("fam", {"fam_wide": {"tier": {}}})(Fam)
    with pytest.raises(ValueError, match="expected an integer"):
        registry.register_presets("fam", {"fam_wide": {"config": {"width": "wide"}}})(Fam)
    try:
        registry.register_presets("fam", {"fam_wide": {"config": {"width": 3}, "tiers": {"quick": {"x": 1}}}})(Fam)
        wide = registry._REGISTRY["method"]["fam_wide"]
        assert wide.Config() == wide.Config(width=3) and wide.Config().width == 3 and Cfg().width == 1
        assert wide.tier_overrides == {"smoke": {"method.width": 2}, "quick": {"x": 1}}
    finally:
        registry._REGISTRY["method"].pop("fam_wide", None)


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    layers: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    name: str = "a"
    flag: bool = False
    inner: Inner = Inner()


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(Outer(), parse_sets(["steps=5", "inner.lr=3e-4", "flag=true", "inner.layers=[4,5]"]))
    assert cfg == Outer(steps=5, flag=True, inner=Inner(lr=3e-4, layers=(4, 5)))
    with pytest.raises(ValueError, match="unknown field 'stepz'"):
        apply_overrides(Outer(), {"stepz": 1})
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(Outer(), {"steps": "many"})
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["steps"])


def _item(n: int, t: int) -> SceneGraphItem:
    return SceneGraphItem(
        image=torch.rand(3, 8, 8),
        objs=torch.arange(n),
        boxes=torch.rand(n, 4),
        triples=torch.tensor([[i % n, 1, (i + 1) % n] for i in range(t)], dtype=torch.long).reshape(-1, 3),
        masks=torch.ones(n, 4, 4),
        image_id=f"img{n}",
    )


def test_tier_history_keys_are_the_last_version_a_recipe_was_in_force():
    """A recipe listed under key K held for every version up to K since the previous key; later versions use
    the current overrides (None). Versions compare numerically; an unparsable one only matches its own key."""
    from benchmark.config import historical_overrides

    a, b, full = {"train.steps": 1}, {"train.steps": 2}, {"train.steps": 9}
    history = {"1.1": {"quick": a}, "1.3": {"quick": b}, "1.10": {"full": full}, "x": {"quick": full}}
    got = {v: historical_overrides(history, "quick", v) for v in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.9", "x")}
    assert got == {"1.0": a, "1.1": a, "1.2": b, "1.3": b, "1.4": None, "1.9": None, "x": full}
    assert historical_overrides(history, "full", "1.2") == full  # the full tier changed only after 1.10
    assert historical_overrides(history, "full", "1.11") is None
    assert historical_overrides(history, "quick", "dev") is None
    assert historical_overrides({}, "quick", "1.1") is None


def test_collate_offsets_triples_and_split_inverts_it():
    items = [_item(3, 2), _item(4, 3)]
    b = collate(items)
    assert b.objs.shape == (7,) and b.triples.shape == (5, 3) and b.images.shape == (2, 3, 8, 8)
    assert b.obj_to_img.tolist() == [0, 0, 0, 1, 1, 1, 1] and b.triple_to_img.tolist() == [0, 0, 1, 1, 1]
    assert b.triples[2:, [0, 2]].min() >= 3  # second image's triples point into its own objects
    for a, c in zip(items, b.split()):
        assert torch.equal(a.triples, c.triples) and torch.equal(a.objs, c.objs) and a.image_id == c.image_id


def test_scene_graph_json_round_trip_and_image_node():
    g = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    it = graph_from_json(g, VOCAB)
    assert it.objs.tolist() == [1, 2, 0]  # __image__ appended last
    assert it.triples.tolist() == [[0, 1, 1], [0, 0, 2], [1, 0, 2]]
    back = graph_to_json(it, VOCAB)
    assert back["objects"] == g["objects"] and back["relationships"] == g["relationships"]


@pytest.mark.parametrize(
    "graph, message",
    [
        ({"objects": ["red circel"], "relationships": []}, r"objects\[0\]: unknown object 'red circel'.*Did you mean 'red circle'"),
        ({"objects": ["red circle"], "relationships": [[0, "on top of", 0]]}, r"relationships\[0\]: unknown predicate"),
        ({"objects": ["red circle"], "relationships": [[0, "left of", 3]]}, r"object index 3 out of range"),
        ({"objects": [], "relationships": []}, r"'objects' must be a non-empty list"),
        ({"objects": ["red circle"], "relationships": [["0", "left of", 0]]}, r"subject must be an integer"),
        ({"objects": ["__image__"]}, r"unknown object '__image__'"),
        ({"objects": ["red circle"], "boxes": [[0.5, 0, 0.2, 1]]}, r"boxes\[0\]"),
        ({"objects": ["red circle"], "colour": 1}, r"unknown field"),
        ([1, 2], r"must be an object"),
    ],
)
def test_scene_graph_errors_name_the_field(graph, message):
    with pytest.raises(SceneGraphError, match=message):
        graph_from_json(graph, VOCAB)


def test_load_graphs_names_the_file(tmp_path):
    p = tmp_path / "g.json"
    p.write_text("{not json")
    with pytest.raises(SceneGraphError, match="g.json: not valid JSON"):
        load_graphs(p, VOCAB)
    p.write_text(json.dumps([{"objects": ["red circle"]}, {"objects": ["purple star"]}]))
    with pytest.raises(SceneGraphError, match=r"g.json \[graph 1\]: objects\[0\]: unknown object 'purple star'"):
        load_graphs(p, VOCAB)


def test_checkpoint_round_trip_with_optimizer_state(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net.state_dict(), {"method": "x", "step": 3}, {"optimizers": {"opt": opt.state_dict()}})
    meta, state, extra = load_checkpoint(path)
    assert meta["method"] == "x" and meta["step"] == 3
    net2 = torch.nn.Linear(3, 2)
    net2.load_state_dict(state)
    assert torch.equal(net2.weight, net.weight)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(extra["optimizers"]["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_refuses_pickles_and_truncation(tmp_path):
    pickled = tmp_path / "p.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError, match="p.safetensors"):
        read_metadata(pickled)
    good = tmp_path / "g.safetensors"
    save_checkpoint(good, {"w": torch.zeros(1000)}, {"method": "x"})
    (tmp_path / "t.safetensors").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="t.safetensors"):
        load_checkpoint(tmp_path / "t.safetensors")


def test_protocol_variants_select_their_own_file():
    from benchmark.config import build_run_config

    cfg = build_run_config("retrieval", "coco_stuff", "smoke", protocol="lostgan")
    assert cfg.protocol == "lostgan" and cfg.eval.splits == ("test_lostgan",) and cfg.eval.samples_per_graph == 2
    assert build_run_config("retrieval", "coco_stuff", "smoke").eval.splits == ("test",)
    with pytest.raises(ValueError, match="valid variants: lostgan"):
        build_run_config("retrieval", "coco_stuff", "smoke", protocol="nope")


def test_learning_rate_has_one_name_across_methods_and_the_old_name_still_reads(capsys):
    from benchmark import registry as reg
    from benchmark.checkpoint import config_from_dict

    for name in reg.names("method"):
        fields = {f.name for f in dataclasses.fields(reg.get("method", name).Config)}
        assert "lr" not in fields, name
        if name != "retrieval":
            assert "learning_rate" in fields, name
            cfg = build_run_config(name, "shapes", "smoke", sets={"method.learning_rate": 0.25})
            assert cfg.method_cfg.learning_rate == 0.25
    cfg = build_run_config("learned_ddpm", "shapes", "smoke", sets={"method.lr": 0.5})
    assert cfg.method_cfg.learning_rate == 0.5
    assert "method.lr is deprecated, read as method.learning_rate" in capsys.readouterr().err
    old = config_from_dict(reg.get("method", "learned_ddpm").Config, {"lr": 0.125})  # checkpoints before the rename
    assert old.learning_rate == 0.125
    with pytest.raises(ValueError, match=r"^--set method\.nope: unknown field 'nope'") as e:
        build_run_config("sg2im", "shapes", "smoke", sets={"method.nope": 1})
    assert "method_cfg" not in str(e.value)
