"""A prefix's tree, kept equal to etcd's, and the callbacks owed for it.

:class:`Mirror` is the whole of a watcher's logic: when to read the tree
and when to watch, how an event changes the tree, when a re-read beats
walking the missed events, what to do when history is gone or etcd went
back in time, and the order, retry and pacing of callbacks.  It does no
I/O: its generators yield :mod:`~etcdwatch.rules.requests` to a driver
(:class:`etcdwatch.EtcdWatcher` on threads,
:class:`etcdwatch.aio.AsyncEtcdWatcher` on asyncio).
"""

import logging as std_logging
import time
from typing import Any, Callable, Dict, Iterable, Optional

from oslo_log import log as logging

from etcdwatch.backends import base
from etcdwatch import backoff
from etcdwatch import exceptions
from etcdwatch import outage
from etcdwatch.rules import delivery
from etcdwatch.rules import requests

LOG = logging.getLogger('etcdwatch.watcher')

#: Seconds a pass must still have left to watch again (or a quarter of
#: its heartbeat, if less).
FOLLOW_MIN = 1.0

ADD = 'add'
CHANGE = 'change'
DELETE = 'delete'


def apply_event(data: Dict[str, Any], event: base.Event,
                decode: Optional[Callable[[str, str], Any]]) -> list:
    """Fold ``event`` into ``data``; return its ``(action, key, value)``.

    One change per key it touched, in a list.  ``decode(key, raw)``
    returns ``(True, value)``, or ``(False, None)`` for
    a value it refuses (the key then counts as absent); None keeps values
    as they are.  A directory's
    DELETE removes every key below it, one 'delete' each, in key order.
    """
    changes = []
    if event.kind == base.DELETE:
        if event.is_dir:
            below = event.key.rstrip('/') + '/'
            gone = sorted(k for k in data if k.startswith(below))
        else:
            gone = [event.key] if event.key in data else []
        for key in gone:
            del data[key]
            changes.append((DELETE, key, None))
    elif not event.is_dir:
        ok, value = (True, event.value) if decode is None else decode(
            event.key, event.value)
        if ok:
            changes.append((CHANGE if event.key in data else ADD,
                            event.key, value))
            data[event.key] = value
        elif event.key in data:
            del data[event.key]
            changes.append((DELETE, event.key, None))
    return changes


def far_behind(event: base.Event, tree_size: int, min_lag: int,
               tree_fraction: int) -> bool:
    """Whether re-reading the tree beats walking to etcd's index."""
    if event.current_index is None:
        return False
    lag = event.current_index - event.index
    return lag > max(min_lag, tree_size // tree_fraction)


class Mirror(object):
    """The tree under ``path``, what is owed to callbacks, and the rules.

    :param name: for log lines.
    :param path: the watched prefix.
    :param hooks: the recipe object: its ``decode_value``,
        ``value_unparsable`` and ``make_short_key`` are called directly
        (they are plain functions on both drivers); the callbacks
        (``do_work``, ``do_all_work``, ``init_resync_start``,
        ``init_resync_end``) are asked for with CALLBACK requests.
    :param plain_values: True when values pass through undecoded, so a
        full read needs no per-key call and no copy.
    :param catchup: returns ``(min_lag, tree_fraction)`` for
        :func:`far_behind`, as they are now.
    :param leading: returns whether callbacks may run (False for an
        elected watcher that lost its term).
    :param clock: wall-clock seconds, for ``last_event_time``.
    """

    def __init__(self, name: str, path: str, hooks: Any,
                 plain_values: bool,
                 catchup: Callable[[], Any],
                 leading: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.path = path
        self._hooks = hooks
        self._plain_values = plain_values
        self._catchup = catchup
        self._leading = leading
        self._clock = clock
        #: Every leaf key under path -> its value (None until loaded).
        self.data: Optional[Dict[str, Any]] = None
        #: The next index to watch from; None means "re-read all".
        self.tick: Optional[int] = None
        self.queue = delivery.DeliveryQueue()
        #: Short keys the application held before the first load.
        self.expected_keys: Optional[Iterable[str]] = None
        self.initial_load_done = False
        #: True once the first load was delivered.
        self.synced = False
        self.stats: Dict[str, Any] = {
            'events': 0, 'resyncs': 0, 'errors': 0, 'callback_errors': 0,
            'unparsable': 0, 'checks': 0, 'rewinds': 0,
            'last_event_time': None, 'etcd_index': None}
        self.outage = outage.OutageLog(
            LOG, '%s: watching %s' % (name, path))
        self._backoff = backoff.Backoff(1.0, 1.0)

    # -- one pass of the loop --------------------------------------------

    def step(self, heartbeat: float, retry_min: float, retry_max: float,
             follow: Optional[Callable[[], float]] = None):
        """Retry owed callbacks, or read the tree, or watch.

        One watch, unless ``follow`` is given: after a watch message was
        delivered whole, ``follow()`` returns the seconds this pass may
        still wait for the next one (under ``min(FOLLOW_MIN, heartbeat /
        4)`` ends the pass), so a watcher following a busy prefix makes
        one pass per ``heartbeat``, not one per message.  Only a pass's
        first watch, which waits the whole ``heartbeat``, takes silence as
        a reason to ask etcd where it stands.
        """
        if self.queue:
            yield from self.retry(min(retry_max, heartbeat), retry_min)
            return
        if self.tick is None:
            yield from self.reload()
            return
        # A follow-up watch with a sliver of time left would only time out
        # (or give up opening a stream): the pass ends instead.
        yield from self.watch(heartbeat, follow, min(FOLLOW_MIN,
                                                     heartbeat / 4))

    def watch(self, timeout: float,
              follow: Optional[Callable[[], float]] = None,
              shortest: float = 0.0):
        """Watch, apply what comes and deliver it; with ``follow``, again.

        Returns True when the last message was applied and every callback
        it owed returned.  Only after a load (``tick`` is not None).  With
        ``follow``, after each message delivered whole, watches again for
        ``follow()`` seconds unless that is under ``shortest``; silence
        then ends it without asking etcd anything (see :meth:`step`).
        """
        assert self.tick is not None, 'watch() before the first load'
        # One generator for the whole pass: following a busy prefix, this
        # loop runs once per watch message.
        check_silence = True
        while True:
            try:
                # A whole watch message at a time (up to 1,000 revisions
                # while catching up): one pass of the loop, not one per
                # event.
                events = yield requests.backend(
                    'watch_tree_events', self.path, self.tick, timeout)
                if not events:
                    if not check_silence:
                        return False
                    # Silence proves nothing: a member cut off from its
                    # cluster, or an etcd rebuilt below our index, is
                    # silent.
                    current = yield requests.backend(
                        'check_current', self.path, self.tick - 1)
                    self.stats['checks'] += 1
                    self.saw_index(current)
                    return False
            except exceptions.ClusterRewound as e:
                LOG.warning('%s: %s; re-reading %s', self.name, e,
                            self.path)
                self.stats['rewinds'] += 1
                yield from self.reload()
                return False
            except exceptions.HistoryGone:
                LOG.info('%s: etcd history no longer reaches index %s; '
                         're-reading %s', self.name, self.tick, self.path)
                yield from self.reload()
                return False
            first, last = events[0], events[-1]
            if last.current_index != last.index:
                self.saw_index(last.current_index)
            # Following live, etcd's index is the event's own: not behind.
            if first.current_index != first.index and far_behind(
                    first, len(self.data or ()), *self._catchup()):
                LOG.debug('%s: %s events behind; re-reading instead',
                          self.name, first.current_index - first.index)
                yield from self.reload()
                return False
            self.apply_all(events)
            delivered = yield from self.deliver()
            if not delivered or follow is None:
                return delivered
            timeout = follow()
            if timeout < shortest:
                return True
            if self.tick is None:
                # A re-read was asked for meanwhile (tick set to None): the
                # next pass does it.
                return True
            check_silence = False

    def reload(self):
        """Read the whole tree, then deliver do_all_work().

        The first load also asks init_resync_start() before the read and
        init_resync_end() after.
        """
        first = not self.initial_load_done
        if first and self.expected_keys is None:
            # Asked before the read, as networking-vpp does: the app
            # reports what it holds from before, while etcd is unread.
            self.expected_keys = yield requests.hook('init_resync_start')
        snapshot = yield requests.backend('read_tree', self.path)
        self.data = self._decode_all(snapshot.items)
        self.tick = snapshot.index + 1
        self.saw_index(snapshot.index)
        self.queue.reload(first)
        self.initial_load_done = True
        self.stats['resyncs'] += 1
        LOG.debug('%s: loaded %d keys under %s at index %s', self.name,
                  len(snapshot.items), self.path, snapshot.index)
        yield from self.deliver()

    def retry(self, longest: float, shortest: float):
        """Wait out the head's backoff, then deliver."""
        delay = self.queue.retry_delay(shortest, longest)
        if delay:
            stopped = yield requests.sleep(delay)
            if stopped:
                return False
        return (yield from self.deliver())

    def deliver(self):
        """Run owed callbacks in order; stop at the first that raises.

        Returns True when none is left.
        """
        while self.queue:
            # A watcher that lost its election delivers nothing more; it
            # re-reads everything when elected again.
            item = self.queue[0]
            if type(item) is tuple:     # delivery.is_work, inline
                # Every do_work at the head in one request; _leading is
                # asked before each (so a lost term runs none), and each
                # one that returned leaves the queue at once.
                run = self.queue.work_run()
                ran, error = yield requests.each('do_work', run,
                                                 self._leading,
                                                 self.queue.succeeded)
                if error is not None:
                    self._callback_failed(error, 'do_work', run[ran])
                    return False
                if ran < len(run):
                    return False
                continue
            if not self._leading():
                return False
            if item == delivery.ALL_WORK:
                ask = requests.callback('do_all_work')
            else:
                ask = requests.callback('init_resync_end',
                                        self.short_keys())
            try:
                ran = yield ask
            except Exception as e:
                self._callback_failed(e, ask.name, item)
                return False
            if ran is requests.NOT_RUN:
                return False
            self.queue.succeeded()
        self.synced = True
        return True

    def _callback_failed(self, exc, called, item):
        """A callback raised: it stays at the head, to be retried."""
        failures = self.queue.failed()
        self.stats['callback_errors'] += 1
        LOG.error('%s: callback %s() failed on %s (attempt %d); will retry',
                  self.name, self._culprit(exc, called),
                  delivery.describe(item), failures, exc_info=exc)

    def _culprit(self, exc, called):
        """The innermost hook of ours in ``exc``'s traceback.

        So a log names ``added``, not the ``do_work`` that called it.
        """
        name = called
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_locals.get('self') is self._hooks:
                name = tb.tb_frame.f_code.co_name
            tb = tb.tb_next
        return name

    # -- pure steps -------------------------------------------------------

    def apply_all(self, events) -> None:
        """Fold events, in order, into the tree and queue their callbacks.

        ``events`` ends at the end of a revision (as
        :meth:`~etcdwatch.backends.base.Backend.watch_tree_events` returns
        them): the next watch starts after the last one.
        """
        data = self.data
        assert data is not None, 'apply_all() before the first load'
        queue = self.queue
        # DeliveryQueue.push, inline: do_work items only, so its count of
        # whole-tree items holds.
        push, push_index = queue.append, queue.indexes.append
        plain = self._plain_values
        decode = None if plain else self.decode
        put = base.PUT
        for event in events:
            key = event.key
            if plain and event.kind == put and not event.is_dir:
                # apply_event's commonest case, inline (once per event).
                push((CHANGE if key in data else ADD, key, event.value))
                push_index(event.index)
                data[key] = event.value
                continue
            for change in apply_event(data, event, decode):
                push(change)
                push_index(event.index)
        last = events[-1].index
        self.tick = last + 1
        stats = self.stats
        # A v2 watch answers with etcd's index from when it began, which
        # can be below the event's own.
        known = stats['etcd_index']
        if known is None or last > known:
            stats['etcd_index'] = last
        stats['events'] += len(events)
        stats['last_event_time'] = self._clock()

    def visible_tick(self) -> Optional[int]:
        """``tick`` as the recipes show it.

        During (or before the retry of) an event's callback, the index
        after that event's, as when events were applied one at a time;
        else :attr:`tick`.
        """
        # The index of the head's event (None for a whole-tree callback):
        # asked in callbacks, once per event.
        indexes = self.queue.indexes
        index = indexes[0] if indexes else None
        return self.tick if index is None else index + 1

    def saw_index(self, index: Optional[int]) -> None:
        """etcd showed its current index (a watch, a read, a check)."""
        if isinstance(index, int):
            known = self.stats['etcd_index']
            self.stats['etcd_index'] = index if known is None else max(
                known, index)

    def lag(self) -> Optional[int]:
        """Indexes etcd is ahead of what was applied, or None."""
        known = self.stats['etcd_index']
        if known is None or self.tick is None:
            return None
        return max(0, known - (self.tick - 1))

    def new_term(self) -> None:
        """An elected watcher won a new term: start over from a read.

        What a lost term left undelivered is covered by the re-read's
        do_all_work().
        """
        self.tick = None
        self.queue.clear()

    def decode(self, key: str, raw: str):
        """Return (True, value), or (False, None) for a refused value.

        A refused value is logged and reported to value_unparsable().
        """
        try:
            return True, self._hooks.decode_value(key, raw)
        except Exception as e:
            self.stats['unparsable'] += 1
            LOG.warning('%s: cannot decode the value of %s (treated as '
                        'absent): %s', self.name, key, e, exc_info=True)
            try:
                self._hooks.value_unparsable(key, raw, e)
            except Exception:
                LOG.exception('%s: value_unparsable() failed', self.name)
            return False, None

    def _decode_all(self, items):
        if self._plain_values:
            # The common case: no per-key call, and no copy (the snapshot
            # is ours alone), so a 100k-key load holds one dict, not two.
            return items
        data = {}
        for key, raw in items.items():
            ok, value = self.decode(key, raw)
            if ok:
                data[key] = value
        return data

    def short_keys(self):
        """The short keys of the tree, one at a time."""
        for key in list(self.data or ()):
            short_key = self._hooks.make_short_key(key)
            if short_key is not None:
                yield short_key

    # -- errors of the loop -----------------------------------------------

    def failed(self, exc: BaseException, initial: float,
               maximum: float) -> float:
        """A pass of the loop raised: log it; return the pause to take.

        The pause is drawn from a ceiling doubling from ``initial`` to
        ``maximum`` (passed each time: subclasses and tests set the
        pauses on the instance after construction).
        """
        self.stats['errors'] += 1
        self._backoff.initial = initial
        self._backoff.maximum = max(initial, maximum)
        pause = self._backoff.failed()
        if isinstance(exc, exceptions.EtcdUnavailable):
            # Once per outage, not once per retry.
            self.outage.failed(exc, round(pause, 1))
        elif isinstance(exc, exceptions.EtcdAuthError):
            # The reason says it all (and names the user and the key): a
            # traceback per retry would only bury it.
            LOG.warning('%s: watching %s refused: %s; retrying in %.1fs',
                        self.name, self.path, exc, pause)
        else:
            LOG.log(std_logging.ERROR, '%s: watching %s failed; retrying '
                    'in %.1fs', self.name, self.path, pause, exc_info=exc)
        return pause

    def succeeded(self) -> None:
        """A pass of the loop got through."""
        self.outage.succeeded()
        self._backoff.succeeded()
