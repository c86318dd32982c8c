"""The one way the three programs read their environment: pydantic-settings with the same rules for all of them.

- Field `x` of a program's settings is read from `<PREFIX>X`; the prefix is the program's (`MODELDEPLOY_OPERATOR_`
  for the operator, `MODELDEPLOY_` for the server and the trainer).
- An empty value is the same as an unset one: the default applies (a ConfigMap or a Helm value left blank).
- Booleans: `1`, `true`, `yes`, `on` (and `t`, `y`) are true; `0`, `false`, `no`, `off` (and `f`, `n`) are false,
  in any case; anything else is an error.
- A value that is not of the field's type, or out of its range, is a `SettingsError` that names the variable, the
  value and what it must be.
- Settings are frozen, and read when a program starts (`load_settings`), never at import.

Only the programs and the commands that run them import this module (pydantic-settings is in the programs' extras,
not among the CLI's own dependencies).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A setting from the environment or the command line has a value that cannot be used; the message names it."""


class EnvSettings(BaseSettings):
    """The rules above; a program's settings subclass this and set `env_prefix` in their `model_config`."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        frozen=True,
        env_ignore_empty=True,
        use_attribute_docstrings=True,
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,  # a field read from an alias (a former variable name) is still set by its name
    )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of `field`, e.g. `MODELDEPLOY_HTTP_PORT` for the server's `http_port`."""
        info = cls.model_fields.get(field)
        alias = info.validation_alias if info is not None else None
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0].upper()
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


S = TypeVar("S", bound=EnvSettings)


def load_settings(cls: type[S], overrides: Mapping[str, Any] | None = None) -> S:
    """`cls` read from the environment, with the `overrides` that are not None (options that were given) on top;
    a bad value is a SettingsError naming its variable."""
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    try:
        return cls(**given)
    except ValidationError as err:
        raise SettingsError(describe(cls, err)) from None


def describe(cls: type[EnvSettings], err: ValidationError) -> str:
    """One line per wrong value: the variable, the value it had, what pydantic expected, what to do."""
    lines = []
    for error in err.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = cls.env_name(field) if field in cls.model_fields else _alias_set(cls, field)
        if error["type"] == "missing":
            lines.append(f"{name} is not set; it is required")
        else:
            lines.append(f"{name}={error['input']!r} is not valid: {error['msg']}; set a valid value or unset it")
    return "; ".join(lines)


def _alias_set(cls: type[EnvSettings], loc: str) -> str:
    """A field read through aliases (a variable's full names, the first one in the error): the one that is set."""
    for info in cls.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and loc in alias.choices:
            names = [str(choice).upper() for choice in alias.choices]
            return next((name for name in names if os.environ.get(name)), names[0])
    return loc.upper() or cls.__name__
