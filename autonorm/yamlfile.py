"""Reading the YAML files users write: safely, with the numbers they mean, and every mistake located.

PyYAML implements YAML 1.1, whose plain scalars surprise: ``no``, ``off`` and ``y`` are booleans
(``activation: [relu, no]``), ``010`` is 8, ``1:30`` is 90, and ``5e-4`` (no dot) is a string.
:class:`Loader` reads them as YAML 1.2 (its core schema) and every other tool do: booleans are
``true``/``false``, integers decimal (``0o``/``0x`` for octal and hex), floats with or without a dot,
and the rest strings. A key given twice in one mapping is an error (PyYAML keeps the last one
silently, so an earlier section would be lost), and so is an alias inside the node it names. Only
the safe tags are understood: nothing in a file is run as code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from autonorm.errors import SpecError

_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's booleans, integers and floats."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)  # decimal, leading zeros and all


Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
Loader.add_constructor(_INT, Loader.construct_yaml_int)


def read_yaml(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """The data of the YAML file at ``path`` and its node tree (for locating keys); a
    :class:`SpecError` naming the file, and the line where known, if it cannot be read as ``what``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the {what}: {exc.strerror}", file=file) from None
    except UnicodeDecodeError as exc:
        byte = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
        raise SpecError(f"not UTF-8 text ({byte}); save the file as UTF-8", file=file) from None
    return parse_yaml(text, file)


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, yaml.Node | None]:
    """:func:`read_yaml` for text already read."""
    try:  # parsed once: the node tree locates keys, and the data is constructed from it
        loader = Loader(text)
        try:
            tree = loader.get_single_node()
            _refuse_repeated_keys(tree, file)
            return (loader.construct_document(tree) if tree is not None else None), tree
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        if isinstance(exc, yaml.reader.ReaderError):
            problem, mark = f"unacceptable character #x{exc.character:04x} at offset {exc.position}", None
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise SpecError(f"invalid YAML: {problem or exc}", file=file, line=line, column=col) from None


def _refuse_repeated_keys(
    node: yaml.Node | None, file: str | None, inside: frozenset[int] = frozenset(), checked: set[int] | None = None
) -> None:
    """Refuse a key given twice in one mapping, and an alias inside the node it names (``&a [x, *a]``,
    which has no end); a node that aliases share is checked once."""
    checked = set() if checked is None else checked
    if node is None or id(node) in checked:
        return
    if id(node) in inside:
        mark = node.start_mark
        raise SpecError(
            f"invalid YAML: the anchor on line {mark.line + 1} is used inside its own value (it would never end)",
            file=file,
            line=mark.line + 1,
            column=mark.column + 1,
        )
    inside = inside | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise SpecError(
                        f"key {key.value!r} given twice in one mapping (first on line {seen[key.value]}); "
                        "the first would be ignored",
                        file=file,
                        line=key.start_mark.line + 1,
                        column=key.start_mark.column + 1,
                    )
                seen[key.value] = key.start_mark.line + 1
            _refuse_repeated_keys(key, file, inside, checked)
            _refuse_repeated_keys(value, file, inside, checked)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, file, inside, checked)
    checked.add(id(node))


def placed(exc: SpecError, file: str | os.PathLike | None, under: tuple = ()) -> SpecError:
    """``exc``, about a key of data read from ``file`` (under the key path ``under``), with that file,
    line and column. A key's path may end in what it named: ``data.path (my.npz)``."""
    if exc.file is not None or file is None:
        return exc
    keys = tuple(int(k) if k.isdigit() else k for k in (exc.path or "").split(" (")[0].split(".") if k)
    try:
        _, tree = read_yaml(file, "file")
    except SpecError:
        tree = None
    exc.file = str(file)
    exc.line, exc.column = locate(tree, (*under, *keys)) if keys else (None, None)
    exc.path = ".".join(str(k) for k in (*under, exc.path or "") if k != "") or None
    return exc


def locate(node: yaml.Node | None, path: tuple) -> tuple[int | None, int | None]:
    """Line and column (1-based) of the deepest node of ``path`` present in the composed YAML tree."""
    if node is None:
        return None, None
    found = node
    for depth, key in enumerate(path, 1):
        nxt = None
        if isinstance(found, yaml.MappingNode):
            for k, v in found.value:
                if k.value == str(key):
                    nxt = k if depth == len(path) else v
                    break
        elif isinstance(found, yaml.SequenceNode) and isinstance(key, int) and key < len(found.value):
            nxt = found.value[key]
        if nxt is None:
            break
        found = nxt
    return found.start_mark.line + 1, found.start_mark.column + 1
