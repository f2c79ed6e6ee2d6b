"""The main job, runnable: ``etcdwatch demo`` (``python -m etcdwatch demo``).

Three workers, elected change watchers on one prefix, race for one
election.  The leader prints each change a writer makes (a rewrite with the
same value is no change); it is stopped and another takes over at once;
that one hangs in a callback, stops showing life, loses its key when the
TTL runs out, and the third takes over.  Every line shows the time since
the start; the failovers show how long they took.

Runs on the in-memory FakeEtcdClient unless given a real etcd client: a
python-etcd client (v2 API) or an etcd3gw one (v3).
"""

import base64
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

from etcdwatch import backends
from etcdwatch import election
from etcdwatch import watcher

PREFIX = '/etcdwatch-demo'


class _Printer(object):
    """Writes ``<seconds since start>  <text>`` lines, one at a time."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Print nothing more (what workers say as they shut down)."""
        with self._lock:
            self._closed = True

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._out.write('%6.2fs  %s\n'
                            % (time.monotonic() - self._start, text))
            self._out.flush()


class DemoWorker(watcher.EtcdChangeWatcher):
    """A worker that, while it leads, prints every change it is told of.

    With short timings (a heartbeat of ``heartbeat`` seconds and a short
    pause after errors), so that a hung leader is replaced within seconds.
    """

    DANGER_PAUSE = 1

    def __init__(self, client: Any, label: str, say: Callable[[str], None],
                 heartbeat: float, prefix: str) -> None:
        self.label = label
        self.say = say
        #: Set to make the next callback hang until ``release`` is set.
        self.hang_next = False
        self.release = threading.Event()
        super(DemoWorker, self).__init__(
            client, 'demo', prefix + '/data',
            election_path=prefix + '/election', wait_until_elected=True,
            recovery_time=heartbeat, heartbeat=heartbeat)

    @property
    def elector(self) -> election.EtcdElection:
        """The election of this (always elected) watcher."""
        elector = self.etcd_elector
        assert elector is not None
        return elector

    def added(self, short_key: str, value: Optional[str]) -> None:
        self.say(_line(self.label, 'sees', '%s = %s' % (short_key, value)))
        self._maybe_hang()

    def removed(self, short_key: str) -> None:
        self.say(_line(self.label, 'sees', '%s deleted' % short_key))
        self._maybe_hang()

    def _maybe_hang(self) -> None:
        if self.hang_next:
            self.hang_next = False
            self.say(_line(self.label, 'hangs', '(shows no life: its key '
                           'is no longer renewed)'))
            self.release.wait()

    def caught_up(self, index: int) -> bool:
        """True once every change up to ``index`` has been delivered."""
        if not self.etcd_data_lock.acquire(timeout=0.1):
            return False
        try:
            stats = self.stats()
            return (stats['index'] is not None and stats['index'] >= index
                    and not stats['pending'])
        finally:
            self.etcd_data_lock.release()


def _line(who: str, verb: str, what: str) -> str:
    return '%-9s %-7s %s' % (who, verb, what)


def _wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.005)


_Writes = Tuple[Callable[[str, str], int], Callable[[str], int],
                Callable[[str], None]]


def _writes(client: Any) -> _Writes:
    """The writer's (put, delete, delete tree) on ``client``'s API.

    put and delete return the etcd index (v3: revision) of the change.
    """
    if backends.for_client(client).name != 'v3':
        return ((lambda key, value: client.write(key, value).modifiedIndex),
                (lambda key: client.delete(key).modifiedIndex),
                (lambda path: client.delete(path, recursive=True)))

    def b64(text: str) -> str:
        return base64.b64encode(text.encode('utf-8')).decode('ascii')

    def post(path: str, payload: Dict[str, str]) -> int:
        result = client.post(client.get_url(path), json=payload)
        return int(result['header']['revision'])

    def put(key: str, value: str) -> int:
        return post('/kv/put', {'key': b64(key), 'value': b64(value)})

    def delete(key: str) -> int:
        return post('/kv/deleterange', {'key': b64(key)})

    def delete_tree(path: str) -> None:
        post('/kv/deleterange', {'key': b64(path + '/'),
                                 'range_end': b64(path + '0')})

    return put, delete, delete_tree


def run(client: Any, out: TextIO = sys.stdout, heartbeat: float = 0.25,
        prefix: str = PREFIX, pace: float = 0.15) -> int:
    """Run the demo on ``client``; returns 0 on success, 1 on a failure.

    It works under a new directory below ``prefix``, deleted at the end.
    ``pace`` is a pause between steps, for the human reading along.
    """
    say = _Printer(out)
    put, remove, remove_tree = _writes(client)
    base = '%s/%s' % (prefix.rstrip('/'), uuid.uuid4().hex[:8])
    data = base + '/data'
    workers = [DemoWorker(client, 'worker-%d' % n, say, heartbeat, base)
               for n in (1, 2, 3)]
    threads = [threading.Thread(target=w.watch_forever, daemon=True,
                                name='demo-' + w.label) for w in workers]
    say('worker-1, worker-2 and worker-3 campaign for %s; the one elected '
        'prints the changes under %s' % (workers[0].elector.master_key,
                                         data))
    for w in workers:
        w.elector.on_lost = (
            lambda term, w=w: say(_line(w.label, 'lost', '(term %s ended)'
                                        % term.fencing_token)))
    for thread in threads:
        thread.start()

    def leader(exclude: List[DemoWorker]) -> Optional[DemoWorker]:
        return next((w for w in workers if w not in exclude and w.synced
                     and w.elector.is_elected), None)

    def write(key: str, value: str, note: str = '') -> int:
        say(_line('writer', 'sets', '%s = %s%s' % (key, value, note)))
        return put('%s/%s' % (data, key), value)

    def delete(key: str) -> int:
        say(_line('writer', 'deletes', key))
        return remove('%s/%s' % (data, key))

    def seen(by: DemoWorker, index: int) -> bool:
        ok = _wait_for(lambda: by.caught_up(index), 10)
        if not ok:
            say('%s did not see the change at index %d' % (by.label, index))
        time.sleep(pace)
        return bool(ok)

    def takeover(old: DemoWorker, since: float, why: str
                 ) -> Optional[DemoWorker]:
        new = _wait_for(lambda: leader([old]), 30)
        if new is None:
            say('no worker took over within 30 s')
            return None
        say(_line(new.label, 'leads', '(term %s) %.2f s after %s'
                  % (new.elector.fencing_token,
                     time.monotonic() - since, why)))
        return new

    try:
        first = _wait_for(lambda: leader([]), 30)
        if first is None:
            say('no worker was elected within 30 s')
            return 1
        say(_line(first.label, 'leads', '(term %s, id %s)'
                  % (first.elector.fencing_token,
                     first.elector.thread_id)))
        time.sleep(pace)
        for step in (lambda: write('color', 'blue'),
                     lambda: write('size', 'large'),
                     lambda: write('color', 'green'),
                     lambda: write('color', 'green',
                                   '  (same value: no change to report)'),
                     lambda: delete('size')):
            if not seen(first, step()):
                return 1

        say(_line(first.label, 'stops', '(resigns: its key is deleted at '
                  'once)'))
        stopped = time.monotonic()
        first.stop()
        second = takeover(first, stopped, 'the stop')
        if second is None or not seen(second, write('shape', 'round')):
            return 1

        second.hang_next = True
        hung = time.monotonic()
        write('shape', 'square')
        third = takeover(second, hung, 'the hang')
        if third is None:
            return 1
        second.release.set()
        if not seen(third, write('size', 'small')):
            return 1
        say('done: one leader at a time, each change seen once by the '
            'leader of the moment')
        return 0
    finally:
        say.close()
        for w in workers:
            w.release.set()
            w.stop()
        for thread in threads:
            thread.join(heartbeat * 3 + 5)
        try:
            remove_tree(base)
        except Exception:
            pass
