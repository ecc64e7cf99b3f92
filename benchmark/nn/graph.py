"""Scene-graph convolution, as in google/sg2im ``sg2im/graph.py`` and ``sg2im/layers.py``.

A scene graph is given as object vectors ``obj_vecs [O, D]``, predicate vectors ``pred_vecs [T, D]`` (one per
triple) and ``edges [T, 2]`` holding the (subject, object) row of each triple in ``obj_vecs``. Objects of
several images can be packed together (the triples never cross images), so every function here works on
a whole :class:`benchmark.batch.SceneGraphBatch` at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GraphTripleConv", "GraphTripleConvNet", "build_mlp"]


def build_mlp(
    dim_list: Sequence[int],
    activation: str = "relu",
    batch_norm: str = "none",
    dropout: float = 0.0,
    final_nonlinearity: bool = True,
) -> nn.Sequential:
    """An MLP ``Linear(d0, d1) -> [BN] -> act -> ... -> Linear(d_{n-1}, d_n) [-> BN -> act]``.

    Follows sg2im/layers.py ``build_mlp``: with the default ``final_nonlinearity=True`` the activation
    (and batch norm, if ``batch_norm == "batch"``) also follows the LAST linear layer, so e.g. sg2im's box
    regressor ends in a ReLU. ``activation`` is ``"relu"`` or ``"leakyrelu"`` (slope 0.01, as sg2im);
    dropout, if any, follows every layer.
    """
    if activation not in ("relu", "leakyrelu"):
        raise ValueError(f"build_mlp: unknown activation {activation!r}; valid: relu, leakyrelu")
    if batch_norm not in ("none", "batch"):
        raise ValueError(f"build_mlp: unknown batch_norm {batch_norm!r}; valid: none, batch")
    layers: list[nn.Module] = []
    for i in range(len(dim_list) - 1):
        dim_in, dim_out = dim_list[i], dim_list[i + 1]
        layers.append(nn.Linear(dim_in, dim_out))
        final_layer = i == len(dim_list) - 2
        if not final_layer or final_nonlinearity:
            if batch_norm == "batch":
                layers.append(nn.BatchNorm1d(dim_out))
            layers.append(nn.ReLU() if activation == "relu" else nn.LeakyReLU())
        if dropout > 0:
            layers.append(nn.Dropout(p=dropout))
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal init of every Linear weight (sg2im/graph.py ``_init_weights``; biases keep torch's)."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)


class GraphTripleConv(nn.Module):
    """One layer of scene-graph convolution (follows sg2im/graph.py ``GraphTripleConv``).

    For every triple t = (s, p, o) with vectors ``v_s, v_p, v_o`` (each ``Din``):

    1. ``net1``: MLP ``[3 Din -> H -> 2 H + Dout]`` (ReLU after every layer, including the last) maps
       ``[v_s, v_p, v_o]`` (``[T, 3 Din]``) to ``[T, 2 H + Dout]``, split into a subject candidate
       ``s'_t [T, H]``, the new predicate vector ``p'_t [T, Dout]`` and an object candidate ``o'_t [T, H]``.
    2. Pooling: each object i gathers the candidates of every triple it takes part in,
       ``pooled_i = (sum_{t: s_t = i} s'_t + sum_{t: o_t = i} o'_t) / max(1, n_i)`` with ``n_i`` the number of
       such (triple, role) pairs (``pooling="avg"``; ``"sum"`` skips the division). Objects in no triple get 0.
    3. ``net2``: MLP ``[H -> H -> Dout]`` (ReLU after both) maps ``pooled [O, H]`` to the new objects
       ``[O, Dout]``.

    Returns ``(new_obj_vecs [O, Dout], new_pred_vecs [T, Dout])``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int | None = None,
        hidden_dim: int = 512,
        pooling: str = "avg",
        mlp_normalization: str = "none",
    ) -> None:
        super().__init__()
        if output_dim is None:
            output_dim = input_dim
        if pooling not in ("sum", "avg"):
            raise ValueError(f"GraphTripleConv: invalid pooling {pooling!r}; valid: sum, avg")
        self.input_dim, self.output_dim, self.hidden_dim, self.pooling = (
            input_dim,
            output_dim,
            hidden_dim,
            pooling,
        )
        self.net1 = build_mlp(
            [3 * input_dim, hidden_dim, 2 * hidden_dim + output_dim], batch_norm=mlp_normalization
        )
        self.net1.apply(_init_weights)
        self.net2 = build_mlp([hidden_dim, hidden_dim, output_dim], batch_norm=mlp_normalization)
        self.net2.apply(_init_weights)

    def forward(self, obj_vecs: Tensor, pred_vecs: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        """obj_vecs [O, Din], pred_vecs [T, Din], edges [T, 2] (subject row, object row) -> ([O, Dout], [T, Dout])."""
        num_objs = obj_vecs.shape[0]
        h, dout = self.hidden_dim, self.output_dim
        s_idx, o_idx = edges[:, 0].contiguous(), edges[:, 1].contiguous()
        new_t = self.net1(torch.cat([obj_vecs[s_idx], pred_vecs, obj_vecs[o_idx]], dim=1))  # [T, 2H + Dout]
        new_s, new_p, new_o = new_t[:, :h], new_t[:, h : h + dout], new_t[:, h + dout :]
        # One scatter over the 2T (row, candidate) pairs: the same sums as sg2im's two scatter_adds.
        idx = torch.cat([s_idx, o_idx])
        cand = torch.cat([new_s, new_o])
        pooled = cand.new_zeros(num_objs, h).index_add(0, idx, cand)  # cand's dtype: bf16 under autocast
        if self.pooling == "avg":
            counts = torch.bincount(idx, minlength=num_objs).to(pooled.dtype).clamp(min=1)
            pooled = pooled / counts.view(-1, 1)
        return self.net2(pooled), new_p


class GraphTripleConvNet(nn.Module):
    """``num_layers`` :class:`GraphTripleConv` layers of width ``input_dim`` (sg2im/graph.py ``GraphTripleConvNet``)."""

    def __init__(
        self,
        input_dim: int,
        num_layers: int = 5,
        hidden_dim: int = 512,
        pooling: str = "avg",
        mlp_normalization: str = "none",
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.gconvs = nn.ModuleList(
            GraphTripleConv(
                input_dim, hidden_dim=hidden_dim, pooling=pooling, mlp_normalization=mlp_normalization
            )
            for _ in range(num_layers)
        )

    def forward(self, obj_vecs: Tensor, pred_vecs: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
        """obj_vecs [O, D], pred_vecs [T, D], edges [T, 2] -> updated ([O, D], [T, D])."""
        for gconv in self.gconvs:
            obj_vecs, pred_vecs = gconv(obj_vecs, pred_vecs, edges)
        return obj_vecs, pred_vecs
