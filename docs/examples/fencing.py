"""Fencing a stale leader with its token (docs/election.rst, "Fencing")."""

import etcd

from etcdwatch import EtcdElection
from etcdwatch import EtcdElectionLost
from etcdwatch.testing import FakeEtcdClient


def raise_fence(client, fence, token):
    """Record ``token`` in ``fence`` unless a newer leader already has.

    Raises EtcdElectionLost for a stale token.  The compare-and-swap makes
    two leaders racing here safe: one of them loses and tries again.
    """
    while True:
        try:
            current = int(client.read(fence).value)
        except etcd.EtcdKeyNotFound:
            try:
                client.write(fence, str(token), prevExist=False)
                return
            except etcd.EtcdAlreadyExist:
                continue
        if current > token:
            raise EtcdElectionLost('a newer leader exists (%d > %d)'
                                   % (current, token))
        try:
            client.write(fence, str(token), prevValue=str(current))
            return
        except etcd.EtcdCompareFailed:
            continue


client = FakeEtcdClient()
old = EtcdElection(client, 'svc', '/elections', work_time=5)
old.wait_until_elected()
stale_token = old.fencing_token
raise_fence(client, '/svc/fence', stale_token)

# The old leader stalls, its key goes, and a new leader fences it out.
client.delete(old.master_key)
new = EtcdElection(client, 'svc', '/elections', work_time=5)
new.wait_until_elected()
raise_fence(client, '/svc/fence', new.fencing_token)

try:
    raise_fence(client, '/svc/fence', stale_token)   # the stale leader
    raise AssertionError('a stale leader got through')
except EtcdElectionLost as e:
    print('refused:', e)
new.resign()
