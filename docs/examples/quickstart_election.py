"""Quick start: one leader among workers, on a real etcd (docs/guide.rst)."""

import etcd3gw

from etcdwatch import EtcdElection

client = etcd3gw.client(host='127.0.0.1', port=2379)
elector = EtcdElection(client, 'nightly-job', '/elections', work_time=10)
with elector.leadership() as term:     # waits until this worker leads
    print('leading, fencing token', term.fencing_token)
    for step in range(3):              # each piece of work < work_time
        elector.check_in()             # raises EtcdElectionLost once lost
        print('step', step)
# Leaving the block resigned: a waiting worker takes over at once.
