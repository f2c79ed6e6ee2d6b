"""Parent side of the benchmark's child processes (``benchmarks.workers``).

A :class:`Child` runs ``python -m benchmarks.workers MODE ARGS...`` from the
repository root and collects the JSON lines it prints.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: How long a child may take to answer before we give up on it.
DEFAULT_TIMEOUT = 60
#: Seconds a child gets to exit after SIGTERM before SIGKILL.
TERM_GRACE = 10


class ChildFailed(RuntimeError):
    """A child did not print what was expected in time."""


class Child(object):
    """One worker process; ``lines`` holds what it printed, parsed."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'benchmarks.workers'] +
            [str(a) for a in args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._stderr = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @property
    def pid(self):
        return self.proc.pid

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    def wait_event(self, name, count=1, timeout=DEFAULT_TIMEOUT):
        """The ``count``-th line whose "event" is ``name``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines
                         if line.get('event') == name]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise ChildFailed(
                        '%s: no %r line (exit %s); stderr:\n%s' % (
                            ' '.join(self.proc.args[2:]), name,
                            self.proc.poll(),
                            ''.join(self._stderr[-30:])))
                self._cond.wait(min(left, 0.5))

    def send(self, line):
        self.proc.stdin.write(line + '\n')
        self.proc.stdin.flush()

    def close_input(self):
        self.proc.stdin.close()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TERM_GRACE)

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
