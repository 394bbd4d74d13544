"""Run configuration: a YAML file in the published schema (`model:` and `args:`), overridden by flags.

`--batch_size 32` overrides args; dotted flags override model (`--model.llama_config.num_hidden_layers 6`).
Every `args` key is declared in a schema (type, default, help), so unknown keys and wrong types are caught
before any work, each with one clear line."""
import argparse
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from util.atomic import atomic_write
from util.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A configuration problem, reported as one line and exit status 2."""


@dataclass
class Option:
    type: Any  # int, float, str, bool, list (of numbers) or dict
    default: Any
    help: str = ''


def closest(key, valid):
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


def check_keys(section, valid, where, hint='', source=None):
    """ConfigError for the first key of section not in valid, naming the closest valid key (or all of them);
    where is the section's dotted name, source the file it came from."""
    for key in section:
        if key not in valid:
            near = closest(key, valid) or f'; valid keys: {sorted(valid)}'
            raise ConfigError(f"{f'{source}: ' if source else ''}unknown key '{where}.{key}'{near}{hint}")


def check_type(key, value, option):
    """The value converted to the option's type, or ConfigError."""
    if value is None:
        return None
    kind = option.type
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str),
          list: isinstance(value, list), dict: isinstance(value, dict)}[kind]
    if not ok:
        raise ConfigError(f"args.{key} must be {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def typed_value(value, kind, where):
    """value checked against a type annotation (a dataclass, int, float, bool, str, dict, tuple or a union
    of them; an int is a float, a list a tuple), converted to it; ConfigError naming where otherwise."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f'{where} must be a section of keys, got {value!r}')
        return from_mapping(kind, value, where)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        for option in typing.get_args(kind):
            try:
                return typed_value(value, option, where)
            except ConfigError:
                pass
        names = ' or '.join('null' if option is type(None) else option.__name__ for option in typing.get_args(kind))
        raise ConfigError(f'{where} must be {names}, got {value!r}')
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str),
          dict: isinstance(value, dict), tuple: isinstance(value, (list, tuple)),
          type(None): value is None}[kind]
    if not ok:
        raise ConfigError(f'{where} must be {"null" if kind is type(None) else kind.__name__}, got {value!r}')
    return float(value) if kind is float else tuple(value) if kind is tuple else value


def from_mapping(cls, values, where, source=None):
    """An instance of dataclass cls from a config section: an unknown key (with the closest valid one), a
    missing required key or a value of the wrong type is a ConfigError naming where (the section's dotted
    name) and source (its file)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    check_keys(values, fields, where, source=source)
    prefix = f'{source}: ' if source else ''
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            try:
                kwargs[name] = typed_value(values[name], hints[name], f'{where}.{name}')
            except ConfigError as e:
                raise ConfigError(prefix + str(e)) from None
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}missing key '{where}.{name}'")
    return cls(**kwargs)


def to_mapping(obj):
    """A dataclass as plain YAML/JSON types (nested dicts, lists for tuples)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(dataclasses.asdict(obj))


def parse_value(text):
    """A command-line value in YAML syntax: 3 -> int, true -> bool, [1, 2] -> list; and a number Python reads
    that YAML 1.1 leaves a string (1e-4, nan, inf) -> float."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_text(text):
    """A string flag; `null` (or `None`) unsets it."""
    return None if text in ('null', 'None') else text


def set_dotted(tree, dotted, value):
    node = tree
    *parents, leaf = dotted.split('.')
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--model.{dotted}: '{p}' is not a section")
    node[leaf] = value


def build_parser(schema, description):
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument('--config', required=True, help='YAML file with model: and args: sections')
    for key, option in schema.items():
        if option.type is bool:
            parser.add_argument(f'--{key}', type=parse_value, nargs='?', const=True, default=argparse.SUPPRESS,
                                help=option.help)
        elif option.type is list:
            parser.add_argument(f'--{key}', type=parse_value, nargs='+', default=argparse.SUPPRESS, help=option.help)
        else:
            parser.add_argument(f'--{key}', type=parse_value if option.type is not str else parse_text,
                                default=argparse.SUPPRESS, help=option.help)
    return parser


def load_config(argv, schema, description=''):
    """Parse argv (--config FILE, --key value, --model.dotted value) into a config; see read_config."""
    parser = build_parser(schema, description)
    known, rest = parser.parse_known_args(argv)
    model_overrides = {}
    while rest:
        flag = rest.pop(0)
        if flag.startswith('--model.') and rest and not rest[0].startswith('--'):
            model_overrides[flag[len('--model.'):]] = parse_value(rest.pop(0))
        elif flag.startswith('--'):
            raise ConfigError(f'unknown flag {flag}{closest(flag[2:], schema)}')
        else:
            raise ConfigError(f'unexpected argument {flag!r}')
    given = vars(known)
    return read_config(known.config, schema, {key: given[key] for key in schema if key in given}, model_overrides)


def read_config(path, schema, overrides=None, model_overrides=None):
    """{'model': dict, 'args': dict} from a YAML file: schema defaults filled in, then overrides (args keys)
    and model_overrides (dotted model keys) applied.

    Raises ConfigError (unknown key with the closest valid one, wrong type, unreadable file)."""
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML ({str(e).splitlines()[0]})') from None
    unknown = set(raw) - {'model', 'args'}
    if unknown:
        raise ConfigError(f'{path}: unknown top-level section {sorted(unknown)[0]!r}; expected model: and args:')
    args = dict(raw.get('args') or {})
    check_keys(args, schema, 'args', source=path)
    check_keys(overrides or {}, schema, 'args')
    args.update(overrides or {})
    args = {key: check_type(key, args.get(key, option.default), option) for key, option in schema.items()}
    args['config'] = path
    model = dict(raw.get('model') or {})
    for dotted, value in (model_overrides or {}).items():
        set_dotted(model, dotted, value)
    return {'model': model, 'args': args}


def config_text(config):
    """The effective config (model: and args:) as YAML text."""
    return yaml.safe_dump({'model': config['model'], 'args': config['args']}, sort_keys=False)


def write_yaml(obj, path):
    """Write obj as YAML, atomically."""
    with atomic_write(path, 'w') as f:
        yaml.safe_dump(obj, f, sort_keys=False)
