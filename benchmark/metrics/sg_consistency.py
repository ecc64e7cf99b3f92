"""Scene-graph consistency on ``shapes``: are the graph's relations true in the generated image?

Layout-free: the method's boxes are never used. Objects are located in the image from the dataset's known
rendering (``benchmark/data/shapes.py``: 6 flat palette colours on a grey background, 4 silhouettes), and
each geometric triple is checked with the rule the dataset used to create it (sg2im's COCO rule,
:func:`benchmark.data.shapes.relation_from_geometry`). Measured on the real images with their own graphs
(tests/metrics/test_sg_consistency.py): ``test`` 99.72% / 99.67% and ``test_unseen`` 99.39% / 99.83% at
32 / 64 px (every miss is a pair within ~1 degree of a 45-degree threshold: pixel quantisation); 3-4% when
each image is scored against another image's graph. Written by hand: no library detects these objects.

Detection (numpy/scipy, vectorised over the images except for a short loop over components):

1. **Pixel colours** (:func:`classify_pixels`). A pixel ``x`` is read as a mix ``bg + a (c - bg)`` of the
   background and one palette colour ``c`` (a blurred edge), ``c`` the colour whose mix is nearest: the
   pixel is ``c`` if ``a >= 0.5`` (the 0.5 level set of a blurred step is the edge), background if
   ``a < 0.5``, and *unknown* if its distance to that mix is >= 40 (a mix of two object colours, an
   off-palette pixel). Exact for the real images; noise of 8/255 changes nothing, a 3x3 blur costs <1% of
   the relations.
2. **Components.** 8-connected components of each colour; those below 0.4% of the image (4 px at 32 px; the
   smallest real object covers >= 16 px) are noise.
3. **Silhouette.** The component's pixel extent is its box. Each of the 4 silhouettes is drawn in that box
   (coverage of each pixel, 4x4 samples) and compared with the pixels: the component's pixels should be
   inside, background and other components' pixels outside, each pixel weighted by ``|2 coverage - 1|``
   (pixels on the outline are ambiguous). Pixels of a component lying entirely within the box (a nested
   object drawn on top, i.e. an occluder) and unknown pixels are ignored. The best-agreeing silhouette wins.
4. **Centre.** The centroid of the amodal silhouette (the component plus the ignored pixels inside the chosen
   silhouette: the part a nested object hides). sg2im's centre is the mean of the 16x16 mask grid
   ``linspace(x0, x1, 16)``: the area centroid for the symmetric shapes, ``(0.6792 - 2/3) * height`` lower
   for the triangle (:data:`MASK_CENTROID_OFFSET`, added). The area centroid is accurate to a fraction of a
   pixel where the box is not (a triangle's apex may miss every pixel centre).

Matching (graph -> detections, per image): a graph object (colour, shape) can only match a detection of its
colour, each detection at most once. Among the injective assignments within each colour group (at most the
``k + 2`` largest detections for ``k`` graph objects of that colour), the one with the most shape matches
wins, ties broken by the most satisfied triples (objects of the same colour and shape are
indistinguishable, so any labelling of them is allowed).

Relation of a triple ``(s, p, o)`` with both ends matched (:func:`relation`):

* ``surrounding`` if the box of ``s`` contains the box of ``o`` and is larger (on pixel extents, ties count
  as contained: sg2im's strict inequality is below pixel resolution); ``inside`` symmetrically;
* otherwise the angle of ``centre(s) - centre(o)`` (y down): ``left of`` if ``|theta| >= 3pi/4``, ``above``
  if ``-3pi/4 <= theta < -pi/4``, ``right of`` if ``-pi/4 <= theta < pi/4``, else ``below``.

Outputs (micro averages over all generated images): ``sg_consistency`` = satisfied geometric triples /
geometric triples (``__in_image__`` triples excluded; a triple with an unmatched end is unsatisfied);
``sg_object_recall`` = graph objects matched to a detection of their colour *and* shape / graph objects.
Both higher-is-better. Other datasets raise :class:`MetricUnavailable`: no exact detector exists for natural
images (a learned detector would be a different, approximate metric).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable
from benchmark.registry import register

DATASETS = ("shapes",)
COLOUR_THRESHOLD = 40.0
MIN_AREA = 0.004
MAX_EXTRA = 2  # detections kept per colour beyond the number of graph objects of that colour
UNKNOWN = -1


def _shapes_module():  # noqa: ANN202
    from benchmark.data import shapes

    return shapes


@dataclass(frozen=True)
class Palette:
    """The rendering constants of ``shapes``: colour names and RGB (background last), silhouettes."""

    colours: tuple[str, ...]
    rgb: np.ndarray  # float64 [C + 1, 3]
    shapes: tuple[str, ...]

    @property
    def background(self) -> int:
        return len(self.colours)


def shapes_palette() -> Palette:
    sh = _shapes_module()
    names = tuple(sh.COLOURS)
    rgb = np.asarray([sh.COLOURS[c] for c in names] + [sh.BACKGROUND], dtype=np.float64)
    return Palette(names, rgb, tuple(sh.SHAPES))


def _mask_centroid_offset() -> dict[str, float]:
    """Per shape, sg2im's mask centroid minus the area centroid, in units of the box height (y only)."""
    sh = _shapes_module()
    out = {}
    for s in sh.SHAPES:
        _, my = sh.mask_centroid([0.0, 0.0, 1.0, 1.0], sh.shape_mask(s))
        out[s] = my - (2.0 / 3.0 if s == "triangle" else 0.5)
    return out


MASK_CENTROID_OFFSET = _mask_centroid_offset()


def classify_pixels(images: np.ndarray, palette: Palette, chunk: int = 256) -> np.ndarray:
    """int8 [N, H, W]: the colour index of each pixel, ``len(palette.colours)`` for background, -1 unknown.

    A pixel ``x`` is read as a mix ``bg + a (c - bg)`` of the background and one object colour ``c`` (what a
    blurred or anti-aliased edge is): ``a`` is the projection of ``x - bg`` on ``c - bg`` (clipped to
    [0, 1]) and ``r`` the distance of ``x`` from that mix. With ``c`` the colour of smallest ``r``, the pixel
    is ``c`` if ``a >= 0.5`` (the 0.5 level set of a blurred step edge is the edge itself), background if
    ``a < 0.5``, and unknown if ``r >= COLOUR_THRESHOLD`` (e.g. a mix of two object colours, or an
    off-palette pixel). ``images``: uint8 [N, 3, H, W].
    """
    n, _, h, w = images.shape
    out = np.empty((n, h, w), dtype=np.int8)
    bg = palette.rgb[-1].astype(np.float32)
    d = (palette.rgb[:-1] - palette.rgb[-1]).astype(np.float32)  # [C, 3]
    for s in range(0, n, chunk):
        v = images[s : s + chunk].astype(np.float32).transpose(0, 2, 3, 1) - bg  # [B, H, W, 3]
        a = np.clip((v @ d.T) / (d * d).sum(1), 0.0, 1.0)  # [B, H, W, C]
        r = np.linalg.norm(v[..., None, :] - a[..., None] * d, axis=-1)
        best = r.argmin(-1)
        r_best = np.take_along_axis(r, best[..., None], -1)[..., 0]
        obj = np.take_along_axis(a, best[..., None], -1)[..., 0] >= 0.5
        lab = np.where(obj, best, palette.background)
        out[s : s + chunk] = np.where(r_best < COLOUR_THRESHOLD, lab, UNKNOWN)
    return out


@dataclass
class Detections:
    """Objects found in N images (D detections): all arrays are indexed by detection.

    box: float64 [D, 4] (x0, y0, x1, y1) normalised pixel extents; centre: float64 [D, 2] in sg2im's mask
    centroid convention; shape: int [D] index into ``palette.shapes``.
    """

    image: np.ndarray
    colour: np.ndarray
    area: np.ndarray
    box: np.ndarray
    centre: np.ndarray
    shape: np.ndarray
    shape_score: np.ndarray

    def of_image(self, n: int) -> np.ndarray:
        return np.nonzero(self.image == n)[0]


def _silhouettes(palette: Palette, h: int, w: int, k: int = 4) -> np.ndarray:
    """float [S, h, w]: the fraction of each pixel that each shape drawn in an h x w pixel box covers
    (k x k samples per pixel)."""
    sh = _shapes_module()
    u = ((np.arange(w * k) + 0.5) / (w * k))[None, :]
    v = ((np.arange(h * k) + 0.5) / (h * k))[:, None]
    fine = np.stack([np.broadcast_to(sh._inside_shape(s, u, v), (h * k, w * k)) for s in palette.shapes])
    return fine.reshape(len(palette.shapes), h, k, w, k).mean(axis=(2, 4))


def detect_objects(images: np.ndarray, palette: Palette | None = None) -> Detections:
    """Locate the flat-coloured objects of uint8 images [N, 3, H, W] (see the module docstring)."""
    from scipy import ndimage

    palette = palette or shapes_palette()
    n, _, h, w = images.shape
    labels = classify_pixels(images, palette)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    min_area = max(2, int(math.ceil(MIN_AREA * h * w)))
    # One id per component over all colours (0 = background or unknown), and each component's extent.
    owner = np.zeros(labels.shape, dtype=np.int32)
    comp_colour, comp_slice, comp_area = [0], [None], [0]
    for c in range(len(palette.colours)):
        comp, count = ndimage.label(labels == c, structure=structure)
        if count == 0:
            continue
        base = len(comp_colour) - 1
        owner[comp > 0] = comp[comp > 0] + base
        comp_colour += [c] * count
        comp_slice += ndimage.find_objects(comp)
        comp_area += np.bincount(comp.ravel(), minlength=count + 1)[1:].tolist()
    extent = np.array(
        [(0, 0, 0, 0)] + [(s[1].start, s[2].start, s[1].stop, s[2].stop) for s in comp_slice[1:]]
    ).reshape(-1, 4)
    offsets = np.array([MASK_CENTROID_OFFSET[s] for s in palette.shapes])
    sil_cache: dict[tuple[int, int], np.ndarray] = {}
    rows: list[tuple] = []
    for k in range(1, len(comp_colour)):
        if comp_area[k] < min_area:
            continue
        img, si, sj = comp_slice[k]
        i_img = img.start
        ids = owner[i_img, si, sj]
        mine = ids == k
        # Another component lying entirely within this box may be drawn on top of it (a nested object):
        # its pixels, like unknown ones, say nothing about this object's silhouette. Pixels of components
        # reaching outside the box (a container around this object, a neighbour) count as "not this object".
        others = np.unique(ids[(ids != k) & (ids > 0)])
        e = extent[others]
        enclosed = others[
            (e[:, 0] >= si.start) & (e[:, 1] >= sj.start) & (e[:, 2] <= si.stop) & (e[:, 3] <= sj.stop)
        ]
        hidden = (labels[i_img, si, sj] == UNKNOWN) | np.isin(ids, enclosed)
        known = ~hidden
        ph, pw = mine.shape
        sils = sil_cache.get((ph, pw))
        if sils is None:
            sils = sil_cache[(ph, pw)] = _silhouettes(palette, ph, pw)
        # Pixels the silhouette covers only partly are ambiguous: weight each pixel by |2 coverage - 1|.
        weight = np.abs(2 * sils - 1) * known
        agree = (((sils > 0.5) == mine) * weight).sum(axis=(1, 2)) / np.maximum(weight.sum(axis=(1, 2)), 1e-9)
        s = int(agree.argmax())
        amodal = mine | ((sils[s] > 0.5) & hidden)
        ys, xs = np.nonzero(amodal)
        cx = (sj.start + xs.mean() + 0.5) / w
        cy = (si.start + ys.mean() + 0.5) / h + offsets[s] * ph / h
        box = (sj.start / w, si.start / h, sj.stop / w, si.stop / h)
        rows.append((i_img, comp_colour[k], comp_area[k], box, (cx, cy), s, float(agree[s])))
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return Detections(z, z, z, np.zeros((0, 4)), np.zeros((0, 2)), z, np.zeros(0))
    image, colour, area, box, centre, shape, score = zip(*rows)
    return Detections(
        np.asarray(image),
        np.asarray(colour),
        np.asarray(area),
        np.asarray(box, dtype=np.float64),
        np.asarray(centre, dtype=np.float64),
        np.asarray(shape),
        np.asarray(score),
    )


def relation(box_s: np.ndarray, box_o: np.ndarray, c_s: np.ndarray, c_o: np.ndarray) -> str:
    """sg2im's COCO relation rule on measured geometry (containment on pixel extents, ties = contained)."""
    area_s = (box_s[2] - box_s[0]) * (box_s[3] - box_s[1])
    area_o = (box_o[2] - box_o[0]) * (box_o[3] - box_o[1])
    s_has_o = box_s[0] <= box_o[0] and box_s[1] <= box_o[1] and box_s[2] >= box_o[2] and box_s[3] >= box_o[3]
    o_has_s = box_o[0] <= box_s[0] and box_o[1] <= box_s[1] and box_o[2] >= box_s[2] and box_o[3] >= box_s[3]
    if s_has_o and area_s > area_o:
        return "surrounding"
    if o_has_s and area_o > area_s:
        return "inside"
    return _shapes_module().direction_from_centres(c_s, c_o)


@dataclass(frozen=True)
class GraphSpec:
    """What the metric needs of a scene graph: per object (colour, shape) indices, geometric triples."""

    colour: tuple[int, ...]
    shape: tuple[int, ...]
    triples: tuple[tuple[int, str, int], ...]


def graph_spec(
    item: SceneGraphItem, object_names: Sequence[str], pred_names: Sequence[str], palette: Palette
) -> GraphSpec:
    """(colour, shape) of each object of ``item`` (``-1`` for ``__image__``) and its geometric triples."""
    sh = _shapes_module()
    colour, shape = [], []
    for o in item.objs.tolist():
        name = object_names[o]
        if name.startswith("__"):
            colour.append(-1)
            shape.append(-1)
            continue
        c, s = sh.object_factors(name)
        colour.append(palette.colours.index(c))
        shape.append(palette.shapes.index(s))
    triples = tuple(
        (s, pred_names[p], o)
        for s, p, o in item.triples.tolist()
        if not pred_names[p].startswith("__") and colour[s] >= 0 and colour[o] >= 0
    )
    return GraphSpec(tuple(colour), tuple(shape), triples)


def _satisfied(spec: GraphSpec, det: Detections, assign: dict[int, int]) -> int:
    ok = 0
    for s, p, o in spec.triples:
        if s in assign and o in assign:
            a, b = assign[s], assign[o]
            ok += relation(det.box[a], det.box[b], det.centre[a], det.centre[b]) == p
    return ok


def match_graph(spec: GraphSpec, det: Detections, candidates: np.ndarray) -> tuple[dict[int, int], int, int]:
    """Best assignment graph object -> detection for one image; returns (assignment, shape matches, satisfied)."""
    groups = []
    for c in sorted({c for c in spec.colour if c >= 0}):
        objs = [i for i, cc in enumerate(spec.colour) if cc == c]
        dets = [int(d) for d in candidates if det.colour[d] == c]
        dets = sorted(dets, key=lambda d: -det.area[d])[: len(objs) + MAX_EXTRA]
        if len(dets) >= len(objs):
            options = [dict(zip(objs, p)) for p in itertools.permutations(dets, len(objs))]
        else:  # fewer detections than objects: every way to leave objects out
            options = [dict(zip(sub, dets)) for sub in itertools.permutations(objs, len(dets))]
        groups.append(options)
    if not groups:
        return {}, 0, 0
    best: tuple[int, int] = (-1, -1)
    best_assign: dict[int, int] = {}
    for combo in itertools.product(*groups):
        assign = {k: v for part in combo for k, v in part.items()}
        shapes_ok = sum(det.shape[d] == spec.shape[i] for i, d in assign.items())
        if shapes_ok < best[0]:
            continue
        key = (shapes_ok, _satisfied(spec, det, assign))
        if key > best:
            best, best_assign = key, assign
    return best_assign, best[0], best[1]


@dataclass
class ConsistencyCounts:
    triples: int = 0
    satisfied: int = 0
    objects: int = 0
    found: int = 0

    @property
    def consistency(self) -> float:
        return self.satisfied / self.triples if self.triples else float("nan")

    @property
    def object_recall(self) -> float:
        return self.found / self.objects if self.objects else float("nan")


def consistency_counts(
    images: Tensor | np.ndarray,
    graphs: Sequence[SceneGraphItem],
    image_to_graph: Sequence[int] | Tensor,
    object_names: Sequence[str],
    pred_names: Sequence[str],
) -> ConsistencyCounts:
    """Counts of satisfied triples and found objects of uint8 ``images`` [N, 3, H, W] against their graphs."""
    palette = shapes_palette()
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"sg_consistency expects uint8 images [N, 3, H, W], got {arr.dtype} {arr.shape}")
    det = detect_objects(arr, palette)
    order = np.argsort(det.image, kind="stable")
    starts = np.searchsorted(det.image[order], np.arange(arr.shape[0] + 1))
    specs: dict[int, GraphSpec] = {}
    out = ConsistencyCounts()
    for n, g in enumerate(torch.as_tensor(image_to_graph).tolist()):
        if g not in specs:
            specs[g] = graph_spec(graphs[g], object_names, pred_names, palette)
        spec = specs[g]
        _, found, ok = match_graph(spec, det, order[starts[n] : starts[n + 1]])
        out.triples += len(spec.triples)
        out.satisfied += int(ok)
        out.objects += sum(c >= 0 for c in spec.colour)
        out.found += int(found)
    return out


@register(
    "metric",
    "sg_consistency",
    outputs={"sg_consistency": True, "sg_object_recall": True},
    mode="shapes only",
)
class SceneGraphConsistency(Metric):
    """Relation satisfaction and object recall measured in the image without the method's layout (shapes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_counts = ConsistencyCounts()

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        if inputs.dataset not in DATASETS:
            raise MetricUnavailable(
                f"sg_consistency needs an exact object detector for the dataset; one exists only for "
                f"{', '.join(DATASETS)} (known palette and silhouettes), not for {inputs.dataset!r}"
            )
        counts = consistency_counts(
            inputs.fake,
            inputs.graphs,
            inputs.fake_to_graph,
            inputs.vocab.object_idx_to_name,
            inputs.vocab.pred_idx_to_name,
        )
        self.last_counts = counts
        out: dict[str, float | None] = {"sg_consistency": None, "sg_object_recall": None}
        if counts.triples:
            out["sg_consistency"] = counts.consistency
        else:
            self.unavailable["sg_consistency"] = "the evaluated graphs have no geometric triple"
        if counts.objects:
            out["sg_object_recall"] = counts.object_recall
        else:
            self.unavailable["sg_object_recall"] = "the evaluated graphs have no object"
        return out
