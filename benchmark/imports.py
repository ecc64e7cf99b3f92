"""Import released checkpoints of other code bases: ``python -m benchmark import-checkpoint KIND FILE --out CKPT``.

Kinds:

- ``sg2im``: google/sg2im's released generators (``sg2im-models/coco64.pt``, ``vg64.pt``, ``vg128.pt``, from its
  ``scripts/download_models.sh``). The file is a ``torch.save`` pickle of the dict written by sg2im
  ``scripts/train.py`` (``model_kwargs`` with the vocabulary inside, ``model_state``, optionally ``args``,
  ``d_obj_kwargs``/``d_obj_state``, ``d_img_kwargs``/``d_img_state`` and training logs). It becomes a suite
  checkpoint of method ``sg2im`` whose metadata carries ``imported: {kind, source, source_sha256, ...}``; ``eval``,
  ``generate`` and the report then treat it like any trained run.
- ``improved_diffusion`` / ``guided_diffusion``: openai UNet state dicts are not converted to a run here; they
  initialise a diffusion method's UNet with ``--set method.init_from=FILE`` (:func:`load_openai_unet`).

LostGAN-V2 and LayoutDiffusion converters wait for those methods to exist in the registry.

Reading a torch pickle: every global the pickle names is checked against :data:`ALLOWED_GLOBALS` (tensor
rebuild functions, storage types, ``OrderedDict``) before anything is unpickled, so a file naming another
global is refused with that global named; the file is then read with ``torch.load(weights_only=True)``,
which enforces the same rule again. Nothing else is ever unpickled.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from benchmark.checkpoint import CheckpointError, save_checkpoint
from benchmark.io import sha256_file

KINDS = ("sg2im", "improved_diffusion", "guided_diffusion")

_STORAGES = {
    f"{t}Storage"
    for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "Untyped")
}
ALLOWED_GLOBALS = frozenset(
    {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
     ("torch._utils", "_rebuild_parameter"), ("torch", "Size"), ("torch.storage", "UntypedStorage"),
     ("torch", "dtype"), ("torch", "device")}
    | {("torch", s) for s in _STORAGES}
    | {("torch", f"{d}") for d in ("float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool")}
    | {(b, n) for b in ("builtins", "__builtin__") for n in ("list", "dict", "set", "frozenset", "tuple")}
    | {("collections", "defaultdict")}  # sg2im train.py's loss logs: defaultdict(list)
)  # fmt: skip
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _pickle_globals(data: io.BufferedIOBase, count: int) -> list[tuple[str, str]]:
    """The globals named by the next ``count`` pickles of a stream (GLOBAL and resolvable STACK_GLOBAL)."""
    found: list[tuple[str, str]] = []
    for _ in range(count):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        last: Any = None
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                mod, _, attr = str(arg).partition(" ")
                found.append((mod, attr))
            elif name == "STACK_GLOBAL":
                if len(strings) < 2:
                    found.append(("<unresolved>", "STACK_GLOBAL"))
                else:
                    found.append((strings[-2], strings[-1]))
            elif name in _STRING_OPS:
                last = arg
                strings.append(str(arg))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = last
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(int(arg))
                if isinstance(last, str):
                    strings.append(last)
            else:
                last = None
            if name == "STOP":
                break
    return found


def scan_globals(path: Path) -> list[tuple[str, str]]:
    """Globals named by a ``torch.save`` file: zip format (``*/data.pkl``) or the legacy format (PyTorch < 1.6,
    the format of sg2im's 2018 release: magic number, protocol, system info, then the object, as pickles)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not names:
                raise CheckpointError(f"{path}: zip file without a data.pkl: not a torch.save file")
            return _pickle_globals(io.BytesIO(z.read(names[0])), 1)
    with open(path, "rb") as f:
        try:
            return _pickle_globals(f, 4)
        except (ValueError, EOFError) as e:
            raise CheckpointError(f"{path}: not a torch.save file ({e})") from None


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; torch.load supplies the tensor storages via ``persistent_load``."""

    stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.stand_ins:
            return self.stand_ins[(module, name)]
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


class _AllowListPickle:
    """The ``pickle_module`` handed to ``torch.load``: its ``Unpickler`` and ``load`` use the allow-list."""

    __name__ = "benchmark.imports.allow_list_pickle"
    Unpickler = _AllowListUnpickler

    @classmethod
    def load(cls, f: Any, **kwargs: Any) -> Any:
        return cls.Unpickler(f, **kwargs).load()


class _KeyOnly:
    """Stand-in for a class a checkpoint names only as a marker (a dict key); constructing it is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError(f"{cls.__qualname__} may only appear as a dict key, not be constructed")


def _key_only(module: str, name: str) -> type:
    return type(name, (_KeyOnly,), {"__module__": module, "__qualname__": name})


# PyTorch Lightning 1.x (< 1.5) keys ``checkpoint["callbacks"]`` by the callback *class*, so checkpoints of that era
# (CompVis latent-diffusion's first stages, trained with pytorch-lightning 1.4.2) name these globals; they stand in
# as inert keys and the callback states under them stay plain dicts of tensors and builtins.
LIGHTNING_KEY_GLOBALS: dict[tuple[str, str], type] = {
    (m, n): _key_only(m, n)
    for m, n in (("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
                 ("pytorch_lightning.callbacks.early_stopping", "EarlyStopping"))
}  # fmt: skip


def read_torch_pickle(path: str | Path, stand_ins: dict[tuple[str, str], type] | None = None) -> Any:
    """Read a ``torch.save`` file holding only tensors and builtin containers; refuse any other global by name.

    ``stand_ins`` maps further globals to inert replacements (e.g. :data:`LIGHTNING_KEY_GLOBALS`); the named
    module is never imported.

    ``torch.load(weights_only=True)`` first; files it cannot express (sg2im's loss logs are ``defaultdict(list)``
    with items, which its unpickler refuses) are read with :class:`_AllowListUnpickler` (the same allow-list,
    hand-written because torch's restricted unpickler only SETITEMs into dict, OrderedDict and Counter, even with
    ``torch.serialization.safe_globals([defaultdict])``). That second ``torch.load`` passes
    ``weights_only=False`` only to accept the allow-list ``pickle_module``; :func:`scan_globals` has already
    refused any other global before anything is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    stand_ins = stand_ins or {}
    bad = sorted({g for g in scan_globals(path) if g not in ALLOWED_GLOBALS and g not in stand_ins})
    if bad:
        names = ", ".join(f"{m}.{a}" for m, a in bad)
        raise CheckpointError(f"{path}: refused: the pickle names the global(s) {names}, which are not tensors or "
                              "builtin containers (nothing was unpickled)")  # fmt: skip
    try:
        with torch.serialization.safe_globals([(c, f"{m}.{n}") for (m, n), c in stand_ins.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    unpickler = type("_Unpickler", (_AllowListUnpickler,), {"stand_ins": stand_ins})
    module = type("_Pickle", (_AllowListPickle,), {"Unpickler": unpickler})
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable torch.save file of tensors and containers ({e})") from None


def read_lightning_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a PyTorch Lightning checkpoint (a ``torch.save`` dict with ``state_dict`` beside the
    trainer's bookkeeping: epoch, global_step, callbacks, optimizer_states, ...), read by :func:`read_torch_pickle`
    with :data:`LIGHTNING_KEY_GLOBALS`; the bookkeeping is read as plain data and dropped."""
    ckpt = read_torch_pickle(path, LIGHTNING_KEY_GLOBALS)
    sd = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: field 'state_dict' is missing or not a dict of tensors "
                              "(not a PyTorch Lightning checkpoint)")  # fmt: skip
    return dict(sd)


# ---------------------------------------------------------------------------------------------------------
# google/sg2im


def _field(d: Any, key: str, path: Path, where: str = "") -> Any:
    if not isinstance(d, dict) or key not in d:
        raise CheckpointError(f"{path}: field {where}{key!r} is missing (not an sg2im train.py checkpoint)")
    return d[key]


def released_names(names: list[Any]) -> list[str]:
    """sg2im's COCO vocabulary fills unused category ids with ``'NONE'``; the suite names them ``__none_<id>__``."""
    return [f"__none_{i}__" if n == "NONE" or n is None else str(n) for i, n in enumerate(names)]


def vocab_permutation(released: list[str], ours: tuple[str, ...], what: str, path: Path) -> list[int]:
    """Index into ``released`` for every entry of ``ours``; a differing name set is refused, naming the entries."""
    index = {n: i for i, n in enumerate(released)}
    missing = [n for n in ours if n not in index]
    extra = [n for n in released if n not in set(ours)]
    if missing or extra:
        show = lambda xs: ", ".join(map(repr, xs[:12])) + (f" (+{len(xs) - 12} more)" if len(xs) > 12 else "")  # noqa: E731
        parts = ([f"the dataset has {show(missing)} which the checkpoint lacks"] if missing else []) + (
            [f"the checkpoint has {show(extra)} which the dataset lacks"] if extra else [])
        raise CheckpointError(f"{path}: field 'model_kwargs.vocab.{what}' does not match the dataset: "
                              + "; ".join(parts))  # fmt: skip
    return [index[n] for n in ours]


def sg2im_key(key: str, part: str) -> str | None:
    """sg2im parameter name -> ours (``None``: a module we do not build). ``part``: model | d_obj | d_img.

    Ours (baselines/sg2im.py) keeps sg2im's module names under ``generator.``; the learned embedding tables sit
    one level deeper (``NodeEmbedding.embedding``); the object discriminator's ``cnn = Sequential(build_cnn,
    GlobalAvgPool, Linear)`` is split into ``cnn`` and ``fc``.
    """
    key = key.removeprefix("module.")  # DataParallel checkpoints (sg2im train.py strips it too)
    if part == "model":
        if key.startswith("rel_aux_net."):
            return None
        if key in ("obj_embeddings.weight", "pred_embeddings.weight"):
            return f"generator.{key.split('.')[0]}.embedding.weight"
        return f"generator.{key}"
    if part == "d_obj":
        for old, new in (("discriminator.cnn.0.", "cnn."), ("discriminator.cnn.2.", "fc."), ("discriminator.", "")):
            if key.startswith(old):
                return f"obj_discriminator.{new}{key[len(old):]}"
        return f"obj_discriminator.{key}"
    if key.startswith("classifier."):  # PatchDiscriminator.classifier: built, never called by sg2im
        return None
    return f"img_discriminator.{key}"


def sg2im_config_sets(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """``--set`` style overrides that rebuild the released architecture from ``model_kwargs`` (+ D kwargs/args)."""
    kw = _field(ckpt, "model_kwargs", path)
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    size = kw.get("image_size", (64, 64))
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    if size[0] != size[1]:
        raise CheckpointError(f"{path}: field 'model_kwargs.image_size' is {size}; only square images are supported")
    sets: dict[str, Any] = {
        "image_size": int(size[0]),
        "method.embedding_dim": int(kw.get("embedding_dim", 64)),  # Sg2ImModel's own defaults where absent
        "method.gconv_dim": int(kw.get("gconv_dim", 128)),
        "method.gconv_hidden_dim": int(kw.get("gconv_hidden_dim", 512)),
        "method.gconv_num_layers": int(kw.get("gconv_num_layers", 5)),
        "method.gconv_pooling": str(kw.get("gconv_pooling", "avg")),
        "method.mlp_normalization": str(kw.get("mlp_normalization", "none")),
        "method.refinement_dims": tuple(int(d) for d in kw.get("refinement_dims", (1024, 512, 256, 128, 64))),
        "method.normalization": str(kw.get("normalization", "batch")),
        "method.activation": str(kw.get("activation", "leakyrelu-0.2")),
        "method.layout_noise_dim": int(kw.get("layout_noise_dim", 0)),
        "method.mask_size": int(kw.get("mask_size") or 0),
        "method.box_net_final_relu": True,  # sg2im's build_mlp default
    }
    d_obj, d_img = ckpt.get("d_obj_kwargs") or {}, ckpt.get("d_img_kwargs") or {}
    for key, src, name in (("d_obj_arch", d_obj, "arch"), ("d_img_arch", d_img, "arch"),
                           ("d_normalization", d_obj or d_img, "normalization"),
                           ("d_activation", d_obj or d_img, "activation"), ("d_padding", d_obj or d_img, "padding")):
        if name in src:
            sets[f"method.{key}"] = str(src[name])
        elif key in args:
            sets[f"method.{key}"] = str(args[key])
    if "object_size" in d_obj:
        sets["method.crop_size"] = int(d_obj["object_size"])
    elif "crop_size" in args:
        sets["method.crop_size"] = int(args["crop_size"])
    for key in ("eval_mode_after", "learning_rate", "mask_loss_weight", "l1_pixel_loss_weight",
                "bbox_pred_loss_weight", "discriminator_loss_weight", "gan_loss_type", "d_obj_weight",
                "ac_loss_weight", "d_img_weight"):  # fmt: skip
        if key in args:
            sets[f"method.{key}"] = args[key]
    return sets


def import_sg2im(
    path: str | Path, out: str | Path, dataset: str, tier: str = "full", seed: int = 0, protocol: str = ""
) -> dict[str, Any]:
    """Convert an sg2im ``train.py`` checkpoint into a suite checkpoint at ``out``; returns its ``imported`` record.

    The released vocabulary is matched by name to the dataset's (refused when the name sets differ); the object
    and predicate embedding rows and the object classifier's rows are permuted to the dataset's order.
    Discriminators come from ``d_obj_state``/``d_img_state`` when the file has them, otherwise they are
    initialised from ``torch.manual_seed(seed)`` (they never influence sampling or scoring). BatchNorm
    ``num_batches_tracked`` counters, absent from PyTorch 0.4 files, stay 0 (used only with ``momentum=None``).
    """
    from benchmark import registry
    from benchmark.config import build_run_config
    from benchmark.protocol import load_protocol
    from benchmark.train import _meta, build_dataset, dataset_info

    path, out = Path(path), Path(out)
    source_sha = sha256_file(path)
    ckpt = read_torch_pickle(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected the dict sg2im train.py saves, got {type(ckpt).__name__}")
    kw = _field(ckpt, "model_kwargs", path)
    vocab = kw.get("vocab") if isinstance(kw, dict) and "vocab" in kw else _field(ckpt, "vocab", path)
    obj_names = released_names(list(_field(vocab, "object_idx_to_name", path, "model_kwargs.vocab.")))
    pred_names = released_names(list(_field(vocab, "pred_idx_to_name", path, "model_kwargs.vocab.")))
    model_state = _field(ckpt, "model_state", path)

    cfg = build_run_config("sg2im", dataset, tier, seed, "cpu", sg2im_config_sets(ckpt, path), protocol)
    proto = load_protocol(dataset, protocol)
    train_set = build_dataset(dataset, proto["train_split"], cfg.image_size)
    info = dataset_info(train_set, proto["version"])
    obj_perm = vocab_permutation(obj_names, info.vocab.object_idx_to_name, "object_idx_to_name", path)
    pred_perm = vocab_permutation(pred_names, info.vocab.pred_idx_to_name, "pred_idx_to_name", path)

    torch.manual_seed(seed)
    try:
        method = registry.get("method", "sg2im")(cfg.method_cfg, info)
    except ValueError as e:
        raise CheckpointError(f"{path}: field 'model_kwargs' does not build an SG2Im model: {e}") from None
    target = method.state_dict()
    new: dict[str, torch.Tensor] = {}
    parts = [("model", model_state)] + [(p, ckpt[f"{p}_state"]) for p in ("d_obj", "d_img") if ckpt.get(f"{p}_state")]
    for part, state in parts:
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: field '{part}_state' is not a state dict")
        for key, value in state.items():
            ours = sg2im_key(str(key), part)
            if ours is None:
                continue
            if ours not in target:
                raise CheckpointError(f"{path}: field '{part}_state.{key}' has no counterpart in the SG2Im model")
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: field '{part}_state.{key}' is not a tensor")
            if ours.endswith("obj_embeddings.embedding.weight") or ours.endswith("obj_classifier.weight") or (
                ours.endswith("obj_classifier.bias")
            ):
                value = value[obj_perm]  # sg2im's table has one extra, never-read row: dropped here
            elif ours.endswith("pred_embeddings.embedding.weight"):
                value = value[pred_perm]
            if tuple(value.shape) != tuple(target[ours].shape):
                raise CheckpointError(f"{path}: field '{part}_state.{key}' has shape {tuple(value.shape)}, the model "
                                      f"built from 'model_kwargs' expects {tuple(target[ours].shape)}")  # fmt: skip
            new[ours] = value.to(target[ours].dtype)
    missing = [k for k in target if k not in new and not k.endswith("num_batches_tracked")
               and not k.startswith(("obj_discriminator.", "img_discriminator."))]  # fmt: skip
    if missing:
        raise CheckpointError(f"{path}: field 'model_state' lacks {', '.join(missing[:8])}")
    method.load_state_dict({**target, **new})
    imported = {
        "kind": "sg2im", "source": path.name, "source_sha256": source_sha,
        "discriminators": "imported" if len(parts) == 3 else f"not in the file: initialised with seed {seed}",
        "vocab_permuted": obj_perm != list(range(len(obj_perm))) or pred_perm != list(range(len(pred_perm))),
    }  # fmt: skip
    counters = ckpt.get("counters") if isinstance(ckpt.get("counters"), dict) else {}
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    step = int(counters.get("t", args.get("num_iterations", 0)) or 0)
    meta = {**_meta(cfg, info, step, 0.0), "imported": imported}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, method.state_dict(), meta, {"history": []})
    return imported


# ---------------------------------------------------------------------------------------------------------
# openai improved-diffusion / guided-diffusion UNets


def qkv_heads_to_ours(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder a ``qkv`` projection's output channels from openai's legacy layout to ours.

    improved-diffusion ``AttentionBlock`` (and guided-diffusion ``QKVAttentionLegacy``) reshape the ``[B, 3C, T]``
    projection to ``[B * heads, 3 d, T]`` and split each head's ``3 d`` channels into q, k, v: channel order
    ``(head, {q, k, v}, d)``. Our ``AttentionBlock`` reshapes to ``[B, 3, heads, d, T]``: order ``({q, k, v}, head,
    d)``. The conversion is a permutation of the weight's (and bias's) first axis.
    """
    c3 = weight.shape[0]
    d = c3 // (3 * heads)
    rest = weight.shape[1:]
    return weight.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(c3, *rest).contiguous()


def load_openai_unet(path: str | Path, unet: torch.nn.Module, kind: str = "improved_diffusion") -> list[str]:
    """Copy an openai UNet state dict into our ``UNetModel`` (same module names: ``input_blocks``, ``middle_block``,
    ``output_blocks``, ``time_embed``, ``out``); qkv weights are reordered per attention block
    (:func:`qkv_heads_to_ours`; guided-diffusion models trained with ``use_new_attention_order`` already use
    ours: pass ``kind="guided_diffusion_new_order"``). Parameters the released UNet has no counterpart for
    (condition embedding, cross-attention ``encoder_kv``, extra input channels of the first conv) keep their
    initialisation: for the first conv the released input channels are copied and the extra ones left as they
    are. A tensor whose shape does not fit is refused naming it. Returns the names of our parameters that were
    not initialised from the file.
    """
    from methods.unet import AttentionBlock

    path = Path(path)
    state = read_torch_pickle(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a UNet state dict (name -> tensor)")
    narrow = [f"{n} ({m.num_groups} groups)" for n, m in unet.named_modules()
              if isinstance(m, torch.nn.GroupNorm) and m.num_groups != 32]  # fmt: skip
    if narrow:  # openai's GroupNorm32 everywhere; ours uses fewer groups below 128 channels (methods/unet.py)
        raise CheckpointError(f"{path}: the UNet built from method.* normalises {', '.join(narrow[:3])} with other "
                              "than openai's 32 groups: use method.model_channels >= 128")  # fmt: skip
    heads = {f"{n}.qkv": m.num_heads for n, m in unet.named_modules() if isinstance(m, AttentionBlock)}
    target = unet.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key not in target:
            raise CheckpointError(f"{path}: field {key!r} has no counterpart in the UNet (built from method.*)")
        mod = key.rsplit(".", 1)[0]
        if mod in heads and kind != "guided_diffusion_new_order":
            value = qkv_heads_to_ours(value, heads[mod])
        want = target[key]
        if key == "input_blocks.0.0.weight" and value.shape[1] < want.shape[1] and value.shape[0] == want.shape[0]:
            value = torch.cat([value, want[:, value.shape[1]:]], dim=1)  # layout channels: keep their init
        if key in ("out.2.weight", "out.2.bias") and value.shape[0] * 2 == want.shape[0]:
            value = torch.cat([value, want[value.shape[0]:]], dim=0)  # fixed-variance model: v channels keep init
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: field {key!r} has shape {tuple(value.shape)}, the UNet built from "
                                  f"method.* expects {tuple(want.shape)}")  # fmt: skip
        new[key] = value.to(want.dtype)
    unet.load_state_dict({**target, **new})
    return [k for k in target if k not in new]


def main_import(kind: str, file: Path, out: Path, dataset: str | None, tier: str, seed: int, protocol: str) -> int:
    if kind not in KINDS:
        raise ValueError(f"import-checkpoint: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind != "sg2im":
        raise ValueError(f"import-checkpoint {kind}: openai UNet weights initialise a diffusion method instead: "
                         f"python -m benchmark run --method learned_ddpm --set method.init_from={file}")  # fmt: skip
    if dataset is None:
        stem = file.stem.lower()
        dataset = "coco_stuff" if stem.startswith("coco") else "vg" if stem.startswith("vg") else None
        if dataset is None:
            raise ValueError(f"{file}: cannot tell the dataset from the file name; pass --dataset")
    imported = import_sg2im(file, out, dataset, tier, seed, protocol)
    print(f"{out}: sg2im {file.name} (sha256 {imported['source_sha256'][:12]}) on {dataset}, tier {tier}; "
          f"discriminators {imported['discriminators']}", file=sys.stderr)  # fmt: skip
    print(out)
    return 0

