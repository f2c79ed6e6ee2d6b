"""Prometheus metrics of every election and watcher (docs/metrics.rst)."""

import prometheus_client

import etcdwatch
from etcdwatch import metrics
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()          # an etcd.Client or etcd3gw client in life
client.write('/ports/p1', 'up')


class Ports(etcdwatch.EtcdChangeWatcher):
    def added(self, key, value):
        pass

    def removed(self, key):
        pass


# Once, at start-up: the global registry now reports on every recipe
# alive in the process, those made later included.
metrics.register()

with Ports(client, 'ports', '/ports', heartbeat=1) as watcher:
    election = etcdwatch.EtcdElection(client, 'nightly', '/elections',
                                      work_time=30)
    with election.leadership():
        # What prometheus_client.start_http_server(9100) would serve.
        text = prometheus_client.generate_latest().decode()
        for line in text.splitlines():
            if line.startswith(('etcdwatch_election_leader',
                                'etcdwatch_watcher_resyncs_total',
                                'etcdwatch_watcher_outage{')):
                print(line)
        assert ('etcdwatch_election_leader{key="/elections/master_nightly",'
                'kind="EtcdElection",name="nightly"} 1.0') in text
        assert ('etcdwatch_watcher_resyncs_total{kind="Ports",name="ports",'
                'prefix="/ports"} 1.0') in text
