"""Hand over at once when stopped with SIGTERM (docs/guide.rst)."""

import signal
import sys
import time

import etcd3gw

from etcdwatch import EtcdElection


def exit_on_sigterm(signum, frame):
    # Runs in the main thread: unwinds it as Ctrl-C would, so `with` and
    # `finally` blocks run and the leader resigns before the process ends.
    sys.exit(0)


signal.signal(signal.SIGTERM, exit_on_sigterm)

client = etcd3gw.client(host='127.0.0.1', port=2379)
elector = EtcdElection(client, 'nightly-job', '/elections', work_time=30)
with elector.leadership() as term:
    print('leading, fencing token', term.fencing_token, flush=True)
    while True:
        elector.check_in()
        time.sleep(1)                  # one piece of the work
