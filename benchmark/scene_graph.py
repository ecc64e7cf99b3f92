"""Vocabularies and the sg2im JSON scene-graph format for custom graphs.

The JSON format is the one of google/sg2im ``scripts/sample_images.py`` / ``run_model.py``: a graph is
``{"objects": ["sheep", "grass"], "relationships": [[0, "standing on", 1]]}`` where each relationship is
``[subject_index, predicate_name, object_index]``; a file holds one graph or a list of graphs. Optional
``"boxes"`` (one ``[x0, y0, x1, y1]`` in [0, 1] per object) give a ground-truth layout. As in sg2im's
``Sg2ImModel.encode_scene_graphs``, an ``__image__`` node is appended and every object gets an
``(obj, __in_image__, __image__)`` triple.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.batch import SceneGraphItem

IMAGE_TOKEN = "__image__"
IN_IMAGE = "__in_image__"
MAX_OBJECTS = 64  # bigger graphs are refused: no dataset in the suite has more than 31 objects per image
MAX_RELATIONSHIPS = MAX_OBJECTS * (MAX_OBJECTS - 1)  # one per ordered pair of objects
MAX_IMAGE_ID = 256


class SceneGraphError(ValueError):
    """A scene graph that does not fit the vocabulary or the format; the message names file and field."""


@dataclass(frozen=True)
class Vocab:
    """Object and predicate names of a dataset; index 0 of each is ``__image__`` / ``__in_image__``."""

    object_idx_to_name: tuple[str, ...]
    pred_idx_to_name: tuple[str, ...]

    @property
    def object_name_to_idx(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.object_idx_to_name)}

    @property
    def pred_name_to_idx(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.pred_idx_to_name)}

    @property
    def num_objects(self) -> int:
        return len(self.object_idx_to_name)

    @property
    def num_predicates(self) -> int:
        return len(self.pred_idx_to_name)

    def to_json(self) -> dict[str, Any]:
        return {"object_idx_to_name": list(self.object_idx_to_name), "pred_idx_to_name": list(self.pred_idx_to_name)}

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "vocabulary") -> Vocab:
        for key in ("object_idx_to_name", "pred_idx_to_name"):
            if not isinstance(d.get(key), list) or not all(isinstance(x, str) for x in d[key]):
                raise SceneGraphError(f"{source}: field {key!r} must be a list of strings")
        return cls(tuple(d["object_idx_to_name"]), tuple(d["pred_idx_to_name"]))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        from benchmark.io import read_json

        return cls.from_json(read_json(path, "vocabulary file"), source=str(path))


def _short(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _lookup(name: Any, table: dict[str, int], what: str, where: str) -> int:
    if not isinstance(name, str):
        raise SceneGraphError(f"{where}: {what} must be a string, got {type(name).__name__} {_short(name)}")
    if name not in table or name.startswith("__"):
        valid = sorted(n for n in table if not n.startswith("__"))
        close = difflib.get_close_matches(name, valid, n=3) if len(name) <= 100 else []
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise SceneGraphError(f"{where}: unknown {what} {_short(name)}.{hint} Valid {what}s: {', '.join(valid)}")
    return table[name]


def graph_from_json(graph: Any, vocab: Vocab, where: str = "scene graph") -> SceneGraphItem:
    """Validate one sg2im-format graph and turn it into a :class:`SceneGraphItem` (image=None)."""
    if not isinstance(graph, dict):
        raise SceneGraphError(f"{where}: a scene graph must be an object with 'objects' and 'relationships'")
    unknown_keys = set(graph) - {"objects", "relationships", "boxes", "image_id"}
    if unknown_keys:
        raise SceneGraphError(f"{where}: unknown field(s) {sorted(unknown_keys)}")
    objects = graph.get("objects")
    if not isinstance(objects, list) or not objects:
        raise SceneGraphError(f"{where}: field 'objects' must be a non-empty list of object names")
    if len(objects) > MAX_OBJECTS:
        raise SceneGraphError(f"{where}: field 'objects' has {len(objects)} objects; at most {MAX_OBJECTS} are supported")
    rels = graph.get("relationships", [])
    if not isinstance(rels, list):
        raise SceneGraphError(f"{where}: field 'relationships' must be a list of [subject, predicate, object]")
    if len(rels) > MAX_RELATIONSHIPS:
        raise SceneGraphError(
            f"{where}: field 'relationships' has {len(rels)} entries; at most {MAX_RELATIONSHIPS} are supported"
        )
    image_id = graph.get("image_id", "")
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        image_id = str(image_id)
    if not isinstance(image_id, str) or len(image_id) > MAX_IMAGE_ID:
        raise SceneGraphError(
            f"{where}: field 'image_id' must be a string or integer of at most {MAX_IMAGE_ID} characters, "
            f"got {_short(image_id)}"
        )
    o_table, p_table = vocab.object_name_to_idx, vocab.pred_name_to_idx
    objs = [_lookup(o, o_table, "object", f"{where}: objects[{i}]") for i, o in enumerate(objects)]
    n = len(objs)
    triples = []
    for k, r in enumerate(rels):
        w = f"{where}: relationships[{k}]"
        if not isinstance(r, (list, tuple)) or len(r) != 3:
            raise SceneGraphError(f"{w}: expected [subject_index, predicate, object_index], got {_short(r)}")
        s, p, o = r
        for role, v in (("subject", s), ("object", o)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SceneGraphError(f"{w}: {role} must be an integer object index, got {_short(v)}")
            if not 0 <= v < n:
                raise SceneGraphError(f"{w}: {role} index {v} out of range for {n} objects")
        triples.append([s, _lookup(p, p_table, "predicate", w), o])
    boxes = graph.get("boxes")
    if boxes is not None:
        if not isinstance(boxes, list) or len(boxes) != n:
            raise SceneGraphError(f"{where}: field 'boxes' must hold one [x0, y0, x1, y1] per object ({n})")
        for i, b in enumerate(boxes):
            ok = isinstance(b, list) and len(b) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
            if not ok or not (0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
                raise SceneGraphError(f"{where}: boxes[{i}] must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1, got {_short(b)}")
    # Append the __image__ node and the __in_image__ triples (sg2im encode_scene_graphs).
    img_idx, in_img = o_table[IMAGE_TOKEN], p_table[IN_IMAGE]
    triples += [[i, in_img, n] for i in range(n)]
    box_t = torch.tensor((boxes or [[0.0, 0.0, 1.0, 1.0]] * n) + [[0.0, 0.0, 1.0, 1.0]], dtype=torch.float32)
    has_layout = torch.tensor([boxes is not None] * n + [True])
    return SceneGraphItem(
        image=None,
        objs=torch.tensor(objs + [img_idx], dtype=torch.long),
        boxes=box_t,
        triples=torch.tensor(triples, dtype=torch.long).reshape(-1, 3),
        has_layout=has_layout,
        image_id=image_id,
    )


def load_graphs(path: str | Path, vocab: Vocab) -> list[SceneGraphItem]:
    """Read a JSON file of one graph or a list of graphs; errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneGraphError(f"scene-graph file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or an integer of > 4300 digits
        raise SceneGraphError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise SceneGraphError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise SceneGraphError(f"cannot read scene-graph file {path}: {e.strerror or e}") from None
    graphs = data if isinstance(data, list) else [data]
    if not graphs:
        raise SceneGraphError(f"{path}: the file holds an empty list of scene graphs")
    items = []
    for i, g in enumerate(graphs):
        item = graph_from_json(g, vocab, where=f"{path} [graph {i}]")
        item.image_id = item.image_id or f"{path.stem}_{i}"
        items.append(item)
    return items


def file_stems(image_ids: list[str]) -> list[str]:
    """Distinct, safe file-name stems for image ids (no path separators or leading dots; '_' elsewhere)."""
    out, seen = [], set()
    for i, image_id in enumerate(image_ids):
        stem = re.sub(r"[^\w.\-]", "_", image_id).lstrip(".")[:128] or f"graph_{i}"
        if stem in seen:
            stem = f"{stem}_{i}"
        seen.add(stem)
        out.append(stem)
    return out


def graph_to_json(item: SceneGraphItem, vocab: Vocab) -> dict[str, Any]:
    """Inverse of :func:`graph_from_json` (drops the ``__image__`` node and its triples)."""
    img = vocab.object_name_to_idx[IMAGE_TOKEN]
    keep = [i for i, o in enumerate(item.objs.tolist()) if o != img]
    remap = {old: new for new, old in enumerate(keep)}
    in_img = vocab.pred_name_to_idx[IN_IMAGE]
    rels = [
        [remap[s], vocab.pred_idx_to_name[p], remap[o]]
        for s, p, o in item.triples.tolist()
        if p != in_img and s in remap and o in remap
    ]
    return {
        "objects": [vocab.object_idx_to_name[item.objs[i]] for i in keep],
        "relationships": rels,
        "boxes": [[round(float(x), 6) for x in item.boxes[i]] for i in keep],
        "image_id": item.image_id,
    }
