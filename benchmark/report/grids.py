"""Sample grids: each test scene graph drawn as a graph, its ground-truth image and every method's sample.

Generated images come from ``<run dir>/samples/<split>.npz`` (``images`` uint8 [N*S, 3, H, W],
``fake_to_graph`` [N*S], ``image_ids`` [N]) written by :func:`benchmark.evaluate.evaluate`; the run dir is
the folder of the result's checkpoint. Graph ``i`` of the file is item ``i`` of the split (evaluation order),
checked by its image id. Ground truth and graphs come from the dataset registry.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from benchmark.batch import SceneGraphItem  # noqa: E402
from benchmark.scene_graph import Vocab  # noqa: E402


@dataclass
class Column:
    """One method's images for the grid: ``images[i]`` is the first sample of graph ``i``."""

    label: str
    images: np.ndarray  # uint8 [K, H, W, 3]


def load_samples(path: Path, items: list[SceneGraphItem]) -> np.ndarray:
    """The first sample of each of ``items`` from a samples file, as uint8 [K, H, W, 3].

    Raises ValueError (naming the file and field) when the file does not hold these graphs.
    """
    with np.load(path, allow_pickle=False) as z:
        images, owners, ids = z["images"], z["fake_to_graph"], z["image_ids"]
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(owners):
        raise ValueError(
            f"{path}: field 'images' must be uint8 [N, 3, H, W] with one 'fake_to_graph' entry each"
        )
    out = []
    for i, it in enumerate(items):
        if i >= len(ids) or str(ids[i]) != it.image_id:
            got = str(ids[i]) if i < len(ids) else "nothing"
            raise ValueError(
                f"{path}: field 'image_ids'[{i}] is {got}, but graph {i} of the split is {it.image_id}"
            )
        hits = np.flatnonzero(owners == i)
        if not len(hits):
            raise ValueError(f"{path}: field 'fake_to_graph' has no sample of graph {i}")
        out.append(images[hits[0]].transpose(1, 2, 0))
    return np.stack(out)


def scene_graph(item: SceneGraphItem, vocab: Vocab) -> nx.MultiDiGraph:
    """Objects as nodes (the ``__image__`` node left out), (subject, predicate, object) triples as edges."""
    g = nx.MultiDiGraph()
    names = vocab.object_idx_to_name
    for k, o in enumerate(item.objs.tolist()):
        if names[o] != "__image__":
            g.add_node(k, label=names[o])
    for s, p, o in item.triples.tolist():
        pred = vocab.pred_idx_to_name[p]
        if pred != "__in_image__" and s in g and o in g:
            g.add_edge(s, o, label=pred)
    return g


def draw_graph(ax: Axes, g: nx.MultiDiGraph) -> None:
    ax.set_axis_off()
    if not g.number_of_nodes():
        ax.text(0.5, 0.5, "(no objects)", ha="center", va="center", fontsize=7)
        return
    pos = nx.circular_layout(g) if g.number_of_nodes() > 1 else {n: np.zeros(2) for n in g}
    labels = {n: "\n".join(textwrap.wrap(d["label"], 12)) for n, d in g.nodes(data=True)}
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=900, node_color="#dbe9f6", edgecolors="#3b6ea5")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=6)
    nx.draw_networkx_edges(
        g, pos, ax=ax, node_size=900, arrowsize=8, edge_color="#555555", connectionstyle="arc3,rad=0.12"
    )
    edge_labels: dict[tuple[int, int], str] = {}
    for s, o, d in g.edges(data=True):
        edge_labels[(s, o)] = "; ".join(filter(None, [edge_labels.get((s, o), ""), d["label"]]))
    nx.draw_networkx_edge_labels(
        g,
        pos,
        edge_labels,
        ax=ax,
        font_size=5,
        label_pos=0.5,
        rotate=False,
        connectionstyle="arc3,rad=0.12",
        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
    )
    ax.margins(0.25)


def sample_grid(items: list[SceneGraphItem], vocab: Vocab, columns: list[Column], title: str) -> Figure:
    """Rows = graphs; columns = the graph, the ground-truth image, then one column per method."""
    ncols, nrows = 2 + len(columns), len(items)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols + 0.6, 1.9 * nrows + 0.5), squeeze=False)
    heads = ["scene graph", "ground truth", *(c.label for c in columns)]
    for i, it in enumerate(items):
        draw_graph(axes[i][0], scene_graph(it, vocab))
        gt = (
            (it.image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            if it.image is not None
            else None
        )
        cells = [gt, *(c.images[i] for c in columns)]
        for j, img in enumerate(cells, start=1):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(img, interpolation="nearest")
        axes[i][0].text(0.0, 0.0, it.image_id, transform=axes[i][0].transAxes, fontsize=6, color="#555555")
    for j, head in enumerate(heads):
        axes[0][j].set_title(head, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
