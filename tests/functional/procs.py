"""Worker processes for functional tests, and what they printed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


class Worker(object):
    """One ``tests.functional.worker`` process; collects its JSON lines."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.functional.worker'] +
            [str(a) for a in args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.lines = []
        self._cond = threading.Condition()
        self._stderr = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()

    def _read_err(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    def wait_for(self, predicate, timeout=30):
        """Wait until ``predicate(lines)`` is true; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self.lines)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not result:
                    if self.proc.poll() is not None:
                        # Let the reader drain what the process printed.
                        self._cond.wait(0.2)
                        result = predicate(self.lines)
                        if result:
                            return result
                    raise AssertionError(
                        'worker %s: condition not met; exit %s; stderr:\n%s'
                        % (self.proc.args, self.proc.poll(),
                           ''.join(self._stderr[-40:])))
                self._cond.wait(min(left, 0.5))

    def events(self, name):
        with self._cond:
            return [line for line in self.lines if line.get('event') == name]

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


class Workers(object):
    """Several workers, all killed on exit."""

    def __init__(self):
        self.all = []

    def start(self, *args):
        worker = Worker(*args)
        self.all.append(worker)
        return worker

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for worker in self.all:
            worker.close()
