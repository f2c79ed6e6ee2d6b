"""The asyncio etcd v3 backend, over an AsyncEtcd3Client (httpx).

The asyncio transport of the v3 rules in :mod:`etcdwatch.backends.v3proto`,
beside the threaded one (:mod:`etcdwatch.backends.v3`): the same requests,
keys, leases, cursors and error meanings, so a sync and an async elector on
one election interoperate, and a watch behaves the same on both.  Only the
waiting differs: ``await`` instead of sockets and selectors, through
:class:`~etcdwatch.aio.client.AsyncEtcd3Client` (the ``aio`` extra).
"""

import asyncio

from etcdwatch.backends import base
from etcdwatch.backends import v3auth
from etcdwatch.backends import v3proto
from etcdwatch import exceptions

__all__ = ['AsyncV3Backend']

# For clients without credentials of their own (never authenticates).
_NO_AUTH = v3auth.Auth()


async def _acquire(lock, timeout):
    """Acquire an asyncio lock within ``timeout`` s (None: no limit).

    True if acquired.  Cancelled or out of time, it never leaves the lock
    held.
    """
    if timeout is None or not (lock.locked() or getattr(
            lock, '_waiters', None)):
        # Free and nobody queued (the usual case): taken without waiting.
        await lock.acquire()
        return True
    waiter = asyncio.ensure_future(lock.acquire())
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, timeout))
    except BaseException:
        _abandon(waiter, lock)
        raise
    if waiter.done():
        return True
    _abandon(waiter, lock)
    return False


def _abandon(waiter, lock):
    """Stop waiting for ``lock``; if ``waiter`` got it anyway, release it."""
    waiter.cancel()
    waiter.add_done_callback(lambda w: w.cancelled() or lock.release())


class _Cursor(v3proto.Cursor):
    """A :class:`~etcdwatch.backends.v3proto.Cursor` with its stream.

    ``lock``: held by the one watch call using it; ``stream``: the
    :class:`~etcdwatch.aio.client.MessageStream` open for it, or None.
    """

    def __init__(self, key, range_end, start):
        self.lock = asyncio.Lock()
        self.stream = None
        super(_Cursor, self).__init__(key, range_end, start)

    async def close_stream(self):
        """Detach the stream, then close it (even if cancelled meanwhile)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.aclose()

    def release(self, timeout, now):
        """End a watch call that took ``timeout``: note the stream's use."""
        if self.stream is not None:
            self.stream.last_used = now
            self.stream.timeout = timeout
        self.lock.release()


#: Seconds for which a client's quorum read answers for all its watchers.
SHARED_CHECK_AGE = 1.0


class AsyncV3Backend(base.AsyncBackend):
    """:class:`~etcdwatch.backends.base.AsyncBackend` for etcd's v3 API.

    Behaves as :class:`~etcdwatch.backends.v3.V3Backend` (read it for the
    leases, streams, progress notifications, ``hasleader``, compaction,
    rewound and replaced clusters), with an
    :class:`~etcdwatch.aio.client.AsyncEtcd3Client`:

    - requests other than watches take at most the client's ``timeout``,
      :meth:`check_current` at most
      :data:`~etcdwatch.backends.base.CHECK_TIMEOUT`;
    - a member found unavailable moves the client to the next one;
    - a watch stream stays open across calls; a call that returns None at
      its deadline, or is cancelled, leaves the stream and its pending read
      as they are, and the next call continues them;
    - :meth:`aclose` closes every stream (a watch waiting in another task
      returns None at once); a stream left idle for twice its last call's
      timeout (plus a second) is closed by the next call.

    Neither closes the client, which its owner closes.  One event loop.
    """

    name = 'v3'
    catchup_min_lag = v3proto.CATCHUP_MIN_LAG
    catchup_tree_fraction = v3proto.CATCHUP_TREE_FRACTION

    def __init__(self, client):
        super(AsyncV3Backend, self).__init__(client)
        self.timeout = client.timeout
        self._cursors = {}
        # (key, value) -> the lease we bound the key to, to save a read on
        # each refresh.  Always checked against the key itself.
        self._leases = {}
        self._epochs = v3proto.ClusterEpochs()

    # -- plumbing -----------------------------------------------------------

    async def _call(self, path, payload, what, timeout=None):
        """POST one request; the answer's JSON (its cluster ID noted)."""
        await self._reap_idle()
        body = await self.client.post(path, payload, what=what,
                                      timeout=timeout)
        self._epochs.observe(body)
        return body

    async def _attempt(self, request):
        try:
            return await self._call(*request), None
        except exceptions.BackendError as e:
            return None, e

    async def _run(self, operation):
        """Run a :mod:`~etcdwatch.backends.v3proto` operation; its result."""
        steps = v3proto.Steps(operation)
        request = steps.start()
        while request is not None:
            request = steps.resume(*await self._attempt(request))
        return steps.result

    # -- reads ------------------------------------------------------------

    async def read_tree(self, path):
        # The watch of this tree must not continue a half-returned index
        # that this snapshot already covers.
        await self._forget_cursor(v3proto.tree_ident(path))
        return await self._run(v3proto.read_tree(path, self._epochs))

    async def read_key(self, key):
        return await self._run(v3proto.read_key(key, self._epochs))

    async def check_current(self, path, index):
        """As :meth:`Backend.check_current`, shared by a client's watchers.

        A thousand watchers on one client each check once per silent
        heartbeat; a quorum read of the same member that answered at or
        above ``index`` less than :data:`SHARED_CHECK_AGE` seconds ago
        proves the same, so it is reused rather than asked again.
        """
        loop = asyncio.get_running_loop()
        url = self.client.base_url
        last = getattr(self.client, '_etcdwatch_last_check', None)
        if last is not None and last[1] == url and last[2] >= index and (
                loop.time() - last[0] < SHARED_CHECK_AGE):
            return last[2]
        current = await self._run(v3proto.check_current(path, index,
                                                        self._epochs))
        self.client._etcdwatch_last_check = (loop.time(), url, current)
        return current

    # -- election ---------------------------------------------------------

    async def create(self, key, value, ttl):
        return await self._run(v3proto.create(self._leases, key, value, ttl))

    async def refresh(self, key, value, ttl):
        return await self._run(v3proto.refresh(self._leases, key, value,
                                               ttl))

    async def delete_if(self, key, value):
        return await self._run(v3proto.delete_if(self._leases, key, value))

    async def replace(self, key, old, new, ttl):
        return await self._run(v3proto.replace(self._leases, key, old, new))

    async def create_unique(self, prefix, value, ttl):
        return await self._run(v3proto.create_unique(self._leases, prefix,
                                                     value, ttl))

    async def read_queue(self, prefix):
        return await self._run(v3proto.read_queue(prefix))

    # -- watches ----------------------------------------------------------

    async def watch_tree(self, path, from_index, timeout):
        return await self._watch(path, v3proto.tree_ident(path), from_index,
                                 timeout)

    async def watch_tree_events(self, path, from_index, timeout):
        """Every event at hand: :meth:`V3Backend.watch_tree_events`."""
        return await self._watch(path, v3proto.tree_ident(path), from_index,
                                 timeout, whole=True)

    async def watch_key(self, key, from_index, timeout):
        return await self._watch(key, v3proto.key_ident(key), from_index,
                                 timeout)

    async def _watch(self, path, ident, from_index, timeout, whole=False):
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cursor = await self._cursor(ident, from_index)
        if not await _acquire(cursor.lock, timeout):
            return None
        what = 'watch %s' % path
        refused = False
        auth = getattr(self.client, 'auth', None) or _NO_AUTH
        try:
            if cursor.position(from_index):
                await cursor.close_stream()
            self._epochs.check(ident, what)
            while True:
                stream = cursor.stream
                ready = cursor.ready(whole, whole and stream is not None and
                                     stream.has_message())
                if ready is not None:
                    return ready
                # The token of a stream not yet open (refused before it
                # began: not seen on etcd 3.5) is the current one.
                generation = auth.generation
                try:
                    message = await self._next_message(path, cursor,
                                                       deadline, timeout)
                    if message is None:
                        # Events at hand are not held back.
                        return cursor.ready(whole)
                    generation = getattr(cursor.stream, 'auth_generation',
                                         0)
                    await self._take(cursor, message, what)
                except v3auth.TokenRejected as e:
                    # A new watch refused for want of a token or of a
                    # permission (etcd cannot tell which): once more with
                    # a new token, then EtcdPermissionDenied.
                    if refused or not auth.enabled:
                        raise auth.give_up(e) from e
                    refused = True
                    auth.rejected(generation)
                    continue
                except exceptions.BackendError as e:
                    if cursor.events and not isinstance(
                            e, exceptions.ClusterRewound):
                        # A message read only to join the events at hand
                        # failed (its stream is closed): they come back
                        # now; the next call meets the failure again.
                        return cursor.ready(whole)
                    raise
                self._epochs.check(ident, what)
        except exceptions.ClusterRewound:
            # Its positions mean nothing now.
            if self._cursors.get(ident) is cursor:
                del self._cursors[ident]
            await cursor.close_stream()
            raise
        finally:
            cursor.release(timeout, loop.time())

    async def _take(self, cursor, message, what):
        """Fold a message into the cursor, whole; on error, drop the stream.

        The next stream starts after the last revision taken; a member
        found unavailable (no leader) is left for the next one.
        """
        stream = cursor.stream
        try:
            v3proto.take(cursor, self._epochs, message, what)
        except exceptions.BackendError as e:
            if isinstance(e, exceptions.EtcdUnavailable):
                self.client.failover(stream.url)
            await cursor.close_stream()
            raise

    async def _next_message(self, path, cursor, deadline, timeout):
        """The next message for the cursor, opening a stream if none is.

        None when ``deadline`` passes first, or the stream was aborted.
        """
        what = 'watch %s' % path
        if cursor.stream is None:
            remaining = None if deadline is None else (
                deadline - asyncio.get_running_loop().time())
            if remaining is not None and remaining <= 0:
                return None
            cursor.stream = await self.client.open_stream(
                'watch', cursor.create_request(), what=what, wait=remaining,
                headers=v3proto.WATCH_HEADERS)
            if cursor.stream is None:
                return None
        stream = cursor.stream
        try:
            with self.client.translate(what, stream=stream):
                try:
                    message = await stream.next_message(deadline)
                except v3proto.StreamEnded:
                    raise exceptions.EtcdUnavailable(
                        '%s: etcd ended the stream' % what)
        except exceptions.BackendError:
            await cursor.close_stream()
            if stream.aborted:
                return None
            raise
        if stream.aborted:
            await cursor.close_stream()
            return None
        return message

    async def _cursor(self, ident, from_index):
        await self._reap_idle(keep=ident)
        cursor = self._cursors.get(ident)
        if cursor is None:
            cursor = self._cursors[ident] = _Cursor(*ident, from_index)
        return cursor

    async def _forget_cursor(self, ident):
        cursor = self._cursors.pop(ident, None)
        if cursor is not None:
            await self._close_cursor_stream(cursor)

    @staticmethod
    async def _close_cursor_stream(cursor):
        stream = cursor.stream
        if stream is None:
            return
        if cursor.lock.locked():
            # A watch is using it: it returns None and closes the stream.
            stream.abort()
        else:
            await cursor.close_stream()

    async def _reap_idle(self, keep=None):
        # A stream nobody reads (say, a follower's that won and now leads)
        # would hold a connection and a watch on etcd for nothing.
        now = asyncio.get_running_loop().time()
        for ident, cursor in list(self._cursors.items()):
            stream = cursor.stream
            if (ident == keep or stream is None or stream.timeout is None or
                    cursor.lock.locked() or
                    now - stream.last_used <= 2 * stream.timeout + 1):
                continue
            await cursor.close_stream()

    async def aclose(self):
        """Close every watch stream now; never raises.

        A watch waiting in another task returns None at once.  Events
        already received are kept, so a later watch continues exactly; the
        backend stays usable.  The client stays open.
        """
        for cursor in list(self._cursors.values()):
            await self._close_cursor_stream(cursor)

    def open_streams(self):
        """How many watch streams are open (for tests and stats)."""
        return sum(1 for c in self._cursors.values() if c.stream is not None)
