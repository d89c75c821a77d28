"""Python types to OpenAPI 3.0 schemas, and field-name checks against the same types.

A shape is a TypedDict. Its fields are plain types (`str`, `int`, `float`, `bool`,
`UUID`, `datetime`, `Any`, `list[...]`, `dict[str, ...]`, `Literal[...]`, unions and
other shapes), optionally wrapped in `Annotated[..., Field(...)]` for the constraints.
`X | None` is a nullable X. Every shape becomes a component named after its class and
is referred to with `$ref`. A shape used in a request body is closed
(`additionalProperties: false`, as the handlers refuse unknown fields); a shape in a
response is open, so that answers may grow fields. One shape cannot be both.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints
from uuid import UUID

from pgjobs.errors import ValidationError

Schema = dict[str, Any]
_UNSET: Any = object()

# JSON Schema keyword of each Field attribute (attributes not listed keep their name).
_KEYWORDS = {
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_items": "minItems",
    "max_items": "maxItems",
    "exclusive_minimum": "exclusiveMinimum",
}


@dataclass(frozen=True, slots=True)
class Field:
    """Constraints and documentation of one value (`Annotated[int, Field(maximum=9)]`)."""

    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    min_items: int | None = None
    max_items: int | None = None
    enum: tuple[Any, ...] | None = None
    format: str | None = None
    default: Any = _UNSET

    def keywords(self) -> Schema:
        out: Schema = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None or value is _UNSET:
                continue
            out[_KEYWORDS.get(item.name, item.name)] = list(value) if item.name == "enum" else value
        return out


def is_shape(tp: Any) -> bool:
    return isinstance(tp, type) and typing.is_typeddict(tp)


def shape_fields(shape: type) -> dict[str, Any]:
    """The fields of a shape and their annotated types, in declaration order."""
    return get_type_hints(shape, include_extras=True)


def required_fields(shape: type) -> list[str]:
    """The fields a body must have. `Required[...]`/`NotRequired[...]` decide where
    given; otherwise the totality of the class that declares the field. (Read from the
    evaluated hints: with postponed annotations, Python 3.11 does not see the wrappers
    when it builds `__required_keys__`.)"""
    by_totality: frozenset[str] = getattr(shape, "__required_keys__", frozenset())
    out = []
    for name, tp in shape_fields(shape).items():
        origin = get_origin(tp)
        if origin is typing.Required or (origin is not typing.NotRequired and name in by_totality):
            out.append(name)
    return out


def check_fields(body: Mapping[str, Any], shape: type) -> None:
    """Refuse a field the shape does not declare, then a missing required one (422),
    each named in the error, unknown fields first and in sorted order."""
    reject_unknown_fields(body, shape)
    for name in required_fields(shape):
        if name not in body:
            raise ValidationError(f"{name} is required", field=name)


def reject_unknown_fields(body: Mapping[str, Any], shape: type) -> None:
    """Refuse a field the shape does not declare (422), the first in sorted order."""
    unknown = sorted(set(body) - set(shape_fields(shape)))
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=unknown[0])


class SchemaBuilder:
    """Collects the component schemas of every shape it meets."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}
        self._closed: dict[str, bool] = {}

    def ref(self, shape: type, *, request: bool) -> Schema:
        """A `$ref` to `shape`, building its component (and those it refers to) once."""
        name = shape.__name__
        seen = self._closed.get(name)
        if seen is not None:
            if seen != request:
                raise TypeError(f"shape {name} is used both in a request and a response")
            return {"$ref": f"#/components/schemas/{name}"}
        self._closed[name] = request
        self.components[name] = {}  # reserved: a shape may refer to itself
        self.components[name] = self.object_schema(shape, request=request)
        return {"$ref": f"#/components/schemas/{name}"}

    def object_schema(self, shape: type, *, request: bool) -> Schema:
        out: Schema = {
            "type": "object",
            "properties": {
                name: self.schema(tp, request=request) for name, tp in shape_fields(shape).items()
            },
        }
        required = required_fields(shape)
        if required:
            out["required"] = required
        if request:
            out["additionalProperties"] = False
        doc = shape.__doc__
        if doc:
            out["description"] = inspect.cleandoc(doc).replace("\n", " ")
        return out

    def schema(self, tp: Any, *, request: bool) -> Schema:
        """The schema of one annotated type."""
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is Annotated:
            out = self.schema(args[0], request=request)
            for meta in args[1:]:
                if isinstance(meta, Field):
                    out = {**out, **meta.keywords()}
            return out
        if origin in (typing.Required, typing.NotRequired):
            return self.schema(args[0], request=request)
        if origin is Union or origin is types.UnionType:
            options = [a for a in args if a is not type(None)]
            if len(options) < len(args):  # X | None
                inner = options[0] if len(options) == 1 else Union[tuple(options)]  # noqa: UP007
                return {**self.schema(inner, request=request), "nullable": True}
            return {"oneOf": [self.schema(a, request=request) for a in options]}
        if origin is Literal:
            return {"type": "string", "enum": list(args)}
        if origin is list:
            return {"type": "array", "items": self.schema(args[0], request=request)}
        if origin is dict:
            value = args[1] if args else Any
            if value is Any:
                return {"type": "object"}
            return {"type": "object", "additionalProperties": self.schema(value, request=request)}
        if is_shape(tp):
            return self.ref(tp, request=request)
        simple = _SIMPLE.get(tp)
        if simple is None:
            raise TypeError(f"no JSON schema for {tp!r}")
        return dict(simple)


_SIMPLE: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    Any: {},
    UUID: {"type": "string", "format": "uuid"},
    datetime: {"type": "string", "format": "date-time"},
}
