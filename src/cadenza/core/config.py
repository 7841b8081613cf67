"""Config files for every run: YAML/JSON plus dotted `key=value` overrides, checked against defaults.

`load_config(path, overrides, defaults)` is what `cadenza music train`, `speech train` and `train-codec` read
their `--config` and overrides with; a key the defaults do not have is an error that suggests the closest one.
A file may start from another one with `extends: other.yaml` (a path relative to the file) and change only what
differs, e.g. a later stage of a training campaign.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from cadenza.core.checkpoint import ConfigError

__all__ = ["ConfigError", "load_config", "parse_value"]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-4` as a string; read it as a float like every other config format does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML: `100` -> int, `3e-4` -> float, `true` -> bool, `[1, 2]` -> list."""
    return yaml.load(text, Loader=_Loader)


def _read_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping a config file holds, on top of the file it `extends` (if any)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to a file that extends it")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse config ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' must be the path of another config file, got {base!r}")
    config = _read_file(path.parent / base, (*seen, path.resolve()))
    _merge(config, data, str(path), strict=False)
    return config


def _unknown(key: str, known: dict, where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], [str(k) for k in known], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(map(str, known)) or 'none'})"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _merge(base: dict, update: dict, where: str, strict: bool, prefix: str = "") -> None:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if strict and key not in base:
            raise _unknown(path, base, where)
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value, where, strict, path + ".")
        else:
            base[key] = value


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults, then a YAML/JSON file, then `a.b=value` overrides; a key not in the defaults (or file) is an error."""
    config: dict[str, Any] = copy.deepcopy(defaults) if defaults is not None else {}
    if path is not None:
        _merge(config, _read_file(Path(path)), str(path), strict=defaults is not None)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.max_steps=100")
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise _unknown(".".join(parents[: i + 1]), node, f"override '{item}'")
            node = node[part]
        if leaf not in node:
            raise _unknown(key, node, f"override '{item}'")
        value = parse_value(text)
        if isinstance(node[leaf], dict) and not isinstance(value, dict):
            raise ConfigError(f"override '{item}': '{key}' is a section, set one of its keys instead")
        node[leaf] = value
    return config
