"""Filling a config: defaults -> YAML file -> dotted command-line overrides.

Pydantic does the checking; `load_config` turns its errors into one line such as
`ConfigError("data.batch_size: must be >= 1 (got 0)")`, and YAML or file problems into
one line naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distcolor.config.schema import Config
from distcolor.errors import ConfigError, UserError
from distcolor.paths import read_text_file


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; accept it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if msg.startswith("Value error, "):
        # Cross-field checks already name their key(s).
        msg = msg.removeprefix("Value error, ")
        return msg if not loc else f"{loc}: {msg}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {msg[0].lower()}{msg[1:]}{shown}"


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:  # e.g. `data.synthetic: null` then `data.synthetic.count=10`
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`["train.max_steps=50"]` -> `[("train.max_steps", 50)]`; values are parsed as YAML."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        try:
            value = _yaml_load(raw) if raw else ""
        except YAML_ERRORS:
            value = raw  # not YAML: keep the text, the schema decides if a string fits
        parsed.append((key, value))
    return parsed


# What a malformed YAML text raises: a syntax error, a value its constructors reject (a
# date such as 2020-13-45), or nesting deeper than Python's recursion limit.
YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, RecursionError)


def _yaml_problem(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return f"{err.__class__.__name__}{where}"


def _read_config_file(path: Path) -> str:
    """The config file's text; ConfigError for a missing, unreadable or non-text file."""
    try:
        return read_text_file(path, "--config")
    except UserError as err:
        raise ConfigError(str(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then dotted overrides; raises ConfigError."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = _read_config_file(path)
        try:
            loaded = _yaml_load(text)
        except YAML_ERRORS as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
