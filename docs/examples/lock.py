"""A fair lock (docs/lock.rst): workers take turns, in the order they came.

Runs on the in-memory fake; give the same objects an etcd.Client or an
etcd3gw client for a real etcd.
"""

import threading

from etcdwatch.lock import EtcdLock
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()
report = []          # what the shared resource saw: (token, worker)


def worker(number):
    # One EtcdLock per worker (per process, in real life).
    lock = EtcdLock(client, 'nightly-backup', '/locks', ttl=10)
    with lock:
        # The fencing token grows with every holder: pass it along with
        # every write, so the resource can refuse a slower, older holder.
        token = lock.fencing_token
        lock.check_in()            # raises EtcdLockLost if we lost it
        report.append((token, number))


threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()

tokens = [token for token, _worker in report]
assert tokens == sorted(tokens) and len(set(tokens)) == 4

# A bounded wait, and a try that does not wait at all.
first = EtcdLock(client, 'nightly-backup', '/locks', ttl=10)
second = EtcdLock(client, 'nightly-backup', '/locks', ttl=10)
assert first.acquire(timeout=5)
assert not second.acquire(blocking=False)
assert not second.acquire(timeout=0.2)     # gave up: its key is gone
first.release()
assert second.acquire(timeout=5)
second.release()
print(report)
