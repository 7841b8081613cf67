"""Shipped checkpoints: `model.safetensors` + `config.json` in one directory, never pickle.

A checkpoint directory holds:

- `model.safetensors`: the state dict. Tied tensors (an output head sharing the token embedding) are
  stored once; the alias names go into the file's metadata and come back on load, so
  `model.load_state_dict(state_dict)` works strictly and the tie is kept by the model's own code.
- `config.json`: `{"format": ..., "class": "StariaConfig", "config": {...}, "extra": {...}}`. `class`
  names the config kind so a loader can refuse a directory that holds some other model.

Lightning `.ckpt` files (resume state: weights, optimizer, loops) stay inside a run directory;
`export_lightning_checkpoint` turns one into a shipped directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "cadenza-checkpoint-v1"

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, corrupt, or holds the wrong kind of model."""


class ConfigError(ValueError):
    """A configuration has an unknown key or a value of the wrong type."""


# ----------------------------------------------------------------------------- configs


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain JSON-ready dict from a dataclass, a dict, or an object with `to_dict()` (HF configs)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif isinstance(config, dict):
        data = dict(config)
    elif hasattr(config, "to_dict"):
        data = config.to_dict()
    else:
        raise TypeError(f"config must be a dataclass, a dict or have to_dict(), got {type(config).__name__}")
    return json.loads(json.dumps(data, default=_json_default))


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, coercing simple types; unknown keys raise ConfigError naming them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown key '{path}' for {cls.__name__} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """`value` as type `hint` where the conversion is lossless (YAML/JSON give ints for floats, lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if type(value) in args:  # exact match first: 1.0 for `int | float` stays a float
            return value
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {hint}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else config_from_dict(hint, value, path)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, path) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, path) for v in value]
        return tuple(items) if (origin or hint) is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(hint, type) and issubclass(hint, Path):
        if isinstance(value, (str, Path)):
            return Path(value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in config.json: {obj!r}")


# ----------------------------------------------------------------------------- weights


def _dedupe(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors to store (contiguous, on CPU, no shared memory) and the aliases of tied ones."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict['{name}'] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        view = (tensor.device, storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if tensor.numel() and view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        tensor = tensor.cpu().contiguous()
        # Different views of one storage (slices of a fused weight) cannot be stored as such: copy them.
        if tensor.numel() and tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors, aliases


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict to one safetensors file (atomically), storing tied tensors once."""
    path = Path(path)
    tensors, aliases = _dedupe(state_dict)
    meta = {"format": "pt", **(metadata or {})}
    if aliases:
        meta["aliases"] = json.dumps(aliases)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_state_dict`, tied names restored (sharing one tensor)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt 'aliases' metadata ({e})") from e
    for alias, name in aliases.items():
        if name not in state_dict:
            raise CheckpointError(f"{path}: alias '{alias}' points to missing tensor '{name}'")
        state_dict[alias] = state_dict[name]
    return state_dict


# ----------------------------------------------------------------------------- directories


def save_pretrained(
    model: torch.nn.Module | dict[str, torch.Tensor],
    config: Any,
    directory: str | Path,
    extra: dict | None = None,
    kind: str | None = None,
) -> Path:
    """Write `model.safetensors` + `config.json` into `directory`; `kind` defaults to the config's class name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = model if isinstance(model, dict) else model.state_dict()
    if kind is None:
        kind = config.get("class", "dict") if isinstance(config, dict) else type(config).__name__
    config_data = config_to_dict(config)
    config_data.pop("class", None)
    document = {"format": FORMAT, "class": kind, "config": config_data, "extra": extra or {}}
    text = json.dumps(document, indent=2, default=_json_default) + "\n"
    save_state_dict(state_dict, directory / WEIGHTS_NAME, metadata={"class": kind})
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, directory / CONFIG_NAME)
    return directory


def load_config_json(directory: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The `config.json` document of a checkpoint directory (`class`, `config`, `extra`); checks `kind` if given."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME} (not a checkpoint directory written by save_pretrained)")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt JSON ({e})") from e
    if not isinstance(document, dict) or "class" not in document or not isinstance(document.get("config"), dict):
        raise CheckpointError(f"{path}: expected an object with 'class' and 'config' keys")
    if kind is not None and document["class"] != kind:
        raise CheckpointError(f"{directory}: holds a '{document['class']}' checkpoint, expected '{kind}'")
    document.setdefault("extra", {})
    return document


def load_pretrained(
    directory: str | Path, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config document) from a `save_pretrained` directory; `kind` checks the stored class name."""
    document = load_config_json(directory, kind)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_NAME}")
    return load_state_dict(path, device), document


def load_model(
    directory: str | Path,
    config_cls: type[T],
    build: Callable[[T], torch.nn.Module],
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> tuple[torch.nn.Module, T]:
    """Build a model from a checkpoint directory: `build(config)`, load the weights, eval mode."""
    state_dict, document = load_pretrained(directory, kind=config_cls.__name__, device=device)
    config = config_from_dict(config_cls, document["config"])
    model = build(config)
    try:
        model.load_state_dict(state_dict, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{directory}: weights do not fit {type(model).__name__} ({e})") from e
    return model.to(device).eval(), config


def half_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors as float16 (for shipping: half the size; loading casts back), tied tensors still tied."""
    halves: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            key = tensor.data_ptr()
            if key not in halves:
                halves[key] = tensor.detach().half()
            tensor = halves[key]
        out[name] = tensor
    return out


def export_lightning_checkpoint(
    ckpt_path: str | Path,
    directory: str | Path,
    config: Any,
    prefix: str = "",
    extra: dict | None = None,
    kind: str | None = None,
    half: bool = False,
) -> Path:
    """Turn a Lightning `.ckpt` (resume state) into a shipped directory: weights under `prefix` (stripped) + config;
    `half` stores float16 weights."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: Lightning checkpoint not found")
    try:
        # Our own run's resume state: hyper-parameters may hold objects that weights_only refuses.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise CheckpointError(f"{ckpt_path}: not a readable Lightning checkpoint ({e})") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{ckpt_path}: no 'state_dict' in checkpoint")
    state_dict = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state_dict:
        raise CheckpointError(f"{ckpt_path}: no weights start with prefix '{prefix}'")
    info = {"global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"), "source": ckpt_path.name,
            "weights_dtype": "float16" if half else "float32"}
    if half:
        state_dict = half_state_dict(state_dict)
    return save_pretrained(state_dict, config, directory, extra={**info, **(extra or {})}, kind=kind)
