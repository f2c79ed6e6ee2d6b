"""A worker process for the multi-process functional tests.

    python -m tests.functional.worker elect HOST:PORT NAME WORK_TIME RECOVERY
    python -m tests.functional.worker lead HOSTS NAME WORK_TIME RECOVERY UNIT
    python -m tests.functional.worker watch HOST:PORT PREFIX HEARTBEAT
    python -m tests.functional.worker member HOST:PORT GROUP ID VALUE TTL

``--eventlet`` monkey-patches the process first (the OpenStack agent way).
``--asyncio`` runs etcdwatch.aio's recipes on an event loop instead, with
an AsyncEtcd3Client on HOSTS (v3 only; the lines printed are the same).
``--v3`` gives the recipes an etcd3gw client (etcd's v3 API) instead of a
python-etcd one (several HOSTS: an etcdwatch.v3client.FailoverEtcd3Client).
Every line printed is one JSON object, flushed at once:

* elect: {"event": "elected", "id": ..., "t": time.time()} on each new term;
  the worker then checks in every work_time / 4 seconds.
* lead: like elect, but works in units of UNIT seconds and prints
  {"event": "work", "t": ...} for each unit it starts while ``is_elected``
  (t is taken *before* checking), and {"event": "lost"} when it notices the
  loss; {"event": "term_lost", "term": ...} when the election's on_lost
  fires.  HOSTS may list several members (h:p,h:p) for a reconnecting
  client.
* watch: {"event": "synced"} then {"action", "key", "value"} per change.

SIGTERM exits cleanly (atexit handlers run, so an elected worker releases
its key).
"""

import sys

if '--eventlet' in sys.argv:
    import eventlet
    eventlet.monkey_patch()

import asyncio  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import etcd  # noqa: E402

import etcdwatch  # noqa: E402
from etcdwatch import handlers  # noqa: E402


def say(**fields):
    fields.setdefault('t', time.time())
    sys.stdout.write(json.dumps(fields) + '\n')
    sys.stdout.flush()


def client_for(address):
    hosts = [(h, int(p)) for h, p in
             (part.rsplit(':', 1) for part in address.split(','))]
    if '--v3' in sys.argv:
        if len(hosts) == 1:
            import etcd3gw
            return etcd3gw.client(host=hosts[0][0], port=hosts[0][1],
                                  timeout=10)
        from etcdwatch import v3client
        return v3client.client(hosts, timeout=10)
    if len(hosts) == 1:
        return etcd.Client(host=hosts[0][0], port=hosts[0][1],
                           read_timeout=10)
    return etcd.Client(host=tuple(hosts), allow_reconnect=True,
                       read_timeout=10)


def elect(address, name, work_time, recovery_time):
    elector = etcdwatch.EtcdElection(client_for(address), name, '/elections',
                                     work_time=float(work_time),
                                     recovery_time=float(recovery_time))
    term = None
    say(event='campaigning', id=elector.thread_id)
    while True:
        elector.wait_until_elected()
        if elector.fencing_token != term:
            term = elector.fencing_token
            say(event='elected', id=elector.thread_id, term=term)
        time.sleep(float(work_time) / 4)


def base_uri(client):
    """The endpoint a client talks to (python-etcd picks one of several)."""
    uri = getattr(client, 'base_uri', None)
    return uri or '%s://%s:%s' % (client.protocol, client.host, client.port)


def lead(address, name, work_time, recovery_time, unit):
    client = client_for(address)
    elector = etcdwatch.EtcdElection(
        client, name, '/elections', work_time=float(work_time),
        recovery_time=float(recovery_time),
        on_lost=lambda term: say(event='term_lost',
                                 term=term.fencing_token))
    say(event='campaigning', id=elector.thread_id)
    while True:
        elector.wait_until_elected()
        say(event='elected', id=elector.thread_id,
            term=elector.fencing_token, base_uri=base_uri(client))
        while True:
            t = time.time()
            if not elector.is_elected:
                say(event='lost', why='is_elected')
                break
            say(event='work', t=t, term=elector.fencing_token)
            time.sleep(float(unit))
            try:
                elector.check_in()
            except etcdwatch.EtcdElectionLost:
                say(event='lost', why='check_in')
                break


class Reporter(etcdwatch.EtcdChangeWatcher):
    def key_change(self, action, key, value):
        say(action=action, key=key, value=value)


def watch(address, prefix, heartbeat):
    client = client_for(address)
    watcher = Reporter(client, 'reporter', prefix,
                       heartbeat=float(heartbeat))
    say(event='synced', handler=handlers.default_handler().name,
        base_uri=base_uri(client))
    watcher.watch_forever()


# -- the asyncio recipes ------------------------------------------------------

def aio_client_for(address):
    from etcdwatch import aio
    return aio.AsyncEtcd3Client(address.split(','), timeout=10)


async def aio_lead(address, name, work_time, recovery_time, unit):
    from etcdwatch import aio
    client = aio_client_for(address)
    elector = aio.AsyncEtcdElection(
        client, name, '/elections', work_time=float(work_time),
        recovery_time=float(recovery_time),
        on_lost=lambda term: say(event='term_lost',
                                 term=term.fencing_token))
    say(event='campaigning', id=elector.thread_id)
    try:
        while True:
            await elector.campaign()
            say(event='elected', id=elector.thread_id,
                term=elector.fencing_token, base_uri=client.base_url)
            while True:
                t = time.time()
                if not elector.is_elected:
                    say(event='lost', why='is_elected')
                    break
                say(event='work', t=t, term=elector.fencing_token)
                await asyncio.sleep(float(unit))
                try:
                    elector.check_in()
                except etcdwatch.EtcdElectionLost:
                    say(event='lost', why='check_in')
                    break
    finally:
        await elector.aclose()


async def aio_watch(address, prefix, heartbeat):
    from etcdwatch import aio

    class AsyncReporter(aio.AsyncEtcdChangeWatcher):
        def key_change(self, action, key, value):
            say(action=action, key=key, value=value)

    client = aio_client_for(address)
    async with AsyncReporter(client, 'reporter', prefix,
                             heartbeat=float(heartbeat)) as watcher:
        await watcher.wait_synced()
        say(event='synced', handler='asyncio', base_uri=client.base_url)
        await watcher._task


def run_asyncio(mode, *args):
    """Run an asyncio mode; SIGTERM cancels it (so a leader resigns)."""
    async def main():
        task = asyncio.ensure_future(
            {'lead': aio_lead, 'watch': aio_watch}[mode](*args))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM,
                                                      task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
    asyncio.run(main())


def member(address, group_path, member_id, value, ttl):
    """Mode ``member HOST:PORT GROUP_PATH MEMBER_ID VALUE TTL``.

    Keeps an EtcdMembership; prints {"event": "registered", "key": ...,
    "registered": bool} once the constructor returned, then sleeps.
    SIGTERM exits cleanly (the key is deleted at exit).
    """
    from etcdwatch.membership import EtcdMembership
    membership = EtcdMembership(client_for(address), group_path, member_id,
                                value, float(ttl))
    say(event='registered', key=membership.key,
        registered=membership.is_registered)
    while True:
        time.sleep(3600)


def main(argv):
    args = [a for a in argv if not a.startswith('--')]
    if args[0] == 'lock':
        return lock(*args[1:])
    if '--asyncio' in argv:
        run_asyncio(*args)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args[0] == 'elect':
        elect(*args[1:])
    elif args[0] == 'lead':
        lead(*args[1:])
    elif args[0] == 'watch':
        watch(*args[1:])
    elif args[0] == 'member':
        member(*args[1:])
    else:
        raise SystemExit('unknown mode %r' % args[0])


def lock(address, name, ttl, hold, rounds):
    """Mode ``lock HOSTS NAME TTL HOLD ROUNDS`` (``--asyncio``: v3).

    Takes the EtcdLock NAME below /locks ROUNDS times (0: once, then holds
    it for ever), holding it HOLD seconds each time.  Prints
    {"event": "acquired", "t", "token", "key"} once acquire() returned
    (t taken after it) and {"event": "releasing", "t", "held"} before
    release() (t taken before it; ``held`` is is_held then), then
    {"event": "done"}.
    """
    hold, rounds = float(hold), int(rounds)
    if '--asyncio' in sys.argv:
        from etcdwatch.aio.lock import AsyncEtcdLock

        async def run():
            client = aio_client_for(address)
            mutex = AsyncEtcdLock(client, name, '/locks', float(ttl))
            say(event='started', id=mutex.id, handler='asyncio')
            for _ in range(max(rounds, 1)):
                await mutex.acquire()
                say(event='acquired', token=mutex.fencing_token,
                    key=mutex.key)
                if not rounds:
                    await asyncio.sleep(3600)
                await asyncio.sleep(hold)
                say(event='releasing', held=mutex.is_held)
                await mutex.release()
            say(event='done')
            await mutex.aclose()
        asyncio.run(run())
        return
    from etcdwatch.lock import EtcdLock
    mutex = EtcdLock(client_for(address), name, '/locks', float(ttl))
    say(event='started', id=mutex.id, handler=handlers.default_handler().name)
    for _ in range(max(rounds, 1)):
        mutex.acquire()
        say(event='acquired', token=mutex.fencing_token, key=mutex.key)
        if not rounds:
            while True:
                time.sleep(3600)
        time.sleep(hold)
        say(event='releasing', held=mutex.is_held)
        mutex.release()
    say(event='done')


if __name__ == '__main__':
    main(sys.argv[1:])
