"""The code version a result records: the commit, and whether tracked files differ from it."""
import shutil
import subprocess

import pytest

from util.provenance import code_version

pytestmark = pytest.mark.skipif(shutil.which('git') is None, reason='needs git')


def git(root, *args):
    return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_change_counts_unless_it_is_under_an_ignored_folder(tmp_path):
    (tmp_path / 'results').mkdir()
    (tmp_path / 'code.py').write_text('x = 1\n')
    (tmp_path / 'results' / 'table.md').write_text('| a |\n')
    git(tmp_path, 'init', '-q')
    git(tmp_path, 'add', '.')
    git(tmp_path, 'commit', '-qm', 'first')
    head = git(tmp_path, 'rev-parse', 'HEAD')
    assert code_version(tmp_path) == {'commit': head, 'clean': True}

    (tmp_path / 'results' / 'table.md').write_text('| b |\n')  # the caller's own results changed
    assert code_version(tmp_path)['clean'] is False
    outside = tmp_path.parent / 'elsewhere'  # a folder outside the checkout is no pathspec for git
    assert code_version(tmp_path, ignore=[tmp_path / 'results', outside]) == {'commit': head, 'clean': True}

    (tmp_path / 'code.py').write_text('x = 2\n')
    assert code_version(tmp_path, ignore=[tmp_path / 'results'])['clean'] is False


def test_outside_a_checkout_the_version_is_unknown(tmp_path):
    assert code_version(tmp_path) == {'commit': None, 'clean': None}
