"""Validate CBOR documents against the CDDL in docs/protocol.cddl with zcbor.

zcbor is made for generating C code, and its Python validator has three sharp edges that this
module smooths so that the receiver judges the *data* and not its encoding accident:

- it matches map entries in the order the CDDL lists them, but CBOR maps are unordered, so we
  put each map's known keys into CDDL order first;
- `uint` accepts negative integers, so we check the sign ourselves;
- its error messages are multi-line dumps, so we report one line with the path that failed.

zcbor 0.9.1 still imports `CBORDecodeValueError`, which cbor2 6 renamed to `CBORDecodeError`
(nordicsemi/zcbor#577/#579); we alias it before the import, exactly as zcbor's own fix does.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import cbor2

if not hasattr(cbor2, "CBORDecodeValueError"):  # cbor2 >= 6
    cbor2.CBORDecodeValueError = cbor2.CBORDecodeError  # type: ignore[attr-defined]

from roadside.tools import resources  # noqa: E402
from zcbor.zcbor.zcbor import PRELUDE_PATH, CddlValidationError, DataTranslator  # noqa: E402

from ..errors import SchemaError  # noqa: E402

PROTOCOL_CDDL = resources.PROTOCOL_CDDL  # docs/protocol.cddl, in a checkout or a wheel

# Upper bound for `*` repetitions (records per batch, entries per data map).
MAX_REPEAT = 100_000


class Schema:
    """A loaded CDDL file; `validate(obj, type_name)` raises SchemaError with a one-line reason."""

    def __init__(self, cddl_text: str) -> None:
        try:
            self._types = DataTranslator.from_cddl(
                cddl_text + "\n" + PRELUDE_PATH.read_text(encoding="utf-8"), MAX_REPEAT
            ).my_types
        except Exception as exc:  # zcbor raises plain ValueError/AssertionError on bad CDDL
            raise SchemaError(f"cannot parse CDDL: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path = PROTOCOL_CDDL) -> Schema:
        """Load and parse a CDDL file once (parsing takes tens of milliseconds)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaError(f"cannot read CDDL file {path}: {exc.strerror}") from exc
        return cls(text)

    def has_type(self, name: str) -> bool:
        return name in self._types

    def validate(self, obj: Any, type_name: str) -> Any:
        """Check decoded CBOR `obj` against rule `type_name`; return it with maps in CDDL order."""
        if type_name not in self._types:
            raise SchemaError(f"the CDDL has no rule named {type_name!r}")
        node = self._types[type_name]
        ordered = self._normalise(node, obj, type_name)
        try:
            node.validate_obj(ordered)
        except CddlValidationError as exc:
            raise SchemaError(
                f"does not match CDDL rule {type_name!r}: {_first_line(exc)}"
            ) from exc
        finally:
            _clear_errors(self._types)
        return ordered

    # -- normalisation -------------------------------------------------------------------

    def _resolve(self, node: Any) -> Any:
        """Follow `name = other-name` references (a node with a key keeps its own type)."""
        while node.type == "OTHER":
            node = self._types[node.value]
        return node

    def _fields(self, node: Any) -> list[Any]:
        """The member nodes of a map, with groups and group references flattened."""
        out: list[Any] = []
        for child in node.value:
            if child.key is None and child.type in ("GROUP", "OTHER"):
                target = self._resolve(child) if child.type == "OTHER" else child
                if target.type == "GROUP":
                    out.extend(self._fields(target))
                    continue
            out.append(child)
        return out

    def _normalise(self, node: Any, obj: Any, path: str) -> Any:
        node = self._resolve(node)
        expected = _LEAF_TYPES.get(node.type)
        if expected is not None and type(obj) not in expected[0]:
            raise SchemaError(f"{path} must be {expected[1]}, got {_describe(obj)}")
        if node.type == "UINT" and obj < 0:
            raise SchemaError(f"{path} must be an unsigned integer, got {obj}")
        if node.type == "MAP" and isinstance(obj, dict):
            return self._normalise_map(node, obj, path)
        if node.type == "LIST" and isinstance(obj, list | tuple):
            members = [c for c in node.value]
            if len(members) == 1 and members[0].max_qty > 1:
                return [self._normalise(members[0], x, f"{path}[{i}]") for i, x in enumerate(obj)]
            return [
                self._normalise(m, x, f"{path}[{i}]") if i < len(members) else x
                for i, (m, x) in enumerate(zip(members + [None] * len(obj), obj, strict=False))
            ]
        return obj

    def _normalise_map(self, node: Any, obj: dict, path: str) -> dict:
        fields = self._fields(node)
        known = {f.key.value: f for f in fields if f.key is not None and f.key.value is not None}
        wildcard = next((f for f in fields if f.key is not None and f.key.value is None), None)
        out: dict = {}
        for key, field in known.items():
            if key in obj:
                out[key] = self._normalise(field, obj[key], f"{path}.{key}")
            elif field.min_qty > 0:
                raise SchemaError(f"{path} is missing the key {key!r}")
        for key, value in obj.items():
            if key not in known:
                if wildcard is None:
                    raise SchemaError(f"{path} has an unexpected key {key!r}")
                out[key] = self._normalise(wildcard, value, f"{path}.{key}")
        return out


# What cbor2 decodes each CDDL leaf type to (exact types: a bool is not an int here).
_LEAF_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "UINT": ((int,), "an unsigned integer"),
    "INT": ((int,), "an integer"),
    "NINT": ((int,), "a negative integer"),
    "FLOAT": ((float,), "a float"),
    "TSTR": ((str,), "a text string"),
    "BSTR": ((bytes,), "a byte string"),
    "BOOL": ((bool,), "a bool"),
    "MAP": ((dict,), "a map"),
    "LIST": ((list, tuple), "an array"),
}


def _describe(obj: Any) -> str:
    text = repr(obj)
    return f"{type(obj).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _clear_errors(types: dict) -> None:
    """zcbor appends every failed union attempt to node.errors for ever; keep memory bounded."""
    seen: set[int] = set()

    def walk(node: Any) -> None:
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if getattr(node, "errors", None):
            node.errors.clear()
        walk(getattr(node, "key", None))
        if isinstance(node.value, list):
            for child in node.value:
                walk(child)

    for node in types.values():
        walk(node)


@functools.cache
def protocol_schema() -> Schema:
    """The schema of docs/protocol.cddl, loaded once per process."""
    return Schema.from_file(PROTOCOL_CDDL)
