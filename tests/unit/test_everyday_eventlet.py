"""cancel(), observe() and the watcher life cycle under eventlet.

The documentation's examples, run in a monkey-patched interpreter (the
OpenStack agent way): the eventlet handler is chosen by itself, and the
background work runs on green threads.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

RUN = '''
import eventlet
eventlet.monkey_patch()
import runpy, sys
from etcdwatch import handlers
assert handlers.default_handler().name == 'eventlet'
runpy.run_path(sys.argv[1], run_name='__main__')
print('done')
'''


@pytest.mark.parametrize('example', ['election_cancel_observe.py',
                                     'watcher_lifecycle.py'])
def test_example_runs_on_green_threads(example):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [sys.executable, '-c', RUN,
         os.path.join(ROOT, 'docs', 'examples', example)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().endswith('done')
