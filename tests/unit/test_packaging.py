"""README.rst and .ci/run stay true to each other."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _readme_commands():
    return [line.strip() for line in _read('README.rst').splitlines()
            if re.match(r'^\s{4}python3 -m pip install', line)]


def test_readme_gives_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert any(c.endswith('python3 -m etcdwatch demo') for c in commands)
    assert any(c.endswith('python3 -m pytest') for c in commands)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = [c for c in _readme_commands()
                    if c.endswith('python3 -m pytest')][0]
    ci_lines = [line.strip() for line in _read('.ci', 'run').splitlines()]
    assert test_command in ci_lines


def test_runtime_requirements_are_the_cards():
    names = sorted(re.split(r'[<>=! ]', line)[0].lower()
                   for line in _read('requirements.txt').splitlines()
                   if line.strip() and not line.startswith('#'))
    assert names == ['eventlet', 'oslo.log', 'python-etcd', 'six', 'urllib3']
