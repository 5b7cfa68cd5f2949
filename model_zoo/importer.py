"""Import state dicts saved by the papers' reference code into the zoo.

Sources (naming read from their model definitions, no code taken):

- ``inresnet``: minicheshire/InResNet ``InResNet.py`` (classes ``ResNet`` and ``InResNet``);
- ``lmresnet``: 2prime/LM-ResNet ``MResNet.py`` (class ``MResNet``, scalar ``ks``).

What differs from robench's :class:`model_zoo.resnet.CifarResNet`:

- projection shortcuts are ``downsample1`` (stem → bottleneck widening, used only with bottleneck
  blocks), ``downsample21`` (into stage 2) and ``downsample31`` (into stage 3), each a
  ``Downsample`` whose ``downsample`` Sequential is BN-ReLU-conv1×1: robench's ``projections.<block>``;
- the coefficients are a ``ks`` ParameterList with one 1-element entry per block, read only for the
  blocks that follow the scheme (never for block 0 or a stage transition): robench's ``k`` holds the
  read ones in block order;
- LM-ResNet's update is ``f + k·x_n + (1−k)·x_{n−1}``; robench's is ``f + (1−k)·x_n + k·x_{n−1}``,
  so robench k = 1 − reference k;
- modules built but never used in the forward pass are accepted and dropped: the stem ``bn1``,
  ``downsample1`` in basic-block networks, ``ResNet``'s ``downsample22``/``downsample32``;
- ``nn.DataParallel`` prefixes (``module.``) are stripped;
- both reference models run as plain ResNets while their ``pretrain`` flag is set; import a
  network trained that way as ``resnet<depth>``.

Files are read with ``torch.load(weights_only=True)`` only; the reference code's own
``torch.save(self.net, ...)`` (a whole pickled model) is refused with a one-line error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_zoo.errors import BadInput
from model_zoo.registry import check_model_name, model_entry, model_info

if TYPE_CHECKING:
    import torch

SOURCES = ("inresnet", "lmresnet")
_UNUSED = re.compile(r"^(bn1\.|downsample22\.|downsample32\.)")


def state_dict_limit(name: str) -> int:
    """The most bytes a state dict of ``name`` can take: every parameter in float64 twice over (a
    CIFAR-100 head, BatchNorm buffers) plus 64 MiB; a file that unpacks to more is refused unread."""
    return 16 * model_info(name).params + (64 << 20)


def _check_size(path: Path, limit: int) -> None:
    """The file, and what a zip-format torch file unpacks to, must fit in ``limit`` bytes (a 2 MB zip
    of compressed zeros must not become gigabytes in memory)."""
    import zipfile

    from model_zoo.fileio import check_regular

    size = check_regular(path, limit=limit, what="state dict file")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise BadInput(f"{path} is not a readable torch file: {e}") from None
    unpacked = sum(i.file_size for i in infos)
    if unpacked > limit or unpacked > 50 * max(size, 1 << 20):
        raise BadInput(f"{path} unpacks to {unpacked:,} bytes, more than a state dict of this architecture can "
                       f"hold ({limit:,}); refused before reading (a decompression bomb?)")


def read_state_dict(path: str | os.PathLike, *, limit: int | None = None) -> dict[str, "torch.Tensor"]:
    """A state dict (name → tensor) from a file written by ``torch.save``, never unpickling code;
    with ``limit``, a file (or zip content) larger than that many bytes is refused before loading."""
    import pickle

    import torch

    path = Path(path)
    if limit is not None:
        _check_size(path, limit)
    if not path.is_file():
        raise BadInput(f"{path} is not a regular file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        raise BadInput(f"{path} is not a plain state dict that torch.load(weights_only=True) can read (a whole "
                       "pickled model, as the reference code's torch.save(self.net, ...) writes, is never unpickled); "
                       "in the reference code save one with `torch.save(model.state_dict(), path)`") from None
    except (OSError, EOFError, ValueError) as e:
        raise BadInput(f"{path} is not a readable torch file: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise BadInput(f"{path} does not hold a state dict (names → tensors); save one with "
                       "`torch.save(model.state_dict(), path)`")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _reference_name(key: str, stage_of_block: list[int]) -> str:
    """The reference code's name of a robench state-dict key (k excepted)."""
    m = re.fullmatch(r"projections\.(\d+)\.(.+)", key)
    if m:
        block, rest = int(m.group(1)), m.group(2)
        module = "downsample1" if block == 0 else f"downsample{stage_of_block[block] + 1}1"
        return f"{module}.downsample.{rest}"
    return key


def check_importable(name: str, source: str | None) -> str:
    """The source to read ``name`` from (default: by its scheme); BadInput when the reference has no such model."""
    check_model_name(name)
    info, entry = model_info(name), model_entry(name)
    source = source or ("lmresnet" if info.scheme == "lm" else "inresnet")
    if source not in SOURCES:
        raise BadInput(f"unknown source {source!r}; valid choices: {', '.join(SOURCES)}")
    if (source == "lmresnet") != (info.scheme == "lm"):
        raise BadInput(f"--source {source} does not make {name} (scheme {info.scheme!r}); "
                       "use lmresnet for lmresnet* and inresnet for resnet*/inresnet*/lambda_inresnet*")
    if entry.arch is None or entry.arch.get("groups", 1) != 1 or entry.arch.get("stem_width", 16) != 16:
        raise BadInput(f"the reference code has no {name}; importable: the resnet/inresnet/lambda_inresnet/lmresnet "
                       "depths 20…164")
    return source


def convert_reference_state(state: dict[str, "torch.Tensor"], name: str, *, source: str | None = None,
                            lam: float | None = None) -> tuple[dict[str, "torch.Tensor"], int]:
    """robench's state dict for ``name`` (and λ) from a reference state dict; also returns num_classes.

    Raises :class:`BadInput` naming the missing, unexpected or wrongly shaped keys.
    """
    import torch

    source = check_importable(name, source)
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise BadInput("the state dict has no fc.weight (missing: fc.weight); is it a CIFAR ResNet of the reference code?")
    num_classes = int(fc.shape[0])
    model = model_entry(name).build(num_classes=num_classes, lam=lam)
    target = model.state_dict()
    stage_of = [s for s, n in enumerate(model.config["layers"]) for _ in range(n)]

    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing, bad_shape = [], []
    for key, want in target.items():
        if key == "k":
            continue
        ref = _reference_name(key, stage_of)
        if ref not in state:
            missing.append(ref)
        elif state[ref].shape != want.shape:
            bad_shape.append(f"{ref} {tuple(state[ref].shape)} (expected {tuple(want.shape)})")
            used.add(ref)  # named as wrongly shaped, not again as unexpected
        else:
            out[key] = state[ref].to(want.dtype)
            used.add(ref)
    if "k" in target:
        ks = []
        for b in model.damped_blocks:
            ref = f"ks.{b}"
            if ref not in state:
                missing.append(ref)
            elif state[ref].numel() != 1:
                bad_shape.append(f"{ref} {tuple(state[ref].shape)} (expected (1,); per-channel ks are not supported)")
                used.add(ref)
            else:
                ks.append(state[ref].reshape(()).float())
                used.add(ref)
        if len(ks) == len(model.damped_blocks):
            k = torch.stack(ks)
            out["k"] = (1 - k) if source == "lmresnet" else k
    ignorable = [k for k in state if k not in used and (_UNUSED.match(k) or re.fullmatch(r"ks\.\d+", k)
                                                        or (k.startswith("downsample1.") and "0" not in model.projections))]
    unexpected = sorted(set(state) - used - set(ignorable))
    if missing or unexpected or bad_shape:
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}{'…' if len(keys) > 4 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", bad_shape)) if keys)
        raise BadInput(f"the state dict does not fit {name} in the {source} naming: {detail}")
    return out, num_classes


def import_reference(path: str | os.PathLike, name: str, *, source: str | None = None, lam: float | None = None,
                     out: str | os.PathLike, force: bool = False) -> Path:
    """Convert a reference state dict and write ``<out>/<zoo stem>.safetensors`` + card; returns the stem."""
    from model_zoo.checkpoint import save, zoo_stem
    from model_zoo.fileio import sha256_file

    from model_zoo.fileio import check_writable

    source = check_importable(name, source)
    check_writable(out, what="zoo folder (--out)", folder=True)  # before reading anything
    stem = Path(out) / zoo_stem(name, lam)
    if not force and any(os.path.lexists(stem.with_name(stem.name + s)) for s in (".json", ".safetensors")):
        raise BadInput(f"{stem}.json already exists; pass --force to replace that zoo entry")
    state = read_state_dict(path, limit=state_dict_limit(name))
    converted, num_classes = convert_reference_state(state, name, source=source, lam=lam)
    model = model_entry(name).build(num_classes=num_classes, lam=lam)
    model.load_state_dict(converted)
    src = source
    repo = {"inresnet": "minicheshire/InResNet", "lmresnet": "2prime/LM-ResNet"}[src]
    card = dict(
        dataset={"name": "cifar100" if num_classes == 100 else "cifar10", "label": "unknown (imported weights)"},
        training={"imported_from": repo, "file": Path(path).name, "file_sha256": sha256_file(path)},
        notes=f"Imported with `robench zoo import --arch {name} --source {src}` from a state dict saved by {repo}; "
              "not trained by robench, no accuracy measured. Normalisation: the reference code's CIFAR-10 "
              "mean/std (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994, 0.2010), robench's default.",
    )
    save(model.eval(), stem, card, name=name)
    return stem
