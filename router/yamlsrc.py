"""Phase one of loading policy files: YAML -> plain data with the line of every node -> strict structs.

`yaml.compose` keeps each node's position; `read_yaml` turns the node tree into plain Python data and
records, for every path (`("rules", 3, "match", "category")`), the line it came from. `convert` runs
msgspec's strict conversion (unknown keys and wrong types are errors) and turns its error into
`file:line: message`, using the path msgspec reports. Errors are collected, not raised, so one run
reports every problem it can find.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

__all__ = ["Problems", "Source", "convert", "read_yaml"]

Key = str | int
PathT = tuple[Key, ...]
T = TypeVar("T")

_MAX_DEPTH = 64


class Source:
    """One YAML file: its plain data, and the line (1-based) of every node by path."""

    def __init__(self, name: str, data: Any, lines: dict[PathT, int]) -> None:
        self.name = name
        self.data = data
        self._lines = lines

    def line(self, path: PathT) -> int:
        """The line of `path`, or of its deepest ancestor that exists."""
        for end in range(len(path), -1, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return 1

    def where(self, path: PathT) -> str:
        return f"{self.name}:{self.line(path)}"


class Problems:
    """`file:line: message` strings, in the order found."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, src: Source, path: PathT, message: str) -> None:
        self.items.append(f"{src.where(path)}: {message}")

    def add_at(self, name: str, line: int, message: str) -> None:
        self.items.append(f"{name}:{line}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__


def read_yaml(path: Path, name: str, problems: Problems, content: bytes | None = None) -> Source | None:
    """Parse `path` (or its `content`, already read; shown as `name` in messages); None when it is not
    readable YAML (problems says why)."""
    try:
        text = (path.read_bytes() if content is None else content).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add_at(name, 1, f"cannot read the file: {exc}")
        return None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[PathT, int] = {}
        if node is None:
            return Source(name, None, {(): 1})
        data = _build(loader, node, (), lines, problems, name, 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problems.add_at(name, line, f"invalid YAML: {exc.problem or exc.context}")
        return None
    except yaml.YAMLError as exc:
        problems.add_at(name, 1, f"invalid YAML: {exc}")
        return None
    finally:
        loader.dispose()
    return Source(name, data, lines)


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: PathT, lines: dict[PathT, int], problems: Problems, name: str,
    depth: int,
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if depth > _MAX_DEPTH:
        problems.add_at(name, node.start_mark.line + 1, "nesting too deep (recursive anchors?)")
        return None
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # `<<: *anchor` merges
        out: dict[Any, Any] = {}
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add_at(name, key_node.start_mark.line + 1, "mapping keys must be plain scalars")
                continue
            key = loader.construct_object(key_node)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str | int):
                key = str(key)
            if key in out:
                problems.add_at(name, key_line, f"duplicate key `{key}` (first at line {first[key]})")
                continue
            first[key] = key_line
            child = (*path, key)
            lines[child] = key_line
            out[key] = _build(loader, value_node, child, lines, problems, name, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, i), lines, problems, name, depth + 1) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


# ---------------------------------------------------------------------------------------------- conversion

_AT = re.compile(r" - at `\$([^`]*)`$")
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")
_EXPECTED = re.compile(r"^Expected `([^`]*)`, got `([^`]*)`")
_ELLIPSIS = object()


def _parse_path(text: str) -> list[Any]:
    out: list[Any] = []
    for m in _SEGMENT.finditer(text):
        if m.group(1) is not None:
            out.append(m.group(1))
        elif m.group(2) == "...":
            out.append(_ELLIPSIS)
        else:
            out.append(int(m.group(2)))
    return out


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _options(tp: Any) -> list[Any]:
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _step(tp: Any, seg: Any) -> Any:
    """The type found one path segment below `tp` (None when unknown)."""
    for opt in _options(tp):
        origin = typing.get_origin(opt)
        if isinstance(seg, str) and isinstance(opt, type) and issubclass(opt, msgspec.Struct):
            hints = typing.get_type_hints(opt)
            if seg in hints:
                return hints[seg]
        elif (seg is _ELLIPSIS or isinstance(seg, str)) and origin in (dict, Mapping):
            return typing.get_args(opt)[1]
        elif isinstance(seg, int) and origin in (list, tuple):
            return typing.get_args(opt)[0]
    return None


def _fields_of(tp: Any) -> list[str]:
    for opt in _options(tp):
        if isinstance(opt, type) and issubclass(opt, msgspec.Struct):
            return [f.encode_name for f in msgspec.structs.fields(opt)]
    return []


def _friendly_type(text: str) -> str:
    return (
        text.replace("array", "list").replace("object", "mapping").replace("str", "string")
        .replace("float", "number").replace("int", "integer").replace("bool", "boolean")
    )


def convert(src: Source, data: Any, tp: type[T], path: PathT, problems: Problems) -> T | None:
    """Strictly convert `data` (found at `path` in `src`) to `tp`; on failure record `file:line: message`."""
    try:
        return msgspec.convert(data, tp, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _AT.search(text)
        raw = _parse_path(m.group(1)) if m else []
        message = text[: m.start()] if m else text
        # Resolve the path msgspec reports (it writes `[...]` for mapping keys) against the data.
        cur_data: Any = data
        cur_type: Any = tp
        where: list[Key] = list(path)
        for seg in raw:
            nxt_type = _step(cur_type, seg)
            if seg is _ELLIPSIS:
                key = None
                if isinstance(cur_data, dict):
                    for k, v in cur_data.items():
                        if nxt_type is None:
                            key = k
                            break
                        try:
                            msgspec.convert(v, nxt_type, strict=True)
                        except msgspec.ValidationError:
                            key = k
                            break
                if key is None:
                    break
                where.append(key)
                cur_data = cur_data[key]
            else:
                where.append(seg)
                try:
                    cur_data = cur_data[seg]
                except (KeyError, IndexError, TypeError):
                    cur_data = None
            cur_type = nxt_type
        field = where[-1] if where and isinstance(where[-1], str) else None
        if um := _UNKNOWN.match(message):
            allowed = _fields_of(cur_type)
            hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
            problems.add(src, (*where, um.group(1)), f"unknown field `{um.group(1)}`{hint}")
        elif mm := _MISSING.match(message):
            problems.add(src, tuple(where), f"missing required field `{mm.group(1)}`")
        elif em := _EXPECTED.match(message):
            label = f"`{field}`: " if field else ""
            expected, got = _friendly_type(em.group(1)), _friendly_type(em.group(2))
            problems.add(src, tuple(where), f"{label}expected {expected}, got {got} {_describe(cur_data)}")
        else:
            label = f"`{field}`: " if field else ""
            problems.add(src, tuple(where), f"{label}{message[:1].lower()}{message[1:]}")
        return None
