"""Configs composed of parts (a fit's labels, hyperparameters and runtime): flat keyword options, as a command line,
a sweep grid or an older flat file gives them, routed to the dataclass that owns each name."""
import dataclasses
import functools
import typing
from typing import NamedTuple

from omniart.core.errors import OmniError

__all__ = ["Option", "options_of", "from_options", "from_saved", "renamed_fields"]


class Option(NamedTuple):
    """Where a flat option name lands: its field, the path of parts leading to it, and its type hint."""

    path: tuple  # part names from the outer config down, () for the config's own field
    field: dataclasses.Field
    hint: object


def _parts(kind) -> dict:
    """Field name -> dataclass type of the fields of `kind` that are themselves dataclasses (its parts)."""
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}


@functools.lru_cache(maxsize=None)
def options_of(kind) -> dict:
    """Flat option name -> [Option, ...]: the config's own fields, then its parts' (recursively). A name several
    parts share (a fit's `seed`: its labels' split and its training) sets every one of them."""
    hints, parts = typing.get_type_hints(kind), _parts(kind)
    options = {f.name: [Option((), f, hints[f.name])] for f in dataclasses.fields(kind) if f.name not in parts}
    for part, part_kind in parts.items():
        for name, found in options_of(part_kind).items():
            if not (name in options and options[name][0].path == ()):  # the config's own field wins
                options.setdefault(name, []).extend(Option((part,) + o.path, o.field, o.hint) for o in found)
    return options


def from_options(kind, options: dict, error=OmniError, what: str = "option"):
    """A `kind` built from flat `options` (each its own field's or a part's field's name); `error` naming an unknown
    name and listing the valid ones. Parts not named keep their defaults."""
    known = options_of(kind)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise error(f"unknown {what}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; valid: "
                    f"{', '.join(sorted(known))}.")
    nested = {}
    for name, value in options.items():
        for option in known[name]:
            _place(nested, option.path, name, value)
    return _build(kind, nested)


def from_saved(kind, values: dict):
    """A `kind` from what an earlier version saved: parts as dicts (or flat, as older files wrote them), names this
    version no longer has left out, lists as tuples, and None where the field has another default taken as it
    (older files wrote None for "the default")."""
    known, parts, nested = options_of(kind), _parts(kind), {}
    for name, value in values.items():
        if name in parts and isinstance(value, dict):
            nested[name] = from_saved(parts[name], value)
        elif name in known:
            for option in known[name]:
                if value is None and option.field.default is not None and option.field.default is not dataclasses.MISSING:
                    continue
                _place(nested, option.path, name, tuple(value) if isinstance(value, list) else value)
    return _build(kind, nested)


def renamed_fields(config, **old) -> None:
    """Old spellings of renamed fields (InitVar aliases, e.g. num_shards -> num_parts), kept for a release: each
    given value (not None) goes to its new field, with a DeprecationWarning naming both."""
    import warnings

    for name, (new, value) in old.items():
        if value is not None:
            warnings.warn(f"{type(config).__name__}({name}=...) is now {new}; the old name goes in a later release.",
                          DeprecationWarning, stacklevel=4)
            setattr(config, new, value)


def _place(nested: dict, path: tuple, name: str, value) -> None:
    for part in path:
        nested = nested.setdefault(part, {})
    nested[name] = value


def _build(kind, nested: dict):
    """`kind` with the `nested` values; a part given as a dict changes that part's default (its default_factory's
    instance: a config may default a part differently from the part's own class, as an audit its label rules)."""
    parts = _parts(kind)
    defaults = {f.name: f.default_factory for f in dataclasses.fields(kind) if f.default_factory is not dataclasses.MISSING}
    return kind(**{name: _changed(defaults.get(name, parts[name])(), value) if name in parts and isinstance(value, dict)
                   else value for name, value in nested.items()})


def _changed(base, nested: dict):
    """`base` (a dataclass instance) with the `nested` values, its own parts changed the same way."""
    parts = _parts(type(base))
    return dataclasses.replace(base, **{name: _changed(getattr(base, name), value)
                                        if name in parts and isinstance(value, dict) else value
                                        for name, value in nested.items()})
