"""Run configuration: a YAML file in the published schema (`model:` and `args:`), overridden by flags.

`--batch_size 32` overrides args; dotted flags override model (`--model.llama_config.num_hidden_layers 6`).
Every `args` key is declared in a schema (type, default, help), so unknown keys and wrong types are caught
before any work, each with one clear line."""
import argparse
import difflib
import os
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, reported as one line and exit status 2."""


@dataclass
class Option:
    type: Any  # int, float, str, bool, list (of numbers) or dict
    default: Any
    help: str = ''


def closest(key, valid):
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


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


def parse_value(text):
    """A command-line value in YAML syntax: 3 -> int, 1e-4 -> float, true -> bool, [1, 2] -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
    """Parse argv into {'model': dict, 'args': dict} with schema defaults filled in, flags applied.

    Raises ConfigError (unknown key with the closest valid one, wrong type, unreadable file)."""
    parser = build_parser(schema, description)
    known, rest = parser.parse_known_args(argv)
    model_overrides = []
    while rest:
        flag = rest.pop(0)
        if flag.startswith('--model.') and rest and not rest[0].startswith('--'):
            model_overrides.append((flag[len('--model.'):], parse_value(rest.pop(0))))
        elif flag.startswith('--'):
            raise ConfigError(f'unknown flag {flag}{closest(flag[2:], schema)}')
        else:
            raise ConfigError(f'unexpected argument {flag!r}')
    if not os.path.isfile(known.config):
        raise ConfigError(f'config file not found: {known.config}')
    try:
        with open(known.config) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'{known.config}: not valid YAML ({str(e).splitlines()[0]})') from None
    unknown = set(raw) - {'model', 'args'}
    if unknown:
        raise ConfigError(f'{known.config}: unknown top-level section {sorted(unknown)[0]!r}; '
                          'expected model: and args:')
    args = dict(raw.get('args') or {})
    for key in args:
        if key not in schema:
            raise ConfigError(f"{known.config}: unknown key 'args.{key}'{closest(key, schema)}")
    given = vars(known)
    args.update({key: given[key] for key in schema if key in given})
    args = {key: check_type(key, args.get(key, option.default), option) for key, option in schema.items()}
    args['config'] = known.config
    model = dict(raw.get('model') or {})
    for dotted, value in model_overrides:
        set_dotted(model, dotted, value)
    return {'model': model, 'args': args}


def dump_config(config, path):
    """Write the effective config as YAML (atomic)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        yaml.safe_dump({'model': config['model'], 'args': config['args']}, f, sort_keys=False)
    os.replace(tmp, path)
