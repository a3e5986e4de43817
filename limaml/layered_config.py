"""Configuration from defaults, a TOML file, environment variables and the command line.

Each configurable thing is a dataclass; its fields are declared once and everything else
is derived from them: the `[section]` of the TOML file, the `LIMAML_<SECTION>_<FIELD>`
environment variables, and the `--field` command-line options (whose help text is the
field's trailing comment). Later sources win: defaults < file < environment < command line.

A config class that sets another one's settings (`limaml up` sets the workers') declares
those fields with `borrow`: their default and help are the other class's, and `handed_on`
and `command_line` pass their values on under the other class's names.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "LIMAML"


class ConfigError(ValueError):
    """A configuration value or file is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class Option:
    name: str
    kind: Any  # int, float, str, bool, Path or tuple[int, ...]
    default: Any
    help: str


@dataclass(frozen=True)
class Section:
    """One `[name]` table of the config file and its options."""

    name: str
    options: tuple[Option, ...]

    @classmethod
    def of(cls, name: str, config_class: type, only: Iterable[str] | None = None) -> Section:
        hints = typing.get_type_hints(config_class)
        comments = field_comments(config_class)
        wanted = set(only) if only is not None else None
        options = tuple(
            Option(f.name, hints[f.name], f.default, comments.get(f.name) or f.metadata.get("help", ""))
            for f in dataclasses.fields(config_class)
            if f.default is not dataclasses.MISSING and (wanted is None or f.name in wanted)
        )
        return cls(name, options)


@functools.cache
def field_comments(config_class: type) -> dict[str, str]:
    """The trailing `# comment` of each field in the class body (read once per class)."""
    pattern = re.compile(r"^\s+(\w+):[^#]*#\s*(.+)$")
    source = inspect.getsource(config_class)
    return {m.group(1): m.group(2).strip() for m in map(pattern.match, source.splitlines()) if m}


def borrow(config_class: type, name: str, default: Any = dataclasses.MISSING, *,
           also: Iterable[tuple[type, str]] = ()) -> Any:
    """A dataclass field that sets `config_class`'s setting `name` (and those in `also`): its
    default, unless given, and its help (when the field has no comment of its own) are
    that setting's."""
    source = next(f for f in dataclasses.fields(config_class) if f.name == name)
    comment = field_comments(config_class).get(name, "")
    return dataclasses.field(default=source.default if default is dataclasses.MISSING else default,
                             metadata={"help": f"{comment} (sets {config_class.__name__}.{name})",
                                       "sets": ((config_class, name), *also)})


def handed_on(config: Any, config_class: type) -> dict[str, Any]:
    """The values of `config`'s `borrow`ed fields that set `config_class`'s settings, under
    the names of those settings."""
    return {target: getattr(config, f.name) for f in dataclasses.fields(config)
            for owner, target in f.metadata.get("sets", ()) if owner is config_class}


def command_line(values: Mapping[str, Any]) -> list[str]:
    """The command-line options (as `add_arguments` declares them) that set these values."""
    arguments: list[str] = []
    for name, value in values.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            arguments.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            arguments += [f"--{flag}", _show(value)]
    return arguments


def parse_value(option: Option, value: Any, source: str) -> Any:
    """A raw value (string from env/CLI or a TOML value) converted to the option's type."""
    kind = option.kind
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typing.get_origin(kind) is tuple:
            items = value if isinstance(value, list) else str(value).split(",")
            return tuple(int(item) for item in items)
        if kind is Path:
            return Path(value)
        if kind is int and isinstance(value, float):
            raise ValueError("expected an integer")
        return kind(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: invalid value {value!r} for '{option.name}': {error}") from None


def env_name(section: Section, option: Option) -> str:
    return f"{ENV_PREFIX}_{section.name}_{option.name}".upper()


def add_arguments(parser: argparse.ArgumentParser, sections: Iterable[Section]) -> None:
    for section in sections:
        group = parser.add_argument_group(f"[{section.name}] settings")
        for option in section.options:
            flag = "--" + option.name.replace("_", "-")
            text = f"{option.help} (default: {_show(option.default)}; env {env_name(section, option)})"
            if option.kind is bool:
                group.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                   default=None, help=text)
            else:
                group.add_argument(flag, dest=option.name, default=None, metavar=option.name.upper(),
                                   help=text)


def resolve(sections: Iterable[Section], config_file: Path | None, cli: argparse.Namespace | None,
            environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """{section: {option: value}} after applying file, environment and command line."""
    environ = os.environ if environ is None else environ
    file_values = read_config_file(config_file) if config_file else {}
    resolved: dict[str, dict[str, Any]] = {}
    for section in sections:
        table = file_values.get(section.name, {})
        known = {option.name for option in section.options}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{config_file}: unknown key(s) {sorted(unknown)} in [{section.name}]; "
                              f"known keys: {sorted(known)}")
        values = {}
        for option in section.options:
            value = option.default
            if option.name in table:
                value = parse_value(option, table[option.name], f"{config_file} [{section.name}]")
            variable = env_name(section, option)
            if variable in environ:
                value = parse_value(option, environ[variable], f"environment variable {variable}")
            given = getattr(cli, option.name, None) if cli is not None else None
            if given is not None:
                value = parse_value(option, given, "command line")
            values[option.name] = value
        resolved[section.name] = values
    return resolved


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing TOML file "
                          "or leave --config out to use the defaults")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def read_secret(value: str, file: str, name: str) -> str:
    """A secret given directly (option `name`: in the TOML file, the environment or on the
    command line) or in a file (option `name`_file, read now: a mounted Docker or Kubernetes
    secret, say); "" when neither is given. No error message shows the secret."""
    if value and file:
        raise ConfigError(f"give {name} or {name}_file, not both")
    if not file:
        return value
    try:
        secret = Path(file).read_text().strip()
    except OSError as error:
        raise ConfigError(f"{name}_file {file}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}_file {file} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{name}_file {file} is empty")
    return secret


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)
