"""CLIP score between each generated image and its scene graph written as a phrase.

    clip_score = mean over generated images x of 100 * max(cos(E_I(x), E_T(phrase(g(x)))), 0),

the CLIPScore of Hessel et al. (EMNLP 2021) with torchmetrics' scale (``CLIPScore``: 100 * cos, clipped at 0;
Hessel's ``2.5 * max(cos, 0)`` differs only by the constant). Pinned model: open_clip ``ViT-B-32`` with
OpenAI's weights; images go through open_clip's own eval transform (PIL bicubic resize to 224, centre crop,
CLIP mean/std), texts through its tokenizer (77 tokens, truncated). Written by hand: torchmetrics' CLIPScore
only loads Hugging Face ``transformers`` checkpoints, while the suite's CLIP weights are open_clip files.

Phrase of a graph (names via :func:`benchmark.text_encoders.phrases.natural_phrase`): its geometric triples
as ``"<subject> <predicate> <object>"`` joined by ``", "``, then the objects no such triple mentions;
``__image__`` and ``__in_image__`` are left out (``"red circle left of blue square, green diamond"``).

Weights are given as for the CLIP text encoder (:class:`benchmark.text_encoders.clip.ClipEncoder`): the
``weights`` argument or ``$SG2I_CLIP_WEIGHTS`` (a file, ``<model>:<file>``, ``local-dir:<dir>`` or
``random:<model>``); without either, OpenAI's ``ViT-B-32`` file is looked up in open_clip's caches without
any download (:func:`cached_openai_file`). Without weights the metric is unavailable with that encoder's
instructions. Provenance is ``random_init=True`` for ``random:`` models, for the test-only
``sg2i-tiny-clip`` architecture, and for any architecture other than the pinned ``ViT-B-32`` (not comparable).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmark.batch import SceneGraphItem
from benchmark.interfaces import EvalInputs, Metric, MetricUnavailable, WeightProvenance
from benchmark.progress import tqdm
from benchmark.registry import register
from benchmark.scene_graph import Vocab
from benchmark.text_encoders.phrases import natural_phrase

PINNED_MODEL = "ViT-B-32"
OPENAI_HF_REPO = "timm/vit_base_patch32_clip_224.openai"
OPENAI_HF_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
OPENAI_URL_FILE = "ViT-B-32.pt"
_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], tuple[Any, Any, Any]] = {}


def graph_phrase(item: SceneGraphItem, vocab: Vocab) -> str:
    """The scene graph of ``item`` as one phrase (see the module docstring)."""
    objs = [vocab.object_idx_to_name[o] for o in item.objs.tolist()]
    preds = vocab.pred_idx_to_name
    parts, used = [], set()
    for s, p, o in item.triples.tolist():
        if preds[p].startswith("__") or objs[s].startswith("__") or objs[o].startswith("__"):
            continue
        parts.append(f"{natural_phrase(objs[s])} {natural_phrase(preds[p])} {natural_phrase(objs[o])}")
        used.update((s, o))
    parts += [natural_phrase(n) for i, n in enumerate(objs) if i not in used and not n.startswith("__")]
    return ", ".join(parts)


# open_clip's ``download_pretrained_from_url`` cache folder (its default ``cache_dir``); tests point it elsewhere.
OPENAI_URL_CACHE = "~/.cache/clip"


def cached_openai_file() -> Path | None:
    """OpenAI's ViT-B-32 weights in open_clip's caches, looked up without any network access: the Hugging Face
    cache of ``timm/vit_base_patch32_clip_224.openai`` (open_clip 3.3.0's ``hf_hub`` entry for the ``openai``
    tag) or ``~/.cache/clip/ViT-B-32.pt`` (its ``url`` entry)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of open_clip and transformers
        try_to_load_from_cache = None
    home = Path(os.environ.get("HF_HOME") or Path("~/.cache/huggingface").expanduser())
    hub_cache = os.environ.get("HF_HUB_CACHE") or str(home / "hub")
    if try_to_load_from_cache is not None:
        for name in OPENAI_HF_FILES:
            p = try_to_load_from_cache(OPENAI_HF_REPO, name, cache_dir=hub_cache)
            if isinstance(p, str) and Path(p).is_file():
                return Path(p)
    p = Path(OPENAI_URL_CACHE).expanduser() / OPENAI_URL_FILE
    return p if p.is_file() else None


def _encoder(weights: str) -> Any:
    """The resolved CLIP weights; without a spec only local caches are searched (a download attempt offline
    retries for about a minute, and the metric must cost nothing when unavailable)."""
    from benchmark.text_encoders.base import WeightsUnavailable
    from benchmark.text_encoders.clip import ENV, HELP, ClipEncoder

    spec = weights or os.environ.get(ENV, "")
    if not spec:
        cached = cached_openai_file()
        if cached is None:
            raise MetricUnavailable(
                f"clip_score: no {PINNED_MODEL} (openai) weights in the local caches. {HELP}"
            )
        spec = str(cached)  # a bare file = ViT-B-32 with QuickGELU, as OpenAI's weights need
    try:
        return ClipEncoder(spec)
    except WeightsUnavailable as e:
        raise MetricUnavailable(f"clip_score: {e}") from None


def load_clip(enc: Any, device: torch.device | str = "cpu") -> tuple[Any, Any, Any]:
    """(model, image transform, tokenizer) of a resolved :class:`ClipEncoder` spec, image tower included."""
    import open_clip

    from benchmark.text_encoders.base import seeded_init
    from benchmark.text_encoders.clip import register_tiny_config

    key = (f"{enc.kind}|{enc.model_name}|{enc.checkpoint}|{enc.sha256}", str(torch.device(device)))
    with _LOCK:
        if key not in _MODELS:
            register_tiny_config()
            try:
                if enc.kind == "random":
                    with seeded_init(0):
                        model, _, preprocess = open_clip.create_model_and_transforms(
                            enc.model_name, pretrained=None
                        )
                elif enc.kind == "dir":
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        enc.model_name, require_pretrained=True
                    )
                else:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        enc.model_name,
                        pretrained=str(enc.checkpoint),
                        force_quick_gelu=enc.quick_gelu,
                        require_pretrained=True,
                    )
            # open_clip asserts on a checkpoint of another architecture
            except (RuntimeError, ValueError, KeyError, AssertionError, OSError) as e:
                raise MetricUnavailable(
                    f"clip_score: open_clip could not load {enc.checkpoint} into {enc.model_name} "
                    f"({type(e).__name__}: {str(e)[:300]})"
                ) from None
            _MODELS[key] = (model.to(device).eval(), preprocess, open_clip.get_tokenizer(enc.model_name))
        return _MODELS[key]


def clip_scores(
    model: Any,
    preprocess: Any,
    tokenizer: Any,
    images: Tensor,
    phrases: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> Tensor:
    """100 * max(cos(image_k, phrase_k), 0) for uint8 images [N, 3, H, W] and N phrases -> float64 [N]."""
    from PIL import Image

    out = []
    n = images.shape[0]
    with torch.inference_mode():
        for s in tqdm(range(0, n, batch_size), desc="clip score", disable=n <= batch_size, leave=False):
            chunk = images[s : s + batch_size].permute(0, 2, 3, 1).cpu().numpy()
            x = torch.stack([preprocess(Image.fromarray(a)) for a in chunk]).to(device)
            img = model.encode_image(x, normalize=True)
            txt = model.encode_text(tokenizer(list(phrases[s : s + batch_size])).to(device), normalize=True)
            out.append((100 * (img * txt).sum(-1).clamp(min=0)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


@register(
    "metric",
    "clip_score",
    outputs={"clip_score": True},
    mode="100 * max(cos, 0), open_clip ViT-B-32/openai",
)
class ClipScore(Metric):
    """CLIPScore (100 * max(cos, 0), open_clip ViT-B-32/openai) between images and their graph's phrase."""

    @staticmethod
    def weights_missing() -> str | None:
        """Why the score would be unavailable (None when CLIP weights are configured or cached)."""
        from benchmark.text_encoders.clip import ENV

        if os.environ.get(ENV) or cached_openai_file() is not None:
            return None
        return f"no {PINNED_MODEL} (openai) weights in the local caches and {ENV} is not set"

    def __init__(self, weights: str = "", batch_size: int = 64) -> None:
        self.weights = weights
        self.batch_size = batch_size
        super().__init__()
        self._used: list[WeightProvenance] = []

    def compute(self, inputs: EvalInputs) -> dict[str, float | None]:
        enc = _encoder(self.weights)
        model, preprocess, tokenizer = load_clip(enc, inputs.device)
        prov = enc.provenance()
        pinned = enc.model_name == PINNED_MODEL and enc.kind != "random"
        if not pinned:
            prov = WeightProvenance(
                name=prov.name.replace("text_encoder:", "clip_score:"),
                source=f"{prov.source} (not the pinned {PINNED_MODEL}: not comparable)",
                sha256=prov.sha256,
                random_init=True,
            )
        else:
            prov = WeightProvenance(
                prov.name.replace("text_encoder:", "clip_score:"), prov.source, prov.sha256, False
            )
        self._used = [prov]
        phrases: dict[int, str] = {}
        per_image = []
        for g in inputs.fake_to_graph.tolist():
            if g not in phrases:
                phrases[g] = graph_phrase(inputs.graphs[g], inputs.vocab)
            per_image.append(phrases[g])
        s = clip_scores(model, preprocess, tokenizer, inputs.fake, per_image, inputs.device, self.batch_size)
        return {"clip_score": float(s.mean())}

    def provenance(self) -> list[WeightProvenance]:
        return list(self._used)
