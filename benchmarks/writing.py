"""Writing many keys fast: a few processes, each with its own client.

Operations are ``(PUT, key, value)`` or ``(DELETE, key, None)``.  They are
split into shards by key, so that the writes to one key keep their order
while the shards go in parallel.  Each pool writes through one API
(:mod:`benchmarks.apis`) to one etcd.
"""

import concurrent.futures
import multiprocessing
import zlib

from benchmarks import apis

PUT = 'put'
DELETE = 'delete'

#: Processes that write in parallel (etcd batches their fsyncs).
WRITER_PROCESSES = 4

# One client per writer process and API, made on first use.
_clients = {}


def _worker_client(api, host, port):
    if api not in _clients:
        _clients[api] = apis.connect(api, host, port)
    return _clients[api]


def _apply_shard(api, host, port, operations):
    """Run one shard's operations in order; return the last index."""
    client = _worker_client(api, host, port)
    last = 0
    for op, key, value in operations:
        if op == PUT:
            last = apis.put(api, client, key, value)
        else:
            last = apis.delete(api, client, key) or last
    return last


class Writer(object):
    """A pool of writer processes for one API of one etcd server."""

    def __init__(self, api, processes=WRITER_PROCESSES):
        self.api = api.name
        self.host = api.server.host
        self.port = api.server.port
        self.processes = processes
        self._pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context('spawn'))

    def apply(self, operations):
        """Apply every operation; return the highest index written."""
        shards = [[] for _ in range(self.processes)]
        for operation in operations:
            shard = zlib.crc32(operation[1].encode()) % self.processes
            shards[shard].append(operation)
        futures = [self._pool.submit(_apply_shard, self.api, self.host,
                                     self.port, shard)
                   for shard in shards if shard]
        return max([f.result() for f in futures] or [0])

    def put_all(self, items):
        """Write every (key, value) of ``items``."""
        return self.apply([(PUT, key, value) for key, value in items])

    def close(self):
        self._pool.shutdown()
