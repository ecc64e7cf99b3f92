"""Nearest-neighbour retrieval: return the training image whose scene graph matches best.

A genuine reference point rather than a generator: its images have real-image quality (FID close to
the train/test gap) but follow the query graph only as far as some training graph happens to match it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.batch import SceneGraphBatch
from benchmark.interfaces import DatasetInfo, Method, SceneGraphDataset
from benchmark.registry import register
from benchmark.scene_graph import IMAGE_TOKEN, IN_IMAGE


@dataclass(frozen=True)
class RetrievalConfig:
    object_weight: float = 1.0  # weight of the object-multiset Jaccard similarity
    relation_weight: float = 1.0  # weight of the (subject, predicate, object)-name set Jaccard similarity


@register("method", "retrieval")
class Retrieval(Method):
    """Nearest-neighbour retrieval of the training image with the most similar scene graph.

    Similarity of query graph q and training graph t (objects by name, ``__image__`` excluded):
    ``w_o * sum_c min(n_q(c), n_t(c)) / sum_c max(n_q(c), n_t(c)) + w_r * |R_q & R_t| / |R_q | R_t|``
    where n(c) counts objects of class c and R is the set of (subject class, predicate, object class)
    triples without ``__in_image__``. Ties are broken uniformly at random with the sample's generator.
    """

    Config = RetrievalConfig
    trainable = False

    def __init__(self, cfg: RetrievalConfig, info: DatasetInfo) -> None:
        super().__init__(cfg, info)
        v = info.vocab
        self.num_obj, self.num_pred = v.num_objects, v.num_predicates
        self.image_obj = v.object_name_to_idx[IMAGE_TOKEN]
        self.in_image = v.pred_name_to_idx[IN_IMAGE]
        s = info.image_size
        self.register_buffer("images", torch.zeros(0, 3, s, s, dtype=torch.uint8))
        self.register_buffer("obj_counts", torch.zeros(0, self.num_obj))
        self.register_buffer("rel_index", torch.zeros(2, 0, dtype=torch.long))  # (train row, relation code)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # The index is sized by the training set: adopt the stored buffers' shapes before loading.
        for name in ("images", "obj_counts", "rel_index"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _signature(self, objs: Tensor, triples: Tensor) -> tuple[Tensor, set[int]]:
        keep = objs != self.image_obj
        counts = torch.bincount(objs[keep], minlength=self.num_obj).float()
        rels = {
            (int(objs[s]) * self.num_pred + int(p)) * self.num_obj + int(objs[o])
            for s, p, o in triples.tolist()
            if p != self.in_image
        }
        return counts, rels

    def setup(self, train_set: SceneGraphDataset) -> None:
        images, counts, rows, codes = [], [], [], []
        for i in range(len(train_set)):
            it = train_set[i]
            c, rels = self._signature(it.objs, it.triples)
            counts.append(c)
            rows += [i] * len(rels)
            codes += sorted(rels)
            images.append(it.image)
        dev = self.images.device
        self.images = (torch.stack(images).clamp(0, 1) * 255).round().to(torch.uint8).to(dev)
        self.obj_counts = torch.stack(counts).to(dev)
        self.rel_index = torch.tensor([rows, codes], dtype=torch.long, device=dev).reshape(2, -1)

    def train_step(self, batch: SceneGraphBatch, step: int) -> dict[str, float]:
        return {}

    def similarity(self, objs: Tensor, triples: Tensor) -> Tensor:
        """Similarity [N_train] of one query graph to every training graph."""
        q_counts, q_rels = self._signature(objs.cpu(), triples.cpu())
        q_counts = q_counts.to(self.obj_counts.device)
        inter = torch.minimum(self.obj_counts, q_counts).sum(1)
        union = torch.maximum(self.obj_counts, q_counts).sum(1).clamp(min=1)
        sim = self.cfg.object_weight * inter / union
        if self.cfg.relation_weight:
            n = self.obj_counts.shape[0]
            rows, codes = self.rel_index
            sizes = torch.bincount(rows, minlength=n).float()
            q = torch.tensor(sorted(q_rels), dtype=torch.long, device=codes.device)
            hit = torch.isin(codes, q).float()
            rel_inter = torch.zeros(n, device=sim.device).index_add_(0, rows, hit)
            rel_union = (sizes + len(q_rels) - rel_inter).clamp(min=1)
            sim = sim + self.cfg.relation_weight * rel_inter / rel_union
        return sim

    def sample(self, batch: SceneGraphBatch, generator: list[torch.Generator], layout: str = "pred") -> Tensor:
        if self.images.shape[0] == 0:
            raise RuntimeError("retrieval index is empty: the method was not set up on a training split")
        out = []
        for i, item in enumerate(batch.split()):
            sim = self.similarity(item.objs, item.triples)
            best = (sim >= sim.max() - 1e-6).nonzero().flatten().cpu()
            pick = best[torch.randint(len(best), (1,), generator=generator[i])]
            out.append(self.images[pick.to(self.images.device)][0])
        return torch.stack(out).float() / 255.0
