"""Every code example in the documentation runs.

Python examples in ``docs/*.rst`` are either doctests (``>>>``, run here
with :mod:`doctest`) or ``literalinclude`` of ``docs/examples/*.py``: the
scripts are run, the ``test_*.py`` ones with pytest, each in its own
process.  Shell examples of the command are parsed by its argument parser.
Configuration files and other shell commands (``ini``, ``sh``) are not
Python and are not run.
"""

import doctest
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from etcdwatch import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, 'docs')
EXAMPLES = os.path.join(DOCS, 'examples')

PAGES = sorted(glob.glob(os.path.join(DOCS, '*.rst')))
SCRIPTS = sorted(p for p in glob.glob(os.path.join(EXAMPLES, '*.py'))
                 if not os.path.basename(p).startswith('test_'))
TEST_MODULES = sorted(glob.glob(os.path.join(EXAMPLES, 'test_*.py')))

# Languages of code blocks that are not Python and are not run.
NOT_PYTHON = {'ini', 'sh', 'bash', 'text', 'none'}


def _name(path):
    return os.path.relpath(path, ROOT)


def _read(path):
    with open(path) as f:
        return f.read()


def code_blocks(text):
    """(line, kind, language, body) of every code block of an rst page.

    kind is 'literal' (a paragraph ending in ``::``), 'code' (a
    code-block directive), 'include' (literalinclude; body is the path) or
    'doctest' (a ``>>>`` block).
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        match = re.match(r'\.\. (code-block|code|sourcecode)::\s*(\S*)',
                         stripped)
        include = re.match(r'\.\. literalinclude::\s*(\S+)', stripped)
        if include:
            blocks.append((i + 1, 'include', None, include.group(1)))
        elif match:
            start = i + 1
            body, i = _indented(lines, i + 1, len(line) - len(line.lstrip()))
            blocks.append((start, 'code', match.group(2) or 'python', body))
            continue
        elif stripped.startswith('>>>'):
            blocks.append((i + 1, 'doctest', 'pycon', stripped))
        elif (stripped.endswith('::') and not stripped.startswith('..')
              and not stripped.startswith(':')):
            start = i + 1
            body, i = _indented(lines, i + 1, len(line) - len(line.lstrip()))
            blocks.append((start, 'literal', None, body))
            continue
        i += 1
    return blocks


def _indented(lines, i, indent):
    """The block indented deeper than ``indent`` from line ``i``."""
    body = []
    while i < len(lines):
        line = lines[i]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        if line.strip() and line.lstrip().startswith(':') and not body:
            i += 1          # a directive option
            continue
        body.append(line)
        i += 1
    return '\n'.join(body).strip('\n'), i


def _page_blocks():
    for page in PAGES:
        for block in code_blocks(_read(page)):
            yield page, block


def test_python_examples_are_doctests_or_included_scripts():
    offending = []
    for page, (line, kind, language, body) in _page_blocks():
        if kind == 'literal' or (kind == 'code' and
                                 language not in NOT_PYTHON | {'console'}):
            offending.append('%s:%d: %s' % (_name(page), line,
                                            body.strip().split('\n')[0]))
    assert offending == [], (
        'Python examples must be doctests or literalinclude of '
        'docs/examples/*.py, so that they run: %s' % offending)


def test_every_included_example_exists_and_every_example_is_included():
    included = set()
    for page, (line, kind, language, body) in _page_blocks():
        if kind == 'include':
            path = os.path.normpath(os.path.join(DOCS, body))
            assert os.path.isfile(path), '%s:%d' % (_name(page), line)
            included.add(path)
    examples = set(SCRIPTS) | set(TEST_MODULES)
    assert examples, 'no examples found'
    assert examples - included == set(), 'examples no page shows'


@pytest.mark.parametrize('page', [p for p in PAGES if '>>>' in _read(p)],
                         ids=os.path.basename)
def test_doctests(page):
    failures, tried = doctest.testfile(
        page, module_relative=False, report=True,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0
    assert failures == 0


def _run(args, timeout=120):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                  if p])
    env['PYTHONWARNINGS'] = 'ignore'
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_example_scripts_run(script):
    proc = _run([script])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr


@pytest.mark.parametrize('module', TEST_MODULES, ids=os.path.basename)
def test_example_tests_pass(module):
    proc = _run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', module],
                timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r'\d+ passed', proc.stdout), proc.stdout


def test_command_line_examples_parse():
    # The console examples need a real etcd to run; their command lines
    # must at least be valid for the command.
    commands = []
    for page, (line, kind, language, body) in _page_blocks():
        if kind == 'code' and language == 'console':
            commands += [(page, line, text[len('$ etcdwatch'):])
                         for text in (t.strip() for t in body.split('\n'))
                         if text.startswith('$ etcdwatch')]
    assert len(commands) >= 8
    for page, line, text in commands:
        try:
            cli.parse_args(shlex.split(text))
        except SystemExit:
            raise AssertionError('%s:%d: %r does not parse'
                                 % (_name(page), line, text))
