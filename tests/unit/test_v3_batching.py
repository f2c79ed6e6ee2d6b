"""A whole-message watch call also takes the messages already received.

``Cursor.ready(whole, more)`` holds the events back while another message
is in the buffer (up to ``v3proto.BATCH_EVENTS``); ``V3Backend._watch``
asks the stream (``has_message()``).  End to end, a gateway of our own
writes the messages onto a socket pair read by the backend's ``_Stream``.
"""

import json
import socket
import time
import types

import pytest

from etcdwatch import backends
from etcdwatch.backends import v3
from etcdwatch.backends import v3proto as proto
from etcdwatch import exceptions
from etcdwatch.testing import FakeEtcd3Server

PATH = '/p'


def _result(revision, *events):
    """A watch result at ``revision``: ``(key, mod_revision)`` puts."""
    return {'header': {'revision': str(revision)}, 'events': [
        {'kv': {'key': proto.b64(key), 'value': proto.b64('v%d' % rev),
                'mod_revision': str(rev)}} for key, rev in events]}


def _revisions(first, count, per=1):
    """A result of ``count`` revisions from ``first``, ``per`` keys each."""
    events = [('%s/k%d.%d' % (PATH, rev, n), rev)
              for rev in range(first, first + count) for n in range(per)]
    return _result(first + count - 1, *events)


# -- the cursor --

def test_the_cap_is_a_thousand_events():
    assert proto.BATCH_EVENTS == 1000


def test_ready_holds_back_while_more_is_received_below_the_cap():
    cursor = proto.Cursor(PATH + '/', PATH + '0', 10)
    cursor.take(_revisions(10, 3), 'w')
    assert cursor.ready(True, True) is None
    # Nothing was given out: the events are all still there.
    cursor.take(_revisions(13, 2), 'w')
    assert cursor.ready(True, True) is None
    events = cursor.ready(True, False)
    assert [e.index for e in events] == [10, 11, 12, 13, 14]
    assert cursor.ready(True, False) is None
    assert cursor.start_revision() == 15


def test_ready_gives_everything_at_or_above_the_cap():
    cursor = proto.Cursor(PATH + '/', PATH + '0', 10)
    cursor.take(_revisions(10, proto.BATCH_EVENTS - 1), 'w')
    assert cursor.ready(True, True) is None
    cursor.take(_revisions(10 + proto.BATCH_EVENTS - 1, 2), 'w')
    # 1,001 events: at the cap, more received or not.
    events = cursor.ready(True, True)
    assert len(events) == proto.BATCH_EVENTS + 1
    assert [e.index for e in events] == list(
        range(10, 11 + proto.BATCH_EVENTS))

    cursor = proto.Cursor(PATH + '/', PATH + '0', 10)
    cursor.take(_revisions(10, proto.BATCH_EVENTS), 'w')
    assert len(cursor.ready(True, True)) == proto.BATCH_EVENTS


def test_ready_one_at_a_time_ignores_more():
    cursor = proto.Cursor(PATH + '/', PATH + '0', 10)
    cursor.take(_revisions(10, 2), 'w')
    assert cursor.ready(False, True).index == 10
    assert [e.index for e in cursor.ready(True, False)] == [11]


# -- end to end: a gateway on a socket --

class _NothingBuffered(object):
    def read1(self, size):
        return b''


def _gateway(backend, start, chunked=False):
    """A socket the test writes the watch stream of ``PATH`` onto.

    The backend's cursor for ``PATH`` stands at ``start`` with a
    ``_Stream`` on the other end, as if it had opened it.
    """
    ours, theirs = socket.socketpair()
    raw = types.SimpleNamespace(
        connection=types.SimpleNamespace(sock=ours),
        _fp=types.SimpleNamespace(fp=_NothingBuffered()), chunked=chunked)
    response = types.SimpleNamespace(raw=raw, headers={}, close=ours.close)
    stream = v3._Stream(response, 1.0)
    stream.translate = backend._translate('watch ' + PATH, stream)
    stream.auth_generation = 0
    cursor = backend._cursor(proto.tree_ident(PATH), start,
                             time.monotonic())
    cursor.stream = stream
    cursor.opened = start
    return theirs


def _wire(*results, chunked=False):
    lines = [json.dumps({'result': r}).encode() + b'\n' for r in results]
    if not chunked:
        return b''.join(lines)
    return b''.join(b'%x\r\n%s\r\n' % (len(line), line) for line in lines)


@pytest.fixture
def backend():
    return backends.for_client(FakeEtcd3Server().client())


def _indexes(events):
    return [(e.key, e.index) for e in events]


@pytest.mark.parametrize('chunked', [False, True], ids=['plain', 'chunked'])
def test_messages_in_the_buffer_come_back_from_one_call(backend, chunked):
    gateway = _gateway(backend, 11, chunked)
    try:
        results = [_result(11, ('/p/a', 11)), _result(12, ('/p/b', 12)),
                   _result(13, ('/p/c', 13), ('/p/d', 13)),
                   {'header': {'revision': '13'}}]     # progress: no events
        gateway.sendall(_wire(*results, chunked=chunked))
        events = backend.watch_tree_events(PATH, 11, 10)
        # All four events, in order, ending with revision 13 whole.
        assert _indexes(events) == [('/p/a', 11), ('/p/b', 12),
                                    ('/p/c', 13), ('/p/d', 13)]
        # The next call continues after them, with what comes next.
        assert backend.watch_tree_events(PATH, 14, 0.05) is None
        gateway.sendall(_wire(_result(14, ('/p/e', 14)), chunked=chunked))
        assert _indexes(backend.watch_tree_events(PATH, 14, 10)) == [
            ('/p/e', 14)]
    finally:
        gateway.close()
        backend.close()


class _Pieces(object):
    """A response body handed over in pieces of our choosing.

    ``raw.read_message(timeout)`` (the seam of ``v3._MessageStream``)
    returns the next piece, however many lines it holds; None when there
    is none.
    """

    def __init__(self):
        self.pieces = []
        self.raw = types.SimpleNamespace(read_message=self.read_message,
                                         close=lambda: None)

    def read_message(self, timeout=None):
        return self.pieces.pop(0) if self.pieces else None

    def close(self):
        pass


def test_a_batch_stops_at_the_cap_at_a_message_boundary(backend):
    body = _Pieces()
    stream = v3._MessageStream(body, 1.0)
    stream.translate = backend._translate('watch ' + PATH, stream)
    stream.auth_generation = 0
    cursor = backend._cursor(proto.tree_ident(PATH), 100, time.monotonic())
    cursor.stream, cursor.opened = stream, 100
    # Four messages of 400 events (two revisions of 200 each), received
    # in one piece.
    body.pieces.append(_wire(*[_revisions(100 + 2 * n, 2, per=200)
                               for n in range(4)]))
    first = backend.watch_tree_events(PATH, 100, 10)
    # 400, 800, then 1,200 >= 1,000: three whole messages.
    assert len(first) == 1200
    assert [e.index for e in first[-400:]] == [104] * 200 + [105] * 200
    second = backend.watch_tree_events(PATH, 106, 10)
    assert [e.index for e in second] == [106] * 200 + [107] * 200
    assert backend.watch_tree_events(PATH, 108, 0.05) is None
    backend.close()


FAILURES = {
    'canceled': json.dumps({'result': {
        'header': {'revision': '13'}, 'canceled': True,
        'cancel_reason': 'some reason'}}).encode() + b'\n',
    'not json': b'{this is not json}\n',
    'no result': json.dumps({'error': {
        'grpc_code': 2, 'message': 'boom'}}).encode() + b'\n',
}


@pytest.mark.parametrize('failure', sorted(FAILURES))
def test_a_failing_message_after_good_ones_loses_none_of_them(
        backend, failure):
    gateway = _gateway(backend, 11)
    try:
        gateway.sendall(_wire(_result(11, ('/p/a', 11)),
                              _result(12, ('/p/b', 12), ('/p/c', 12))) +
                        FAILURES[failure])
        # The good messages' events come back from this call, or (if it
        # raises for the bad one) from the next: all of them, once.
        got = None
        for _attempt in range(2):
            try:
                got = backend.watch_tree_events(PATH, 11, 10)
                break
            except exceptions.BackendError:
                # The stream is closed: a new one would start after them.
                assert backend.open_streams() == 0
        assert got is not None and _indexes(got) == [
            ('/p/a', 11), ('/p/b', 12), ('/p/c', 12)]
    finally:
        gateway.close()
        backend.close()


def test_a_blank_line_after_a_message_does_not_hold_it_back(backend):
    """A blank line (skipped by MessageBuffer) is no message to wait for.

    ``has_message()`` is true for it, so the call reads on; finding no
    message it returns the events at hand at once, not None at its
    deadline (a whole heartbeat in a watcher, taken for silence).  The
    first version of batching (b0759e1) returned None after 3 s here.
    """
    gateway = _gateway(backend, 11)
    try:
        gateway.sendall(_wire(_result(11, ('/p/a', 11))) + b'\n')
        started = time.monotonic()
        events = backend.watch_tree_events(PATH, 11, 30)
        waited = time.monotonic() - started
        assert events is not None and _indexes(events) == [('/p/a', 11)], (
            'returned %r after %.1f s' % (events, waited))
        assert waited < 20
    finally:
        gateway.close()
        backend.close()
