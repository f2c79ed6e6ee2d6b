"""Child processes of the benchmarks; each prints one JSON object a line.

    python -m benchmarks.workers elect IMPL API HOST PORT NAME WORK_TIME
                                       RECOVERY
    python -m benchmarks.workers fanout IMPL HOST PORT ROOT COUNT HEARTBEAT

``elect`` campaigns through API (``v2``: python-etcd, ``v3``: etcd3gw)
with etcdwatch's EtcdElection (IMPL ``etcdwatch``), the seed's algorithm
(``seed``, v2) or the least election code with etcd3gw (``bare``, v3), and
prints {"event": "elected", "t": ...} when it wins; SIGUSR1 makes it
release the election (``clean()``) and print "resigned"; SIGTERM exits
cleanly (atexit handlers release it).

``aio`` (``python -m benchmarks.workers aio IMPL HOST PORT ROOT COUNT``)
follows COUNT prefixes ``ROOT/pNNNN`` (v3) with etcdwatch's asyncio
``AsyncEtcdWatcher`` on one shared ``AsyncEtcd3Client`` (IMPL ``async``),
threaded ``EtcdWatcher`` s, a thread each, on one shared
``FailoverEtcd3Client`` (``threads``), or a bare httpx loop per prefix
(``bare``: a range read, then a streaming POST to /v3/watch, parsing its
JSON lines); COUNT 0 is the baseline process of that IMPL.  It prints
"ready" once all are synced; an input line "count" prints how many events
it received; at end of input it prints them all, with the time.

``fanout`` monkey-patches eventlet first, then follows COUNT nested
prefixes (``ROOT/c``, ``ROOT/c/c``, ...) with etcdwatch watchers or bare
loops (IMPL ``etcdwatch`` or ``bare``), all sharing one python-etcd client
(default pool).  At end of input it prints every event it received, with
the time, and exits.
"""

import sys

if __name__ == '__main__' and sys.argv[1:2] == ['fanout']:
    import eventlet
    eventlet.monkey_patch()

import atexit  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import etcd  # noqa: E402

#: Each level of the fan-out case's nested prefixes.
FAN_LEVEL = 'c'
#: A client's read timeout: longer than any watch, shorter than forever.
READ_TIMEOUT = 120


def say(**fields):
    fields.setdefault('t', time.time())
    sys.stdout.write(json.dumps(fields) + '\n')
    sys.stdout.flush()


def fan_prefix(root, depth):
    """The prefix of fan-out watcher number ``depth - 1`` under ``root``."""
    return root + ('/' + FAN_LEVEL) * depth


# -- elect -----------------------------------------------------------------

class SeedElection(object):
    """The seed's election loop (without eventlet), as it was."""

    def __init__(self, client, name, election_path, work_time,
                 recovery_time):
        self.client = client
        self.thread_id = '%d:%s' % (os.getpid(), time.time())
        self.work_time = int(work_time)
        self.recovery_time = recovery_time
        self.master_key = election_path + '/master_%s' % name
        atexit.register(self.clean)

    def wait_until_elected(self):
        while True:
            try:
                self.client.write(self.master_key, self.thread_id,
                                  prevExist=False, ttl=self.work_time)
                return
            except etcd.EtcdException:
                pass
            try:
                self.client.write(self.master_key, self.thread_id,
                                  prevValue=self.thread_id,
                                  ttl=self.work_time)
                return
            except etcd.EtcdException:
                pass
            try:
                self.client.watch(self.master_key,
                                  timeout=self.recovery_time)
            except etcd.EtcdWatchTimedOut:
                pass
            except etcd.EtcdException:
                time.sleep(self.recovery_time)

    def clean(self):
        try:
            self.client.delete(self.master_key, prevValue=self.thread_id)
        except etcd.EtcdException:
            pass


class BareV3Election(object):
    """The least election code with etcd3gw alone.

    etcd3gw's ``Lock`` creates the key on a new lease in a transaction
    (only if it is absent); the leader renews the lease with a keepalive
    each time it checks in; a follower that lost waits on the key with
    ``watch_once`` (at most ``recovery_time``) and tries again.
    """

    def __init__(self, client, name, work_time, recovery_time):
        self.client = client
        self.lock = client.lock('bench-elections-%s' % name,
                                ttl=max(1, int(work_time)))
        self.recovery_time = recovery_time
        self.held = False
        atexit.register(self.clean)

    def wait_until_elected(self):
        from etcd3gw import exceptions
        while True:
            if self.held and self.lock.refresh() > 0:
                return
            self.held = self.lock.acquire()
            if self.held:
                return
            try:
                self.client.watch_once(self.lock.key,
                                       timeout=self.recovery_time)
            except exceptions.WatchTimedOut:
                pass

    def clean(self):
        if self.held:
            self.held = False
            self.lock.release()


def _elector(impl, client, name, work_time, recovery_time):
    if impl == 'seed':
        return SeedElection(client, name, '/bench/elections', work_time,
                            recovery_time)
    if impl == 'bare':
        return BareV3Election(client, name, work_time, recovery_time)
    import etcdwatch
    return etcdwatch.EtcdElection(client, name, '/bench/elections',
                                  work_time=work_time,
                                  recovery_time=recovery_time)


def elect(impl, api, host, port, name, work_time, recovery_time):
    from benchmarks import apis
    work_time = float(work_time)
    client = apis.connect(api, host, int(port), timeout=READ_TIMEOUT)
    elector = _elector(impl, client, name, work_time, float(recovery_time))
    resign = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: resign.set())
    say(event='campaigning')
    elected = False
    while not resign.is_set():
        elector.wait_until_elected()
        if not elected:
            elected = True
            say(event='elected')
        resign.wait(work_time / 4)
    released = time.time()
    elector.clean()
    say(event='resigned', t=released)
    while True:
        time.sleep(READ_TIMEOUT)


# -- fanout ----------------------------------------------------------------

class _Received(list):
    """(value, time.time()) of every event, in order."""

    def on_event(self, key, value):
        self.append((value, time.time()))


def _etcdwatch_followers(client, prefixes, heartbeat, received):
    import etcdwatch

    class FanWatcher(etcdwatch.EtcdWatcher):
        def do_work(self, action, key, value):
            received.on_event(key, value)

        def do_all_work(self):
            pass

    watchers = [FanWatcher(client, 'fan%d' % number, prefix,
                           heartbeat=heartbeat)
                for number, prefix in enumerate(prefixes)]
    for watcher in watchers:
        eventlet.spawn(watcher.watch_forever)
    return watchers


def _bare_followers(client, prefixes, heartbeat, received):
    from benchmarks import baselines
    stop = threading.Event()
    loops = [baselines.BareFollower(client, prefix, heartbeat,
                                    on_event=received.on_event)
             for prefix in prefixes]
    for loop in loops:
        eventlet.spawn(loop.run, stop)
    return loops


def _wait_for_end_of_input():
    """Block this green thread (only) until stdin is closed."""
    fd = sys.stdin.fileno()
    while True:
        eventlet.hubs.trampoline(fd, read=True)
        if not os.read(fd, 4096):
            return


def fanout(impl, host, port, root, count, heartbeat):
    client = etcd.Client(host=host, port=int(port),
                         read_timeout=READ_TIMEOUT)
    received = _Received()
    prefixes = [fan_prefix(root, depth) for depth in range(1, int(count) + 1)]
    make = _bare_followers if impl == 'bare' else _etcdwatch_followers
    followers = make(client, prefixes, float(heartbeat), received)
    say(event='ready', followers=len(followers))
    _wait_for_end_of_input()
    say(event='received', received=received)
    os._exit(0)


# -- aio -------------------------------------------------------------------

def aio_prefix(root, number):
    """The prefix of the aio case's watcher ``number`` under ``root``."""
    return '%s/p%04d' % (root, number)


def _aio_async(host, port, prefixes, received, ready):
    import asyncio
    from etcdwatch import aio

    class Watcher(aio.AsyncEtcdWatcher):
        def do_work(self, action, key, value):
            received.on_event(key, value)

        def do_all_work(self):
            pass

    async def run():
        client = aio.AsyncEtcd3Client(['%s:%s' % (host, port)],
                                      timeout=READ_TIMEOUT)
        watchers = [Watcher(client, 'aio%d' % number, prefix).start()
                    for number, prefix in enumerate(prefixes)]
        for watcher in watchers:
            if not await watcher.wait_synced(READ_TIMEOUT):
                raise SystemExit('%s: not synced' % watcher.watch_path)
        ready(len(watchers))
        await asyncio.Event().wait()
    asyncio.run(run())


def _aio_threads(host, port, prefixes, received, ready):
    import etcdwatch
    from etcdwatch import v3client

    class Watcher(etcdwatch.EtcdWatcher):
        def do_work(self, action, key, value):
            received.on_event(key, value)

        def do_all_work(self):
            pass

    client = v3client.client(['%s:%s' % (host, port)], timeout=READ_TIMEOUT)
    watchers = [Watcher(client, 'thr%d' % number, prefix)
                for number, prefix in enumerate(prefixes)]
    for watcher in watchers:
        threading.Thread(target=watcher.watch_forever, daemon=True).start()
    for watcher in watchers:
        if not watcher.wait_synced(READ_TIMEOUT):
            raise SystemExit('%s: not synced' % watcher.watch_path)
    ready(len(watchers))
    threading.Event().wait()


def _aio_bare(host, port, prefixes, received, ready):
    """The least asyncio code that follows each prefix through the gateway.

    One httpx client; per prefix a range read (for its revision), then a
    streaming POST to /v3/watch from the next revision, each JSON line
    parsed and its events applied to a dict.  No reconnection, no
    heartbeat, no re-read: what etcdwatch adds is what it costs.
    """
    import asyncio
    import base64
    import httpx

    base = 'http://%s:%s/v3/' % (host, port)

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    def text(value):
        return base64.b64decode(value or '').decode()

    async def follow(http, prefix, synced):
        span = {'key': b64(prefix + '/'), 'range_end': b64(prefix + '0')}
        answer = (await http.post(base + 'kv/range', json=span)).json()
        data = {text(kv['key']): text(kv.get('value'))
                for kv in answer.get('kvs', ())}
        start = int(answer['header']['revision']) + 1
        request = {'create_request': dict(span, start_revision=start)}
        async with http.stream('POST', base + 'watch', json=request) as resp:
            synced.set()
            async for line in resp.aiter_lines():
                for event in json.loads(line).get('result', {}).get(
                        'events', ()):
                    kv = event['kv']
                    key = text(kv['key'])
                    if event.get('type') == 'DELETE':
                        data.pop(key, None)
                    else:
                        value = data[key] = text(kv.get('value'))
                        received.on_event(key, value)

    async def run():
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT, read=None),
            limits=httpx.Limits(max_connections=None,
                                max_keepalive_connections=20),
            trust_env=False)
        synced = [asyncio.Event() for _ in prefixes]
        tasks = [asyncio.ensure_future(follow(http, prefix, event))
                 for prefix, event in zip(prefixes, synced)]
        for event in synced:
            await event.wait()
        ready(len(tasks))
        await asyncio.gather(*tasks)
    asyncio.run(run())


def aio_case(impl, host, port, root, count):
    """Follow COUNT prefixes; answer "count" lines; report at end of input.

    The followers run in a thread of their own (their event loop, or the
    watchers' threads); this thread only reads the input.
    """
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    received = _Received()
    prefixes = [aio_prefix(root, number) for number in range(int(count))]
    run = {'async': _aio_async, 'threads': _aio_threads,
           'bare': _aio_bare}[impl]

    def ready(followers):
        say(event='ready', followers=followers)

    def follow():
        try:
            run(host, port, prefixes, received, ready)
        except BaseException as e:
            say(event='failed', error=repr(e))
            os._exit(1)
    threading.Thread(target=follow, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == 'count':
            say(event='count', n=len(received))
    say(event='received', received=list(received))
    os._exit(0)


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if argv[0] == 'elect':
        elect(*argv[1:])
    elif argv[0] == 'fanout':
        fanout(*argv[1:])
    elif argv[0] == 'aio':
        aio_case(*argv[1:])
    else:
        raise SystemExit('unknown mode %r' % argv[0])


if __name__ == '__main__':
    main(sys.argv[1:])
