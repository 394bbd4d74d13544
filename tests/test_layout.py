"""The layering of docs/design.md, read from the import statements of every project module (function-level
imports included): util/ imports nothing of the project; models/ and data/ import only util/ (and not each
other); train_ae_codebook/ imports those; the commands (main.py, main_sample.py, evaluator.py, main_sweep.py)
import anything below them and may call each other, without cycles."""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {'util': 0, 'models': 1, 'data': 1, 'train_ae_codebook': 2, 'main': 3, 'main_sample': 3, 'evaluator': 3,
          'main_sweep': 3}
COMMANDS = {name for name, layer in LAYERS.items() if layer == 3}


def project_modules():
    """{module file (relative): its top-level unit ('util', 'models', ..., 'main')} of the project's code."""
    modules = {}
    for unit in LAYERS:
        if os.path.isfile(os.path.join(ROOT, f'{unit}.py')):
            modules[f'{unit}.py'] = unit
        for folder, _, files in os.walk(os.path.join(ROOT, unit)):
            for name in files:
                if name.endswith('.py'):
                    modules[os.path.relpath(os.path.join(folder, name), ROOT)] = unit
    return modules


def imported_units(path):
    """The project units (keys of LAYERS) that a file imports, anywhere in it."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split('.')[0] for name in names} & set(LAYERS)


def import_graph():
    """{unit: set of other units it imports}."""
    graph = {unit: set() for unit in LAYERS}
    for path, unit in project_modules().items():
        graph[unit] |= imported_units(path) - {unit}
    return graph


def test_every_import_points_down_the_layers():
    wrong = []
    for path, unit in project_modules().items():
        for other in imported_units(path) - {unit}:
            allowed = LAYERS[other] < LAYERS[unit] or (unit in COMMANDS and other in COMMANDS)
            if not allowed:
                wrong.append(f'{path} imports {other}')
    assert wrong == []


def test_util_is_a_layer_of_leaf_helpers():
    assert import_graph()['util'] == set()


def test_commands_call_each_other_without_cycles():
    graph = import_graph()

    def reaches(start, target, seen=()):
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, (*seen, nxt)))
                   for nxt in graph[start] & COMMANDS)

    assert [command for command in COMMANDS if reaches(command, command)] == []


def test_the_layering_test_sees_a_violation(tmp_path, monkeypatch):
    """A util module that imports models is caught (the test can fail)."""
    (tmp_path / 'util').mkdir()
    (tmp_path / 'util' / 'bad.py').write_text('def f():\n    from models.checkerboard import scale_sizes\n')
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', str(tmp_path))
    assert imported_units('util/bad.py') == {'models'}
    assert import_graph()['util'] == {'models'}
