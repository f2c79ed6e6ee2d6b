"""tooz on etcdwatch: a group, a leader and a lock (docs/tooz.rst).

Starts an etcd of its own (v2 off) so it runs anywhere; in a service the
URL names your etcd members instead.
"""

from tooz import coordination

from etcdwatch.testing import EtcdServer

with EtcdServer(enable_v2=False) as etcd:
    url = 'etcdwatch+http://%s:%d/?timeout=10' % (etcd.host, etcd.port)
    coord = coordination.get_coordinator(url, b'volume-host-1')
    coord.start(start_heart=True)       # heartbeat() in a thread
    try:
        try:
            coord.create_group(b'volume').get()
        except coordination.GroupAlreadyExist:
            pass
        coord.join_group(b'volume', {'backend': 'lvm'}).get()
        print(coord.get_members(b'volume').get())

        elected = []
        coord.watch_elected_as_leader(b'volume', elected.append)
        coord.run_watchers()            # campaigns; calls back if elected
        assert coord.get_leader(b'volume').get() == b'volume-host-1'

        with coord.get_lock(b'volume-42'):
            pass                        # one holder at a time
        lock = coord.get_lock(b'volume-42')
        assert lock.acquire(blocking=5)     # False after 5 s, no exception
        print('fencing token', lock.fencing_token)
        lock.release()
    finally:
        coord.stop()
