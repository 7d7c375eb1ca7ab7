"""gateway.yaml as a document: read, filled from the environment, and checked against its schema.

`read_yaml(path)` reads the file, refusing duplicate keys; `interpolate_tree(doc, environ)` fills `${VAR}` and
`${VAR:-default}` in every string; `validate(schema, doc)` runs the pydantic schema (gateway/config.py) and
turns its first error into the gateway's one line naming the YAML path: `models.a.fallbacks[0].model: empty`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

Schema = TypeVar("Schema", bound=BaseModel)


class ConfigError(Exception):
    """gateway.yaml (or the environment it reads) is unusable; the message names the key and the problem."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str], where: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}` in one YAML string."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and (environ[name] != "" or default is None):
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    if "${" in _VAR.sub("", value):  # `${NAME` unclosed, `${NAME-x}`, `${A:-${B}}`: else sent on as a literal key
        raise ConfigError(f"{where}: a `${{` that is not ${{VAR}} or ${{VAR:-default}} (VAR: letters, digits, _)")
    return _VAR.sub(substitute, value)


def interpolate_tree(node: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """`node` with `${VAR}` filled in every string of it; `where` is its YAML path (for errors)."""
    if isinstance(node, str):
        return interpolate(node, environ, where)
    if isinstance(node, dict):
        return {k: interpolate_tree(v, environ, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, environ, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice.

    YAML 1.2 requires keys to be unique, but PyYAML keeps the last one silently: a second `models:` pasted
    at the end of gateway.yaml would replace every alias above it without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` may be overridden by the keys beside it; that is its purpose
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, list | dict):
                    continue  # unhashable: SafeConstructor reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` (None when empty); ConfigError with one line when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if path.is_absolute():
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        # `~/gateway/scripts/serve` typed from the home directory: the path is relative to where one stands.
        raise ConfigError(
            f"{path}: no such file in {Path.cwd()} "
            "(run from the checkout, or give --config FILE or GATEWAY_CONFIG=FILE)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 (byte {exc.object[exc.start]:#04x})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader that refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # one line, as every config error
        raise ConfigError(f"{path}:{where} is not valid YAML ({problem})") from None


_PROBLEMS = {  # pydantic's error types in the words the gateway always used; rules bring their own (value_error)
    "missing": "required",
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "expected int, got {got!r}"),
    **dict.fromkeys(("float_type", "float_parsing"), "expected float, got {got!r}"),
    "string_type": "expected str, got {got!r}",
    **dict.fromkeys(("model_type", "dict_type", "mapping_type"), "expected a mapping, got {kind}"),
    **dict.fromkeys(("list_type", "tuple_type"), "expected a list, got {kind}"),
}


def allowed_keys(schema: type[BaseModel], loc: list[str | int]) -> str:
    """The keys of the section at `loc` (e.g. ["providers", "anthropic"]), walking the schema's declared types."""
    node: Any = schema
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            node = next(f.annotation for n, f in node.model_fields.items() if (f.alias or n) == part)
        else:  # a Mapping[str, Section] or a tuple[Section, ...]: `part` is a key or an index
            node = next(arg for arg in reversed(get_args(node)) if arg is not Ellipsis)
        node = _section_of(node)
    return ", ".join(sorted(f.alias or n for n, f in node.model_fields.items() if n != "name"))  # name: the key


def _section_of(node: Any) -> Any:
    """An optional section's model (`SsoConfig | None` -> SsoConfig); any other type unchanged."""
    models = [arg for arg in get_args(node) if isinstance(arg, type) and issubclass(arg, BaseModel)]
    return models[0] if len(models) == 1 and type(None) in get_args(node) else node


def _one_line(schema: type[BaseModel], exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # A misspelt key first: its section then also misses the key it was meant to be, and "required" would send
    # the operator looking for a key they did write.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [part for part in error["loc"] if part != "[key]"]  # a mapping's key: the path names the key itself
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).removeprefix(".")
    got = error.get("input")
    if error["type"] in ("value_error", "assertion_error"):
        problem = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        problem = f"unknown key (allowed: {allowed_keys(schema, loc[:-1])})"
    else:
        problem = _PROBLEMS.get(error["type"], error["msg"]).format(got=got, kind=type(got).__name__)
    return f"{path}: {problem}" if path else problem


def validate(schema: type[Schema], doc: Any) -> Schema:
    """`doc` as a `schema` instance; ConfigError with one line naming the YAML path of the first problem."""
    try:
        return schema.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_one_line(schema, exc)) from None
