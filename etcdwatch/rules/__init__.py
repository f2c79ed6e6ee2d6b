"""The rules of etcdwatch's recipes, written as plain objects.

Nothing here does I/O, waits, takes a lock or reads a clock it was not
given.  A rule that needs etcd, a user callback or a pause *yields* a
request (:mod:`etcdwatch.rules.requests`) and is sent the answer, so the
same rule runs under the threaded driver (:mod:`etcdwatch.driving`) and
the asyncio one (:mod:`etcdwatch.aio.driving`), after h11's example.

- :mod:`~etcdwatch.rules.requests`: what a rule can ask its driver for.
- :mod:`~etcdwatch.rules.delivery`: the queue of callbacks still owed.
- :mod:`~etcdwatch.rules.mirror`: a prefix's tree kept equal to etcd's.
- :mod:`~etcdwatch.rules.changes`: one report per real change.
- :mod:`~etcdwatch.rules.watcher_base`: what both watchers share.
- :mod:`~etcdwatch.rules.candidacy`: leader election (campaign, keepalive,
  guard, lease timer, observing the leader), and what both elections
  share.
- :mod:`~etcdwatch.rules.membership`: a group member's key kept alive.
"""
