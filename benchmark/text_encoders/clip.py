"""CLIP text encoder from open_clip (default: ViT-B-32 with OpenAI's weights, 512-d, L2-normalised).

``weights`` (or the env var ``SG2I_CLIP_WEIGHTS`` when ``weights`` is empty) selects the weights:

- ``""``: ``ViT-B-32`` + tag ``openai`` through open_clip's own download/cache
  (``open_clip.get_pretrained_cfg`` + ``open_clip.download_pretrained``: the Hugging Face cache, or
  ``~/.cache/clip``). Offline without a populated cache this raises :class:`WeightsUnavailable`.
- ``"/path/open_clip_pytorch_model.bin"`` (any file ``open_clip.load_checkpoint`` reads: ``.safetensors``, torch
  pickle, OpenAI TorchScript ``.pt``): weights of the default architecture, i.e. OpenAI ``ViT-B-32`` (QuickGELU),
  loaded with ``open_clip.create_model("ViT-B-32", pretrained=<file>, force_quick_gelu=True,
  require_pretrained=True)``.
- ``"<model>:<file>"`` or ``"<model>:<tag>"``, e.g. ``"ViT-B-16:laion2b_s34b_b88k"``: another open_clip
  architecture with a file, or with a pretrained tag (QuickGELU as the tag says).
- ``"local-dir:<dir>"`` or a directory: open_clip's ``local-dir:`` schema (``<dir>/open_clip_config.json`` with
  ``model_cfg`` + a checkpoint found by open_clip's ``_find_checkpoint_in_dir`` order).
- ``"random:<model>"`` (``"random"`` = ``random:sg2i-tiny-clip``, a 2-layer x 64 text tower registered with
  ``open_clip.add_model_config``): an explicit random init (seed 0), for tests; provenance ``random_init=True``.

Text features: ``model.encode_text(tokenizer(phrases), normalize=True)`` with ``open_clip.get_tokenizer`` (the
BPE vocabulary ships with open_clip, so tokenizing works offline), i.e. **L2-normalised** projected EOT features.
Provenance records the checkpoint file's sha256; a user-supplied file counts as real weights (``random_init=False``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import torch

from benchmark.interfaces import WeightProvenance
from benchmark.io import atomic_write_text, file_sha256
from benchmark.paths import cache_dir
from benchmark.registry import register
from benchmark.text_encoders.base import (
    TextEncoder,
    WeightsUnavailable,
    encode_batched,
    seeded_init,
)

ENV = "SG2I_CLIP_WEIGHTS"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_TAG = "openai"
TINY_MODEL = "sg2i-tiny-clip"
# A tiny CLIP for tests: 2 text layers x 64 wide (+ a 1-layer 32 px vision tower open_clip insists on).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# open_clip's _find_checkpoint_in_dir preference (factory.py); mirrored so resolving needs no import.
_DIR_PREFERENCE = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".npz", ".ckpt")

HELP = (
    "Provide CLIP weights in one of these ways: (1) populate open_clip's cache once on a machine with network "
    "(python -c \"import open_clip; open_clip.create_model('ViT-B-32', pretrained='openai')\", then copy "
    "~/.cache/huggingface or set HF_HOME); (2) pass the checkpoint file: "
    "--set method.text_encoder_weights=/path/to/open_clip_pytorch_model.bin (from the Hugging Face repo "
    "timm/vit_base_patch32_clip_224.openai) or export SG2I_CLIP_WEIGHTS=/path/to/open_clip_pytorch_model.bin; "
    "(3) another architecture as '<model>:<file or tag>', or a folder as 'local-dir:/path' (open_clip_config.json "
    "+ checkpoint). For tests only: 'random:sg2i-tiny-clip' (random init, never on the leaderboard)."
)


def _builtin_config(model: str) -> dict[str, Any] | None:
    """An open_clip architecture config read from the wheel's ``model_configs/`` (no import of open_clip)."""
    if model == TINY_MODEL:
        return json.loads(json.dumps(TINY_CONFIG))
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = (
        Path(next(iter(spec.submodule_search_locations)))
        / "model_configs"
        / f"{model.replace('/', '-')}.json"
    )
    return json.loads(f.read_text()) if f.is_file() else None


def register_tiny_config() -> None:
    """Make ``sg2i-tiny-clip`` an open_clip model name (``open_clip.add_model_config`` on a JSON file)."""
    import open_clip

    if open_clip.get_model_config(TINY_MODEL) is not None:
        return
    path = cache_dir() / "open_clip_configs" / f"{TINY_MODEL}.json"
    text = json.dumps(TINY_CONFIG, indent=2, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    open_clip.add_model_config(path)


def _find_checkpoint(d: Path) -> Path | None:
    for name in _DIR_PREFERENCE:
        if (d / name).is_file():
            return d / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in d.glob(ext))
    found.sort(key=lambda p: p.suffix == ".safetensors", reverse=True)
    return found[0] if found else None


def _hub_reachable() -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the Hub's host does not resolve: then only the cache is read,
    instead of huggingface_hub retrying each download for half a minute before failing."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return False
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _cached_hub_file(hf_hub: str) -> Path | None:
    """The cached file of open_clip's ``org/model/[file]`` Hub entry (its default files when none is named)."""
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(hf_hub)
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.startswith("~") or s.lower().endswith(_WEIGHT_SUFFIXES)


@register("text_encoder", "clip")
class ClipEncoder(TextEncoder):
    """OpenCLIP text tower (default ViT-B-32/openai, 512-d, L2-normalised); file, local-dir or random:<model>."""

    name: ClassVar[str] = "clip"
    keep_visual: ClassVar[bool] = False  # True keeps the image tower (sampling-time CLIP guidance needs it)

    def __init__(self, weights: str = "", device: str | torch.device = "cpu") -> None:
        super().__init__(weights, device)
        self.spec = weights or os.environ.get(ENV, "")
        origin = "weights" if weights else (ENV if self.spec else "default")
        self.kind, self.model_name, self.target, self.quick_gelu = self._parse(self.spec, origin)
        self.random_init = self.kind == "random"
        self.checkpoint: Path | None = None
        self.model_cfg: dict[str, Any] | None = None
        if self.kind == "random":
            self.model_cfg = _builtin_config(self.model_name)
        elif self.kind == "dir":
            d = Path(self.target)
            cfg_file = d / "open_clip_config.json"
            if not cfg_file.is_file():
                raise WeightsUnavailable(
                    f"clip: {cfg_file} not found (a local-dir: folder needs open_clip_config.json "
                    f"with 'model_cfg' and a checkpoint). {HELP}"
                )
            self.model_cfg = json.loads(cfg_file.read_text()).get("model_cfg")
            self.checkpoint = _find_checkpoint(d)
            if self.checkpoint is None or self.model_cfg is None:
                raise WeightsUnavailable(
                    f"clip: no checkpoint (*.safetensors/*.bin/*.pth) or no 'model_cfg' in {d}. {HELP}"
                )
        elif self.kind == "file":
            self.checkpoint = Path(self.target)
            self.model_cfg = _builtin_config(self.model_name)
        else:  # tag: open_clip's own download/cache
            self.checkpoint, self.quick_gelu = self._download(self.model_name, self.target)
            self.model_cfg = _builtin_config(self.model_name)
        self.sha256 = file_sha256(self.checkpoint) if self.checkpoint is not None else None
        self.dim = int((self.model_cfg or {}).get("embed_dim") or self.output_dim(weights))
        self._model: Any = None
        self._tokenizer: Any = None

    @staticmethod
    def _parse(spec: str, origin: str) -> tuple[str, str, str, bool]:
        """-> (kind, open_clip model name, file/dir/tag, force QuickGELU)."""
        if spec == "random" or spec.startswith("random:"):
            model = spec.partition(":")[2] or TINY_MODEL
            if _builtin_config(model) is None:
                raise ValueError(f"clip: unknown open_clip architecture {model!r} in weights={spec!r}")
            return "random", model, "", False
        if spec.startswith("local-dir:"):
            d = Path(spec[len("local-dir:") :]).expanduser()
            if not d.is_dir():
                raise WeightsUnavailable(f"clip: directory {d} (from {origin}={spec!r}) not found. {HELP}")
            return "dir", f"local-dir:{d}", str(d), False
        if not spec:
            return "tag", DEFAULT_MODEL, DEFAULT_TAG, True
        p = Path(spec).expanduser()
        if p.is_dir():
            return "dir", f"local-dir:{p}", str(p), False
        if p.is_file():  # a bare file holds the default architecture: OpenAI ViT-B-32 (QuickGELU)
            return "file", DEFAULT_MODEL, str(p), True
        model, sep, rest = spec.partition(":")
        if sep and _builtin_config(model) is not None and rest:
            q = Path(rest).expanduser()
            if q.is_file():
                return "file", model, str(q), False
            if _looks_like_path(rest):
                raise WeightsUnavailable(
                    f"clip: checkpoint file {q} (from {origin}={spec!r}) not found. {HELP}"
                )
            return "tag", model, rest, False
        if _looks_like_path(spec):
            raise WeightsUnavailable(f"clip: checkpoint file {p} (from {origin}={spec!r}) not found. {HELP}")
        raise WeightsUnavailable(
            f"clip: cannot interpret {origin}={spec!r} as a file, folder, '<model>:<tag>' "
            f"or 'random:<model>'. {HELP}"
        )

    @staticmethod
    def _download(model: str, tag: str) -> tuple[Path, bool]:
        """open_clip's tag resolution: ``get_pretrained_cfg`` + ``download_pretrained`` (cache first)."""
        import open_clip

        cfg = open_clip.get_pretrained_cfg(model, tag)
        if not cfg:
            raise WeightsUnavailable(
                f"clip: open_clip has no pretrained tag {tag!r} for {model!r} "
                f"(known: {open_clip.list_pretrained_tags_by_model(model)}). {HELP}"
            )
        if cfg.get("hf_hub") and not _hub_reachable():  # offline: the cache only, no download retries
            path = _cached_hub_file(cfg["hf_hub"])
            if path is None:
                raise WeightsUnavailable(
                    f"clip: the {model} weights for open_clip tag {tag!r} are not in the local Hugging Face cache "
                    f"({cfg['hf_hub']}) and the Hub cannot be reached (offline). {HELP}"
                )
            return path, bool(cfg.get("quick_gelu", False))
        try:
            path = open_clip.download_pretrained(cfg)
        except Exception as e:  # offline: RuntimeError/OSError/LocalEntryNotFoundError
            raise WeightsUnavailable(
                f"clip: the {model} weights for open_clip tag {tag!r} are not in the local open_clip/Hugging Face "
                f"cache and could not be downloaded ({type(e).__name__}: {str(e)[:200]}). {HELP}"
            ) from None
        if not path or not Path(path).is_file():
            raise WeightsUnavailable(f"clip: open_clip returned no file for {model}/{tag}. {HELP}")
        return Path(path), bool(cfg.get("quick_gelu", False))

    @classmethod
    def output_dim(cls, weights: str = "") -> int:
        spec = weights or os.environ.get(ENV, "")
        model = DEFAULT_MODEL
        if spec == "random" or spec.startswith("random:"):
            model = spec.partition(":")[2] or TINY_MODEL
        elif spec.startswith("local-dir:") or Path(spec).expanduser().is_dir():
            d = Path(spec.removeprefix("local-dir:")).expanduser()
            try:
                return int(json.loads((d / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"])
            except (OSError, KeyError, ValueError):
                return 512
        elif ":" in spec and _builtin_config(spec.partition(":")[0]) is not None:
            model = spec.partition(":")[0]
        cfg = _builtin_config(model)
        return int(cfg["embed_dim"]) if cfg else 512

    def provenance(self) -> WeightProvenance:
        arch = self.model_name + ("+quickgelu" if self.quick_gelu else "")
        if self.kind == "random":
            source = f"random:{self.model_name} (seed 0)"
        elif self.kind == "tag":
            source = f"open_clip:{self.model_name}/{self.target} ({self.checkpoint})"
        else:
            source = f"file:{self.checkpoint}"
        return WeightProvenance(
            name=f"text_encoder:clip/{arch}", source=source, sha256=self.sha256, random_init=self.random_init
        )

    def cache_identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "model": self.model_name,
            "cfg": self.model_cfg,
            "quick_gelu": self.quick_gelu,
            "weights": self.sha256,
            "features": "encode_text(normalize=True)",
        }
        if self.random_init:
            from importlib.metadata import version

            ident.update(seed=0, torch=torch.__version__, open_clip=version("open_clip_torch"))
        return ident

    def _load(self) -> None:
        import open_clip

        register_tiny_config()
        if self.kind == "random":
            with seeded_init(0):
                model = open_clip.create_model(self.model_name, pretrained=None, device="cpu")
        else:
            try:
                if self.kind == "dir":
                    model = open_clip.create_model(self.model_name, device="cpu", require_pretrained=True)
                else:
                    model = open_clip.create_model(
                        self.model_name,
                        pretrained=str(self.checkpoint),
                        device="cpu",
                        force_quick_gelu=self.quick_gelu,
                        require_pretrained=True,
                    )
            except (RuntimeError, ValueError, KeyError) as e:
                raise WeightsUnavailable(
                    f"clip: open_clip could not load {self.checkpoint} into {self.model_name} "
                    f"({type(e).__name__}: {str(e)[:300]}). {HELP}"
                ) from None
        if not self.keep_visual:
            model.visual = None  # only the text tower is used; frees the image tower's memory
        self._model = model.to(self.device).eval()
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        tokens = self._tokenizer(phrases).to(self.device)
        return self._model.encode_text(tokens, normalize=True)

    def encode(self, phrases: list[str]) -> torch.Tensor:
        if self._model is None:
            self._load()
        return encode_batched(self._encode, list(phrases))
