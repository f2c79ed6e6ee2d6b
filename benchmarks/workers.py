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


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if argv[0] == 'elect':
        elect(*argv[1:])
    elif argv[0] == 'fanout':
        fanout(*argv[1:])
    else:
        raise SystemExit('unknown mode %r' % argv[0])


if __name__ == '__main__':
    main(sys.argv[1:])
