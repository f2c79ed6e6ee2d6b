"""Elect a leader among workers (docs/guide.rst, "More on elections")."""

import threading

from etcdwatch import EtcdElection
from etcdwatch import EtcdElectionLost
from etcdwatch.testing import FakeEtcdClient

# In production: etcd3gw.client(host='10.0.0.1', port=2379) (v3), or
# python-etcd's etcd.Client(host='10.0.0.1', port=2379) (v2).
client = FakeEtcdClient()

# One elector per worker; the same name and election_path make them rivals.
alice = EtcdElection(client, 'scheduler', '/elections', work_time=5)
bob = EtcdElection(client, 'scheduler', '/elections', work_time=5)

# 1. The simplest form: lead for the length of a block.
with alice.leadership() as term:
    # Each piece of work takes at most work_time; check in between them.
    alice.check_in()                 # raises EtcdElectionLost once lost
    assert bob.leader() == alice.thread_id
# Leaving the block resigned: the key is free at once.
assert alice.leader() is None

# 2. A worker loop that keeps working while it leads, and notices a loss.
done = []


def schedule(elector, stop):
    while not stop.is_set():
        elector.wait_until_elected()          # blocks while another leads
        try:
            # Tag what you write with the token: a later leader's is larger.
            done.append(elector.fencing_token)
            elector.check_in()
            stop.wait(0.01)                   # the rest of the work...
        except EtcdElectionLost:
            continue                          # campaign again
    elector.resign()


stop = threading.Event()
worker = threading.Thread(target=schedule, args=(bob, stop))
worker.start()
while not done:
    stop.wait(0.01)
stop.set()
worker.join()
# Bob's term began after Alice's ended: its fencing token is larger.
assert done[0] > term.fencing_token
assert bob.leader() is None

# 3. Callbacks: on_elected / on_lost receive the Term.
seen = []
carol = EtcdElection(client, 'scheduler', '/elections', work_time=5,
                     on_elected=lambda t: seen.append(('won', t)),
                     on_lost=lambda t: seen.append(('lost', t)))
carol.wait_until_elected()
client.delete(carol.master_key)       # someone removes the key...
try:
    carol.extend_election(5)          # ...and the next renewal finds out
except EtcdElectionLost:
    pass
assert [what for what, _ in seen] == ['won', 'lost']
assert seen[1][1].lost.is_set()
print('ok')
