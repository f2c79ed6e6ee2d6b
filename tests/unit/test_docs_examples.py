"""Every code example in the documentation runs.

Python examples in ``docs/*.rst`` are either doctests (``>>>``, run here
with :mod:`doctest`) or ``literalinclude`` of ``docs/examples/*.py``: the
scripts are run, the ``test_*.py`` ones with pytest, each in its own
process.  The scripts of :data:`REAL_ETCD_SCRIPTS` talk to an etcd at
127.0.0.1:2379 as a reader's program would: here each runs against an
etcd of its own (v3 only), its port put in place of 2379.  Shell examples
of the command are parsed by its argument parser.
Configuration files and other shell commands (``ini``, ``sh``) are not
Python and are not run.
"""

import doctest
import glob
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from etcdwatch import cli
from etcdwatch.testing import EtcdServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, 'docs')
EXAMPLES = os.path.join(DOCS, 'examples')

PAGES = sorted(glob.glob(os.path.join(DOCS, '*.rst')))
#: Scripts that need an etcd at 127.0.0.1:2379; run by their own tests.
REAL_ETCD_SCRIPTS = {'quickstart_election.py', 'quickstart_watcher.py',
                     'handover_on_sigterm.py'}
SCRIPTS = sorted(p for p in glob.glob(os.path.join(EXAMPLES, '*.py'))
                 if not os.path.basename(p).startswith('test_')
                 and os.path.basename(p) not in REAL_ETCD_SCRIPTS)
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
    examples = (set(SCRIPTS) | set(TEST_MODULES) |
                {os.path.join(EXAMPLES, n) for n in REAL_ETCD_SCRIPTS})
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


# -- the examples on a real etcd at 127.0.0.1:2379 --------------------------

ADDRESS = "host='127.0.0.1', port=2379"


@pytest.fixture
def etcd_v3():
    with EtcdServer(name='docs', enable_v2=False) as server:
        yield server


def _etcd3(server):
    import etcd3gw
    return etcd3gw.client(host=server.host, port=server.port, timeout=10)


def _pointed_at(name, server, tmp_path):
    """The example ``name``, as a file talking to ``server``."""
    text = _read(os.path.join(EXAMPLES, name))
    assert text.count(ADDRESS) == 1, name
    assert server.host == '127.0.0.1'
    path = tmp_path / name
    path.write_text(text.replace(ADDRESS, "host='127.0.0.1', port=%d"
                                 % server.port))
    return str(path)


class _Process(object):
    """A running example, its output read line by line."""

    def __init__(self, path):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join(
            [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                      if p])
        env['PYTHONWARNINGS'] = 'ignore'
        self.proc = subprocess.Popen(
            [sys.executable, path], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip('\n'))

    def expect(self, text, timeout=30):
        """Wait for a line starting with ``text``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(
                    timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError('no %r in %r within %ss; stderr: %s' % (
                    text, self.seen, timeout, self._stderr()))
            self.seen.append(line)
            if line.startswith(text):
                return line

    def _stderr(self):
        if self.proc.poll() is None:
            return '(still running)'
        return self.proc.stderr.read()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def test_quickstart_election_on_a_real_etcd(etcd_v3, tmp_path):
    proc = _run([_pointed_at('quickstart_election.py', etcd_v3, tmp_path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('leading, fencing token ')
    assert lines[1:] == ['step 0', 'step 1', 'step 2']
    # It resigned: the key is free.
    assert _etcd3(etcd_v3).get('/elections/master_nightly-job') == []


def test_quickstart_watcher_on_a_real_etcd(etcd_v3, tmp_path):
    client = _etcd3(etcd_v3)
    client.put('/ports/p1', 'up')
    watcher = _Process(_pointed_at('quickstart_watcher.py', etcd_v3,
                                   tmp_path))
    try:
        watcher.expect('port p1 is up')
        client.put('/ports/p2', 'down')
        watcher.expect('port p2 is down')
        client.delete('/ports/p1')
        watcher.expect('port p1 is gone')
    finally:
        watcher.kill()


def test_handover_on_sigterm_is_immediate(etcd_v3, tmp_path):
    # work_time is 30 s: without the handler, the second worker would
    # wait that long for the first one's key to expire.
    path = _pointed_at('handover_on_sigterm.py', etcd_v3, tmp_path)
    first = _Process(path)
    second = None
    try:
        first.expect('leading, fencing token')
        second = _Process(path)
        stopped = time.monotonic()
        assert first.stop() == 0
        second.expect('leading, fencing token', timeout=20)
        assert time.monotonic() - stopped < 20
        assert second.stop() == 0
        # The second resigned too.
        assert _etcd3(etcd_v3).get('/elections/master_nightly-job') == []
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_readme_example_is_the_quickstart_watcher():
    # README.rst is not a page of the docs; its one Python example is the
    # quick start that test_quickstart_watcher_on_a_real_etcd runs.
    readme = _read(os.path.join(ROOT, 'README.rst'))
    [body] = [body for line, kind, language, body in code_blocks(readme)
              if kind == 'code' and language == 'python']
    script = _read(os.path.join(EXAMPLES, 'quickstart_watcher.py'))
    shown = '\n'.join(script.splitlines()[2:]).strip('\n')
    assert textwrap.dedent(body) == shown


def _simple_table_headers(text):
    """(line, header text) of every simple table of an rst page."""
    lines = text.splitlines()
    border = re.compile(r'^\s*=+( +=+)+\s*$')
    i = 0
    while i < len(lines):
        if border.match(lines[i]):
            columns = [m.span() for m in re.finditer(r'=+', lines[i])]
            end = i + 1
            while end < len(lines) and not border.match(lines[end]):
                end += 1
            if end + 1 < len(lines) and end > i + 1:
                for header in lines[i + 1:end]:
                    yield i + 2, [header[a:b].strip() for a, b in columns]
            # Skip to the table's last border.
            while end + 1 < len(lines) and lines[end + 1].strip():
                end += 1
            i = end
        i += 1


def test_table_headers_are_not_blank():
    # A simple table whose header row starts blank renders with no
    # headers at all (docutils reads the row as a continuation line).
    blank = []
    for page in PAGES + [os.path.join(ROOT, 'README.rst')]:
        for line, cells in _simple_table_headers(_read(page)):
            if not cells[0]:
                blank.append('%s:%d' % (_name(page), line))
    assert blank == []
