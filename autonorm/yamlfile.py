"""Reading the YAML files users write: safely, with the numbers they mean, and every mistake located.

PyYAML implements YAML 1.1, where ``5e-4`` or ``1e-3`` (no dot) is a string; YAML 1.2 and every
other tool read them as numbers, and so does :class:`Loader`. A key given twice in one mapping is
an error (PyYAML keeps the last one silently, so an earlier section would be lost). Only the safe
tags are understood: nothing in a file is run as code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from autonorm.errors import SpecError


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent-only numbers (``5e-4``, ``1E+3``) as floats."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


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


def _refuse_repeated_keys(node: yaml.Node | None, file: str | None) -> None:
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
            _refuse_repeated_keys(value, file)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, file)
