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
    assert any('python3 -m pytest' in c for c in commands)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = [c for c in _readme_commands()
                    if 'python3 -m pytest' in c][0]
    ci_lines = [line.strip() for line in _read('.ci', 'run').splitlines()]
    assert test_command in ci_lines


def _requirement_lines():
    return [line for line in _read('requirements.txt').splitlines()
            if line.strip() and not line.startswith('#')]


def test_runtime_requirements_are_slim():
    # oslo.config: etcdwatch.config's options need it and oslo.log depends
    # on it anyway, so it installs nothing new; oslo.serialization (the
    # compat module's jsonutils) neither.  eventlet is an extra (a
    # thread-only service does not pull it in); six is not imported.
    names = sorted(re.split(r'[<>=! ]', line)[0].lower()
                   for line in _requirement_lines())
    assert names == ['oslo.config', 'oslo.log', 'oslo.serialization',
                     'python-etcd', 'urllib3']


def _extras():
    extras, section, name = {}, None, None
    for line in _read('setup.cfg').splitlines():
        if line.startswith('['):
            section = line.strip()
            continue
        if section != '[extras]' or not line.strip():
            continue
        if not line[0].isspace():
            name = line.split('=')[0].strip()
            extras[name] = []
        else:
            extras[name].append(re.split(r'[<>=! ]', line.strip())[0])
    return extras


def test_eventlet_is_an_extra_and_the_tests_still_get_it():
    assert _extras()['eventlet'] == ['eventlet']
    tests = [re.split(r'[<>=! ]', line)[0].lower()
             for line in _read('test-requirements.txt').splitlines()
             if line.strip() and not line.startswith('#')]
    assert 'eventlet' in tests


def test_nothing_imports_six():
    for top, dirs, files in os.walk(os.path.join(ROOT, 'etcdwatch')):
        for name in files:
            if name.endswith('.py'):
                text = _read(top, name)
                assert not re.search(r'^\s*(import six|from six\b)', text,
                                     re.M), os.path.join(top, name)


def test_oslo_config_requirement_gives_its_reason():
    [line] = [line for line in _requirement_lines()
              if line.startswith('oslo.config')]
    assert 'oslo.log' in line.partition('#')[2]


def test_ci_builds_the_docs_with_warnings_as_errors():
    ci_lines = [line.strip() for line in _read('.ci', 'run').splitlines()]
    [build] = [line for line in ci_lines if '-m sphinx' in line]
    assert 'pip install -r docs/requirements.txt' in build
    assert ' -W ' in build
    # The script's verdict counts both the tests and the docs.
    assert ci_lines[-1] == '[ "$tests" -eq 0 ] && [ "$docs" -eq 0 ]'


def test_docs_requirements_cover_what_autodoc_imports():
    # api.rst documents etcdwatch.v3client, which imports etcd3gw.
    names = [re.split(r'[<>=! ]', line)[0].lower()
             for line in _read('docs', 'requirements.txt').splitlines()
             if line.strip() and not line.startswith('#')]
    assert 'etcd3gw' in names
    assert 'automodule:: etcdwatch.v3client' in _read('docs', 'api.rst')
