"""The house: what a bare clone's test run does without the shared fixtures, and the layering of
docs/design.md, read from the import statements of every project module (function-level
imports included): util/ imports nothing of the project; models/ and data/ import only util/ (and not each
other); train_ae_codebook/ and evaluation/ import those; the commands (main.py, main_sample.py, evaluator.py,
main_sweep.py, app.py, tools/) import anything below them and may call each other, without cycles."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {'util': 0, 'models': 1, 'data': 1, 'train_ae_codebook': 2, 'evaluation': 2, 'main': 3, 'main_sample': 3,
          'evaluator': 3, 'main_sweep': 3, 'tools': 3, 'app': 3}
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


def run_fixture_test(shared, ci):
    """The published-order test file in a subprocess with CHECKERBOARD_SHARED=shared and CI=ci."""
    env = {**os.environ, 'CHECKERBOARD_SHARED': str(shared), 'CI': ci}
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           'tests/test_autoencoder.py::test_matches_published_outputs'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_bare_clone_skips_the_fixture_tests_with_one_line(tmp_path):
    bare = run_fixture_test(tmp_path, 'false')
    assert bare.returncode == 0, bare.stdout[-2000:]
    assert '2 skipped' in bare.stdout
    lines = [line for line in bare.stdout.splitlines() if line.startswith('skipped: seed-compatibility fixtures')]
    assert len(lines) == 1 and str(tmp_path) in lines[0] and 'CHECKERBOARD_SHARED' in lines[0]
    under_ci = run_fixture_test(tmp_path, 'true')
    assert under_ci.returncode == 1 and '2 errors' in under_ci.stdout, under_ci.stdout[-2000:]
