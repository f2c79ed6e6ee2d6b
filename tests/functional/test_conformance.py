"""FakeEtcdClient against a real etcd: the same cases, outcome for outcome.

Each case is a function of a :class:`Side` (a client, a key prefix and a
record of normalised outcomes).  It runs once on a fresh FakeEtcdClient
and once on the shared real etcd (``etcd_client``/``etcd_prefix``), and the
two records must be equal: action, key, value, dir flag, presence of ttl and
expiration, indexes as deltas from the side's starting index, prevNode,
listings, and for errors the python-etcd class and payload.  A difference is
a bug in the fake.

The fake runs on a FakeClock: where the real etcd must be waited for (a
1-second TTL running out, which a watch then reports) the fake's clock is
advanced instead.  Blocked watches are known to be registered on the real
etcd from its ``etcd_debugging_store_watchers`` gauge, on the fake from
``wait_for_watches``, so no case sleeps.
"""

import random
import re
import threading
import time

import etcd
import pytest

from etcdwatch.backends import v2
from etcdwatch.testing.fake import FakeClock
from etcdwatch.testing.fake import FakeEtcdClient

# Generous: a 2-core machine shared with other tests.
WAIT = 20.0


def _metric(client, name):
    response = client.http.request('GET', client.base_uri + '/metrics',
                                   timeout=WAIT)
    for line in response.data.decode('utf-8').splitlines():
        if line.startswith(name + ' '):
            return float(line.split()[1])
    raise AssertionError('etcd has no metric %s' % name)


class Side(object):
    """One client under test and the normalised record of what it did."""

    def __init__(self, client, prefix, clock=None, watch_timeouts=None):
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.is_fake = isinstance(client, FakeEtcdClient)
        self.outcomes = []
        self.indexes = []           # modifiedIndex deltas seen, in order
        self.modified = {}          # key -> its last modifiedIndex seen
        # Per-op timeouts for watches that block (see _random_ops).
        self.watch_timeouts = watch_timeouts
        self.timed_out = []
        self._threads = []
        self._watch_base = None
        # The prefix's parent exists on the shared etcd (other tests use
        # it too); make it exist on both, before the start is taken.
        try:
            client.write(prefix.rsplit('/', 1)[0] or '/', None, dir=True,
                         prevExist=False)
        except (etcd.EtcdAlreadyExist, etcd.EtcdRootReadOnly):
            pass
        self.base = client.read('/').etcd_index

    # -- normalisation

    def rel(self, delta):
        """The absolute index ``delta`` after this side's start."""
        return self.base + delta

    def index(self, value):
        if value is None:
            return None
        return value - self.base

    def text(self, text):
        """A key or cause with the prefix and absolute indexes taken out."""
        if text is None:
            return None
        text = text.replace(self.prefix, 'P')
        return re.sub(r'\b\d+\b', lambda m: self._number(m.group(0)),
                      text)

    def _number(self, digits):
        # Numbers below the start cannot be indexes of this case (and a
        # case never uses small literal indexes, so the fake, starting at
        # 0, agrees).
        value = int(digits)
        if value < self.base:
            return digits
        return '#%d' % (value - self.base)

    def node(self, raw, ordered):
        out = {
            'key': self.text(raw.get('key')),
            'value': raw.get('value'),
            'dir': bool(raw.get('dir')),
            'ttl': raw.get('ttl') is not None,
            'expiration': raw.get('expiration') is not None,
            'created': self.index(raw.get('createdIndex')),
            'modified': self.index(raw.get('modifiedIndex')),
        }
        if raw.get('nodes'):
            nodes = [self.node(n, ordered) for n in raw['nodes']]
            if not ordered:
                # Real etcd lists a directory in random order.
                nodes.sort(key=lambda n: n['key'])
            out['nodes'] = nodes
        return out

    @staticmethod
    def _raw(result):
        raw = {k: getattr(result, k) for k in (
            'key', 'value', 'dir', 'ttl', 'expiration', 'createdIndex',
            'modifiedIndex')}
        raw['nodes'] = result._children
        return raw

    def result(self, result, ordered=False):
        out = self.node(self._raw(result), ordered)
        out['action'] = result.action
        out['etcd_index'] = self.index(result.etcd_index)
        out['newKey'] = result.newKey
        prev = getattr(result, '_prev_node', None)
        out['prev'] = prev and self.node(self._raw(prev), ordered)
        subtree = [(self.text(n.key), n.dir)
                   for n in result.get_subtree(leaves_only=False)]
        leaves = [self.text(n.key) for n in result.leaves]
        if not ordered:
            subtree.sort(key=repr)
            leaves.sort(key=repr)
        out['subtree'] = subtree
        out['leaves'] = leaves
        if result.modifiedIndex is not None:
            self.indexes.append(result.modifiedIndex - self.base)
            self.modified[result.key] = result.modifiedIndex
        return out

    def error(self, exc):
        out = {'error': type(exc).__name__}
        payload = getattr(exc, 'payload', None)
        if isinstance(payload, dict):
            out.update(
                code=payload.get('errorCode'),
                message=payload.get('message'),
                cause=self.text(payload.get('cause')),
                status=payload.get('status'),
                # Request errors report index 0 on real etcd.
                index=(payload.get('index') and
                       self.index(payload.get('index'))))
        return out

    # -- doing things

    def do(self, label, func, *args, **kwargs):
        """Call ``func``; record its normalised outcome under ``label``.

        Returns the result, or None if it raised.
        """
        ordered = kwargs.get('sorted', False)
        try:
            result = func(*args, **kwargs)
        except etcd.EtcdException as e:
            self.outcomes.append((label, self.error(e)))
            return None
        self.outcomes.append((label, self.result(result, ordered)))
        return result

    def note(self, label, value):
        self.outcomes.append((label, value))

    def expire(self, seconds, key=None, index=None):
        """Let ``seconds`` pass for TTLs.

        The fake's clock is advanced; on the real etcd, if ``key`` is given,
        wait (unrecorded) until its expiry from ``index`` on has happened,
        so what follows does not depend on timing.
        """
        if self.clock is not None:
            self.clock.advance(seconds)
        elif key is not None:
            while True:
                event = self.client.watch(key, index=index, timeout=WAIT)
                if event.action == 'expire':
                    return
                index = event.modifiedIndex + 1

    def watching(self):
        if self.is_fake:
            return self.client.waiting_watches
        return _metric(self.client, 'etcd_debugging_store_watchers')

    def background(self, label, func, *args, **kwargs):
        """Run ``func`` (a watch that should block) in a thread.

        :meth:`wait_blocked` then waits until it is registered.
        """
        if self._watch_base is None:
            self._watch_base = self.watching()
        box = {}

        def run():
            try:
                box['result'] = func(*args, **kwargs)
            except etcd.EtcdException as e:
                box['error'] = e
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append((label, thread, box))
        return box

    def wait_blocked(self):
        """Wait until every background watch is blocked in etcd."""
        want = self._watch_base + len(self._threads)
        deadline = time.monotonic() + WAIT
        while self.watching() < want:
            assert time.monotonic() < deadline, 'watch never registered'
            time.sleep(0.01)

    def collect(self):
        """Record the outcomes of the background watches, in start order."""
        for label, thread, box in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive(), '%s never returned' % label
            if 'error' in box:
                self.outcomes.append((label, self.error(box['error'])))
            else:
                self.outcomes.append((label, self.result(box['result'])))
        self._threads = []
        self._watch_base = None


def _fake_side(prefix, real_client, history_size=1000, **kwargs):
    # The fake plays the same etcd release as the server it is held to.
    clock = FakeClock()
    client = FakeEtcdClient(clock=clock, history_size=history_size,
                            etcd_version=real_client.version)
    return Side(client, prefix, clock=clock, **kwargs)


def _compare(fake, real, context=''):
    for i, (f, r) in enumerate(zip(fake.outcomes, real.outcomes)):
        assert f == r, '%sstep %d (%s) differs:\nfake: %r\nreal: %r' % (
            context, i, f[0], f[1], r[1])
    assert len(fake.outcomes) == len(real.outcomes), context


def check(case, client, prefix):
    """Run ``case`` on a fresh fake and on the real etcd; compare."""
    fake = _fake_side(prefix, client)
    case(fake)
    real = Side(client, prefix)
    case(real)
    _compare(fake, real)
    return fake, real


# ------------------------------------------------------------------ cases


def case_keys(t):
    c, p = t.client, t.prefix
    t.do('set new', c.write, p + '/a', 'one')
    t.do('set again', c.write, p + '/a', 'two')
    t.do('get', c.read, p + '/a')
    t.do('get missing', c.read, p + '/nope')
    t.do('get under missing', c.read, p + '/x/y/z')
    t.do('get under file', c.read, p + '/a/b')
    t.do('set under file', c.write, p + '/a/b', 'v')
    t.do('create under file', c.write, p + '/a/b', 'v', prevExist=False)
    t.do('create existing', c.write, p + '/a', 'v', prevExist=False)
    t.do('create new', c.write, p + '/b', 'bee', prevExist=False)
    t.do('update', c.write, p + '/b', 'bee2', prevExist=True)
    t.do('update missing', c.write, p + '/c', 'v', prevExist=True)
    t.do('set no value', c.write, p + '/e', None)
    t.do('set int', c.write, p + '/f', 42)
    t.do('set bytes', c.write, p + '/g', b'bytes')
    t.do('set unicode', c.write, p + '/h', 'caf\u00e9 \u2603')
    t.do('set over dir', c.write, p, 'v')
    t.do('write root', c.write, '/', 'v')
    t.do('delete root', c.delete, '/', recursive=True)
    t.do('cad root', c.delete, '/', prevValue='v')
    t.do('create root', c.write, '/', 'v', prevExist=False)
    t.do('update root', c.write, '/', 'v', prevExist=True)
    t.do('cas root', c.write, '/', 'v', prevValue='x')
    t.do('unclean key', c.read, p + '/./b/')
    t.do('delete', c.delete, p + '/a')
    t.do('delete again', c.delete, p + '/a')
    t.do('delete dir flag on file', c.delete, p + '/b', dir=True)
    t.do('append', c.write, p + '/q', 'first', append=True)
    t.do('append 2', c.write, p + '/q', 'second', append=True)
    t.do('append dir', c.write, p + '/q', None, append=True, dir=True)
    t.do('list appended', c.read, p + '/q', sorted=True)
    t.do('hidden', c.write, p + '/_hidden', 'h')
    t.do('hidden get', c.read, p + '/_hidden')
    t.do('list hides', c.read, p, recursive=True)
    t.do('quorum get', c.read, p + '/e', quorum=True)
    t.note('contains', (p + '/e' in c, p + '/zz' in c))
    t.do('get()', c.get, p + '/f')
    t.do('set()', c.set, p + '/f', 'x')
    t.do('test_and_set', c.test_and_set, p + '/f', 'y', 'x')
    t.do('test_and_set fails', c.test_and_set, p + '/f', 'y', 'x')
    got = c.read(p + '/f')
    got.value = 'z'
    t.do('update(obj)', c.update, got)
    t.do('update(obj) stale', c.update, got)
    popped = c.pop(p + '/f')
    t.note('pop', (popped.key.replace(p, 'P'), popped.value))
    try:
        c.write(p + '/dv', 'v', dir=True)
    except etcd.EtcdException as e:
        t.note('dir with value', (type(e).__name__, str(e)))


def case_directories(t):
    c, p = t.client, t.prefix
    t.do('mkdir', c.write, p + '/d', None, dir=True)
    t.do('mkdir again', c.write, p + '/d', None, dir=True)
    t.do('create dir again', c.write, p + '/d', None, dir=True,
         prevExist=False)
    t.do('deep set', c.write, p + '/d/e/f/g', 'deep')
    t.do('implicit parent', c.read, p + '/d/e')
    t.do('another', c.write, p + '/d/x', 'x')
    t.do('empty dir', c.write, p + '/d/empty', None, dir=True)
    t.do('hidden in dir', c.write, p + '/d/_h', 'h')
    t.do('list', c.read, p + '/d')
    t.do('list sorted', c.read, p + '/d', sorted=True)
    t.do('list recursive', c.read, p + '/d', recursive=True)
    t.do('list recursive sorted', c.read, p + '/d', recursive=True,
         sorted=True)
    t.do('read empty dir', c.read, p + '/d/empty', recursive=True)
    t.do('delete dir plain', c.delete, p + '/d/empty')
    t.do('delete full dir', c.delete, p + '/d', dir=True)
    t.do('delete empty dir', c.delete, p + '/d/empty', dir=True)
    t.do('hidden only', c.write, p + '/d/hd/_only', 'h')
    t.do('list hidden only', c.read, p + '/d/hd')
    t.do('delete hidden-only dir', c.delete, p + '/d/hd', dir=True)
    t.do('cas dir', c.write, p + '/d', 'v', prevValue='x')
    t.do('cad dir', c.delete, p + '/d', prevValue='x')
    t.do('update dir', c.write, p + '/d', None, dir=True, prevExist=True)
    t.do('update dir ttl', c.write, p + '/d', None, dir=True,
         prevExist=True, ttl=100)
    t.do('update dir value', c.write, p + '/d', 'v', prevExist=True)
    t.do('dir over file', c.write, p + '/d/x', None, dir=True)
    before = t.do('mark', c.write, p + '/mark', 'm')
    t.do('delete recursive', c.delete, p + '/d', recursive=True)
    t.do('gone', c.read, p + '/d/e/f/g')
    # Watches from before the delete: the descendants hear of it (as does
    # a key merely sharing the directory's name as a string prefix).
    since = before.modifiedIndex + 1
    t.do('watch child', c.watch, p + '/d/e/f/g', index=since, timeout=WAIT)
    t.do('watch missing child', c.watch, p + '/d/none', index=since,
         timeout=WAIT)
    t.do('watch string prefix', c.watch, p + '/dx', index=since,
         timeout=WAIT)
    t.do('watch dir', c.watch, p + '/d', index=since, timeout=WAIT)
    t.do('watch parent recursive', c.watch, p, index=since,
         recursive=True, timeout=WAIT)
    t.do('dir ttl', c.write, p + '/td', None, dir=True, ttl=100)
    t.do('dir ttl read', c.read, p + '/td')


def case_compare(t):
    c, p = t.client, t.prefix
    first = t.do('set', c.write, p + '/k', 'one')
    t.do('cas value', c.write, p + '/k', 'two', prevValue='one')
    t.do('cas value fails', c.write, p + '/k', 'three', prevValue='one')
    t.do('cas index fails', c.write, p + '/k', 'three',
         prevIndex=first.modifiedIndex)
    t.do('cas both fail', c.write, p + '/k', 'three', prevValue='one',
         prevIndex=first.modifiedIndex)
    now = c.read(p + '/k').modifiedIndex
    t.do('cas index', c.write, p + '/k', 'three', prevIndex=now)
    t.do('cas both', c.write, p + '/k', 'four', prevValue='three',
         prevIndex=now + 1)
    t.do('cas missing', c.write, p + '/nope', 'v', prevValue='x')
    t.do('cas empty prevValue', c.write, p + '/k', 'v', prevValue='')
    t.do('cas None prevValue', c.write, p + '/k', 'v', prevValue=None)
    t.do('cas bad prevIndex', c.write, p + '/k', 'v', prevIndex='abc')
    t.do('cas prevIndex 0', c.write, p + '/k', 'five', prevIndex=0)
    t.do('bad prevExist', c.write, p + '/k', 'v', prevExist=None)
    t.do('prevExist and prevValue', c.write, p + '/k', 'six',
         prevExist=True, prevValue='five')
    t.do('create ignores prevValue', c.write, p + '/n', 'new',
         prevExist=False, prevValue='whatever')
    t.do('cad value fails', c.delete, p + '/k', prevValue='one')
    t.do('cad index fails', c.delete, p + '/k',
         prevIndex=first.modifiedIndex)
    t.do('cad value', c.delete, p + '/k', prevValue='six')
    t.do('cad missing', c.delete, p + '/k', prevValue='six')
    made = t.do('set again', c.write, p + '/k', 'seven')
    t.do('cad index', c.delete, p + '/k', prevIndex=made.modifiedIndex)
    t.do('cad empty prevValue', c.delete, p + '/n', prevValue='')
    t.do('bad recursive', c.read, p + '/n', recursive='maybe')
    t.do('bad waitIndex', c.read, p + '/n', wait=True, waitIndex='x')


def case_ttl(t):
    c, p = t.client, t.prefix
    made = t.do('ttl set', c.write, p + '/t', 'v', ttl=100)
    t.note('ttl value', made.ttl)
    t.do('ttl read', c.read, p + '/t')
    t.do('bad ttl', c.write, p + '/t', 'v', ttl=-1)
    t.do('text ttl', c.write, p + '/t', 'v', ttl='soon')
    t.do('empty ttl', c.write, p + '/t2', 'v', ttl='')
    t.do('refresh', c.refresh, p + '/t', ttl=200)
    t.do('after refresh', c.read, p + '/t')
    t.do('refresh missing', c.refresh, p + '/nope', ttl=10)
    t.do('refresh with value', c.write, p + '/t', 'x', ttl=10,
         refresh=True, prevExist=True)
    t.do('refresh no ttl', c.write, p + '/t', None, refresh=True,
         prevExist=True)
    t.do('refresh by set', c.write, p + '/t', None, ttl=300, refresh=True)
    t.do('refresh by cas', c.write, p + '/t', None, ttl=300, refresh=True,
         prevExist=True, prevValue='v')
    t.do('refresh by cas fails', c.write, p + '/t', None, ttl=300,
         refresh=True, prevExist=True, prevValue='nope')
    t.do('refresh false', c.write, p + '/t', 'w', ttl=300, refresh=False)
    t.do('update drops ttl', c.write, p + '/t', 'u', prevExist=True)
    t.do('cas keeps no ttl', c.write, p + '/t', 'c', prevValue='u')
    t.do('cas adds ttl', c.write, p + '/t', 'd', prevValue='c', ttl=50)
    t.do('read', c.read, p + '/t')
    t.do('create with ttl', c.write, p + '/t3', 'v', ttl=30,
         prevExist=False)
    t.do('list', c.read, p, recursive=True)
    # A watch passes over refreshes to the next real change.
    start = c.read(p + '/t').modifiedIndex
    t.do('refresh again', c.refresh, p + '/t', ttl=100)
    t.do('change', c.write, p + '/t', 'changed')
    t.do('watch skips refresh', c.watch, p + '/t', index=start + 1,
         timeout=WAIT)


def case_expire(t):
    c, p = t.client, t.prefix
    key = t.do('short ttl', c.write, p + '/k', 'v', ttl=1)
    t.do('dir ttl', c.write, p + '/d', None, dir=True, ttl=1)
    t.do('child', c.write, p + '/d/child', 'c')
    t.do('permanent', c.write, p + '/stay', 's')
    t.expire(2, p + '/d', key.modifiedIndex + 1)
    t.do('watch expire', c.watch, p + '/k', index=key.modifiedIndex + 1,
         timeout=WAIT)
    t.do('watch dir expire', c.watch, p + '/d', index=key.modifiedIndex + 2,
         timeout=WAIT)
    t.do('watch child expire', c.watch, p + '/d/child',
         index=key.modifiedIndex + 4, timeout=WAIT)
    t.do('expired', c.read, p + '/k')
    t.do('child expired', c.read, p + '/d/child')
    t.do('list', c.read, p, recursive=True)


def case_queue(t):
    """What a lock's queue uses (etcdwatch.lock).

    In-order keys with a TTL, a sorted listing, a TTL refresh by value,
    compare-and-delete, the watch of one key for its delete or expiry, and
    the backend's create_unique / read_queue on top of them.
    """
    c, p = t.client, t.prefix
    q = p + '/queue'
    t.do('empty queue', c.read, q, sorted=True)
    first = t.do('queue first', c.write, q, 'a', append=True, ttl=1)
    second = t.do('queue second', c.write, q, 'b', append=True, ttl=100)
    third = t.do('queue third', c.write, q, 'c', append=True, ttl=100)
    t.do('list queue', c.read, q, sorted=True)
    t.do('refresh second', c.write, second.key, None, ttl=100,
         refresh=True, prevExist=True, prevValue='b')
    t.do('refresh not ours', c.write, third.key, None, ttl=100,
         refresh=True, prevExist=True, prevValue='x')
    t.do('release not ours', c.delete, third.key, prevValue='x')
    t.do('release third', c.delete, third.key, prevValue='c')
    t.do('watch released', c.watch, third.key,
         index=third.modifiedIndex + 1, timeout=WAIT)
    t.expire(2, first.key, first.modifiedIndex + 1)
    t.do('watch expired', c.watch, first.key,
         index=first.modifiedIndex + 1, timeout=WAIT)
    t.do('list after', c.read, q, sorted=True)
    backend = v2.V2Backend(c)
    key, index = backend.create_unique(q, 'd', 100)
    queue = backend.read_queue(q)
    t.note('backend queue', (
        t.text(key), t.index(index), t.index(queue.index),
        [(t.text(e.key), e.value, t.index(e.created_index))
         for e in queue.entries]))
    t.note('backend refresh', (backend.refresh(key, 'd', 100),
                               backend.refresh(key, 'x', 100)))
    t.note('backend delete', (backend.delete_if(key, 'x'),
                              backend.delete_if(key, 'd')))
    empty = backend.read_queue(p + '/none')
    t.note('backend no queue', (t.index(empty.index), empty.entries))


def case_watch_history(t):
    c, p = t.client, t.prefix
    first = t.do('a1', c.write, p + '/a', '1')
    t.do('b1', c.write, p + '/dir/b', '1')
    t.do('hidden', c.write, p + '/_h', '1')
    t.do('hidden in dir', c.write, p + '/dir/_h2', '1')
    t.do('a2', c.write, p + '/a', '2')
    t.do('del b', c.delete, p + '/dir/b')
    t.do('cas a', c.write, p + '/a', '3', prevValue='2')
    t.do('cad a', c.delete, p + '/a', prevValue='3')
    i = first.modifiedIndex
    for delta in range(0, 8):
        t.do('watch a from %d' % delta, c.watch, p + '/a', index=i + delta,
             timeout=WAIT)
    for delta in (0, 1, 2, 3, 5):
        t.do('watch prefix from %d' % delta, c.watch, p, index=i + delta,
             recursive=True, timeout=WAIT)
        t.do('watch dir from %d' % delta, c.watch, p + '/dir',
             index=i + delta, recursive=True, timeout=WAIT)
    t.do('watch dir itself', c.watch, p + '/dir', index=i, timeout=0.5)
    t.do('read waitIndex', c.read, p + '/a', wait=True, waitIndex=i + 4,
         timeout=WAIT)
    t.do('read wait', c.read, p + '/_h', wait=True, waitIndex=i,
         recursive=True, timeout=WAIT)


def case_watch_live(t):
    c, p = t.client, t.prefix
    t.do('setup', c.write, p + '/d/x', 'x')
    t.do('setup 2', c.write, p + '/d/sub/y', 'y')
    t.background('key', c.watch, p + '/k', timeout=WAIT)
    t.background('prefix', c.watch, p, recursive=True, timeout=WAIT)
    t.background('dir plain', c.watch, p + '/d', timeout=WAIT)
    t.background('child', c.watch, p + '/d/x', timeout=WAIT)
    t.background('subdir', c.watch, p + '/d/sub', timeout=WAIT)
    t.background('missing child', c.watch, p + '/d/none', timeout=WAIT)
    t.background('string prefix', c.watch, p + '/dx', timeout=WAIT)
    t.background('hidden', c.watch, p + '/_h', timeout=WAIT)
    t.wait_blocked()
    t.do('hidden write', c.write, p + '/_h', 'h')
    t.do('hidden deep', c.write, p + '/x/_h/y', 'h')
    t.do('key write', c.write, p + '/k', 'k')
    t.do('delete dir', c.delete, p + '/d', recursive=True)
    t.do('wake missing', c.write, p + '/d/none', 'n')
    t.do('wake prefix', c.write, p + '/dx', 'n')
    t.collect()
    # The index a watch starts from, and its future.
    now = c.read(p).etcd_index
    t.background('future', c.watch, p + '/k', index=now + 3, timeout=WAIT)
    t.background('t', c.watch, p + '/t', timeout=WAIT)
    t.wait_blocked()
    t.do('ttl key', c.write, p + '/k', 'k2')
    t.do('other', c.write, p + '/t', 't', ttl=100)
    t.do('refresh', c.refresh, p + '/t', ttl=100)
    t.do('k3', c.write, p + '/k', 'k3')
    t.collect()
    t.background('refresh', c.watch, p + '/t', timeout=WAIT)
    t.wait_blocked()
    t.do('refresh 2', c.refresh, p + '/t', ttl=100)
    t.do('cas refresh', c.write, p + '/t', None, ttl=100, refresh=True,
         prevExist=True, prevValue='t')
    t.do('change', c.write, p + '/t', 'u')
    t.collect()
    made = t.do('short ttl', c.write, p + '/e', 'short', ttl=1)
    t.background('expire', c.watch, p + '/e', index=made.modifiedIndex + 1,
                 timeout=WAIT)
    t.background('expire parent', c.watch, p, recursive=True,
                 index=made.modifiedIndex + 1, timeout=WAIT)
    t.wait_blocked()
    t.expire(2)
    t.collect()


def case_timeouts(t):
    c, p = t.client, t.prefix
    t.do('watch times out', c.watch, p + '/k', timeout=0.3)
    t.do('read wait times out', c.read, p + '/k', wait=True, timeout=0.3)


def case_quorum_reads(t):
    """Quorum reads, V2Backend.check_current's missing key included.

    Its "not found" (or "not a directory") must carry etcd's index.
    """
    c, p = t.client, t.prefix
    t.do('file', c.write, p + '/f', 'v')
    t.do('dir', c.write, p + '/d/x', 'x')
    t.do('hidden', c.write, p + '/_h', 'h')
    t.do('quorum missing', c.read, p + '/nope', quorum=True)
    t.do('quorum under missing', c.read, p + '/nope/x/y', quorum=True)
    t.do('quorum under file', c.read, p + '/f/_q', quorum=True)
    t.do('quorum hidden', c.read, p + '/_h', quorum=True)
    t.do('quorum dir', c.read, p + '/d', quorum=True)
    t.do('quorum recursive', c.read, p, recursive=True, quorum=True)
    t.do('quorum check key', c.read, p + '/d/' + v2._QUORUM_KEY,
         quorum=True)
    t.do('bad quorum', c.read, p + '/f', quorum='maybe')
    backend = v2.V2Backend(c)
    t.note('check_current', [t.index(backend.check_current(path, 0))
                             for path in (p, p + '/d', p + '/f', '/')])


def case_two_watches(t):
    """Two blocked watches on one key both see the same write."""
    c, p = t.client, t.prefix
    t.background('one', c.watch, p + '/k', timeout=WAIT)
    t.background('two', c.watch, p + '/k', recursive=True, timeout=WAIT)
    t.wait_blocked()
    t.do('write', c.write, p + '/k', 'v')
    t.collect()


@pytest.mark.parametrize('case', [
    case_keys, case_directories, case_compare, case_ttl, case_expire,
    case_watch_history, case_watch_live, case_timeouts,
    case_two_watches, case_quorum_reads, case_queue,
], ids=lambda case: case.__name__[5:])
def test_case(case, etcd_client, etcd_prefix):
    check(case, etcd_client, etcd_prefix)


def test_history_cleared_boundary(etcd_client, etcd_prefix):
    """A watch can look back exactly 1000 events, no further."""
    def case(t):
        c, p = t.client, t.prefix
        for i in range(1005):
            c.write(p + '/k%d' % (i % 7), str(i))
        now = c.read(p).etcd_index
        for back in (0, 998, 999, 1000, 1001):
            t.do('watch %d back' % back, c.watch, p, index=now - back,
                 recursive=True, timeout=WAIT)
    check(case, etcd_client, etcd_prefix)


# ------------------------------------------------------ randomized mix

KEYS = ('/a', '/b', '/d/x', '/d/y', '/d/e/z', '/_h', '/d/_h')
DIRS = ('/d', '/d/e', '/n')
VALUES = ('v0', 'v1', 'v2', 'v3')
SEEDS = (1, 7, 42, 1234, 2024, 99991)


def _random_ops(rng, count):
    ops = []
    expire_at = rng.randrange(count)
    for n in range(count):
        if n == expire_at:
            ops.append(('expire',))
        kind = rng.choice((
            'set', 'set', 'create', 'update', 'cas_value', 'cas_index',
            'cad_value', 'cad_index', 'delete', 'delete_dir', 'rdelete',
            'mkdir', 'set_dir', 'read', 'rread', 'watch', 'watch', 'ttl',
            'refresh', 'refresh_cas', 'append'))
        ops.append((kind, rng.choice(KEYS), rng.choice(DIRS),
                    rng.choice(VALUES), rng.choice(VALUES), rng.random(),
                    rng.random() < 0.5))
    return ops


def _apply(t, op, n):
    c, p = t.client, t.prefix
    if op[0] == 'expire':
        made = t.do('%d expire write' % n, c.write, p + '/tmp', 'x', ttl=1)
        if made is not None:
            t.expire(2, p + '/tmp', made.modifiedIndex + 1)
            t.do('%d expire watch' % n, c.watch, p + '/tmp',
                 index=made.modifiedIndex + 1, timeout=WAIT)
        return
    kind, key, dir_, value, other, fraction, flag = op
    key, dir_ = p + key, p + dir_
    label = '%d %s' % (n, kind)
    past = (t.rel(t.indexes[int(fraction * len(t.indexes))])
            if t.indexes else t.rel(1))
    # Half the compares use the key's index as last seen: they may succeed.
    guess = t.modified.get(key, past) if fraction < 0.5 else past
    if kind == 'set':
        t.do(label, c.write, key, value)
    elif kind == 'create':
        t.do(label, c.write, key, value, prevExist=False)
    elif kind == 'update':
        t.do(label, c.write, key, value, prevExist=True)
    elif kind == 'cas_value':
        t.do(label, c.write, key, value, prevValue=other)
    elif kind == 'cas_index':
        t.do(label, c.write, key, value, prevIndex=guess)
    elif kind == 'cad_value':
        t.do(label, c.delete, key, prevValue=other)
    elif kind == 'cad_index':
        t.do(label, c.delete, key, prevIndex=guess)
    elif kind == 'delete':
        t.do(label, c.delete, key)
    elif kind == 'delete_dir':
        t.do(label, c.delete, dir_, dir=True)
    elif kind == 'rdelete':
        t.do(label, c.delete, dir_, recursive=True)
    elif kind == 'mkdir':
        t.do(label, c.write, dir_, None, dir=True)
    elif kind == 'read':
        t.do(label, c.read, rng_pick(flag, key, dir_))
    elif kind == 'rread':
        t.do(label, c.read, rng_pick(flag, dir_, p), recursive=True,
             sorted=True)
    elif kind == 'watch':
        target = rng_pick(flag, key, rng_pick(fraction < 0.5, dir_, p))
        t.do(label, c.watch, target, index=past, recursive=not flag,
             timeout=t.watch_timeouts.pop(0))
        if t.outcomes[-1][1].get('error') == 'EtcdWatchTimedOut':
            t.timed_out.append(n)
    elif kind == 'ttl':
        if flag:
            t.do(label, c.write, key, value, ttl=300, prevExist=True)
        else:
            t.do(label, c.write, key, value, ttl=300)
    elif kind == 'refresh':
        t.do(label, c.refresh, key, ttl=300)
    elif kind == 'refresh_cas':
        t.do(label, c.write, key, None, ttl=300, refresh=True,
             prevExist=True, prevValue=other)
    elif kind == 'set_dir':
        t.do(label, c.write, key, None, dir=True)
    elif kind == 'append':
        t.do(label, c.write, dir_, value, append=True)


def rng_pick(flag, a, b):
    return a if flag else b


@pytest.mark.parametrize('seed', SEEDS)
def test_random_mix(seed, etcd_client, etcd_prefix):
    """Random operations: the fake and etcd agree step by step."""
    ops = _random_ops(random.Random(seed), 120)
    watches = sum(1 for op in ops if op[0] == 'watch')
    # The fake runs first with short watch timeouts; etcd then gets a
    # long timeout where the fake found an event (it must find it too)
    # and a short one where the fake blocked (it must block too).
    fake = _fake_side(etcd_prefix, etcd_client,
                      watch_timeouts=[0.05] * watches)
    for n, op in enumerate(ops):
        _apply(fake, op, n)
    timeouts = [1.0 if n in fake.timed_out else WAIT
                for n, op in enumerate(ops) if op[0] == 'watch']
    real = Side(etcd_client, etcd_prefix, watch_timeouts=timeouts)
    for n, op in enumerate(ops):
        _apply(real, op, n)
    _compare(fake, real, 'seed %d: ' % seed)
