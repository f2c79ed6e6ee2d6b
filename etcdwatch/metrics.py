"""Prometheus metrics and a health answer for every recipe in the process.

Every :class:`~etcdwatch.EtcdElection`, :class:`~etcdwatch.EtcdWatcher`
(and change watcher) and their asyncio twins lists itself, weakly, in
:mod:`etcdwatch.registry` when it is built.  This module reads them:

- :class:`Collector`, a Prometheus collector of their ``stats()`` and
  outage state; :func:`register` adds one to a registry (nothing is
  registered at import).  Needs prometheus-client, the
  ``prometheus`` extra (``pip install '.[prometheus]'`` in a clone).
- :func:`health` (and :func:`healthy`), the answer for a liveness probe:
  etcd answered within ``max_silence`` seconds, every running watcher has
  loaded its tree and is at most ``max_lag`` indexes behind.  No extra
  needed.

Both only read the recipes' state: they never call etcd and never block
the recipes, and are safe from any thread (an HTTP server's, say, while
the recipes run on threads, green threads or an asyncio loop).
"""

import dataclasses
import logging
import math
import numbers
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from etcdwatch import registry as recipes_registry
from etcdwatch.rules import watcher_base

LOG = logging.getLogger(__name__)

#: Labels of an election's metrics: its name, its key, its class name.
ELECTION_LABELS = ('name', 'key', 'kind')
#: Labels of a watcher's metrics: its name, its prefix, its class name.
WATCHER_LABELS = ('name', 'prefix', 'kind')

# (metric, type, stats key, help) of each election metric.
_ELECTION_METRICS = (
    ('etcdwatch_election_leader', 'gauge', 'elected',
     '1 while this elector leads (etcd confirmed it within the local '
     'lease), else 0.'),
    ('etcdwatch_election_fencing_token', 'gauge', 'term',
     'The fencing token of the current term (only while leading).'),
    ('etcdwatch_election_terms_won', 'counter', 'terms_won',
     'Terms won.'),
    ('etcdwatch_election_terms_lost', 'counter', 'terms_lost',
     'Terms ended (lost, expired or resigned).'),
    ('etcdwatch_election_renewals', 'counter', 'renewals',
     'Renewals of the election key that etcd confirmed.'),
    ('etcdwatch_election_failed_renewals', 'counter', 'failed_renewals',
     'Renewals refused or not answered.'),
    ('etcdwatch_election_campaign_seconds', 'counter', 'campaign_seconds',
     'Seconds spent campaigning, in all (counted when a campaign ends).'),
    ('etcdwatch_election_seconds_since_contact', 'gauge',
     'seconds_since_contact',
     'Seconds since etcd last answered this elector (absent before its '
     'first answer).'),
)

# (metric, type, stats key, help) of each watcher metric.
_WATCHER_METRICS = (
    ('etcdwatch_watcher_events', 'counter', 'events',
     'etcd events applied.'),
    ('etcdwatch_watcher_resyncs', 'counter', 'resyncs',
     'Reads of the whole tree (the first load and every re-read).'),
    ('etcdwatch_watcher_errors', 'counter', 'errors',
     'Passes of the watch loop that failed (etcd errors).'),
    ('etcdwatch_watcher_callback_errors', 'counter', 'callback_errors',
     'Callbacks that raised (each is retried).'),
    ('etcdwatch_watcher_unparsable', 'counter', 'unparsable',
     'Values the codec refused.'),
    ('etcdwatch_watcher_checks', 'counter', 'checks',
     'Quorum reads after a heartbeat without events.'),
    ('etcdwatch_watcher_rewinds', 'counter', 'rewinds',
     'Re-reads because etcd\'s index went back.'),
    ('etcdwatch_watcher_index', 'gauge', 'index',
     'The last etcd index applied (absent before the first load).'),
    ('etcdwatch_watcher_etcd_index', 'gauge', 'etcd_index',
     'The newest index etcd showed the watcher.'),
    ('etcdwatch_watcher_lag', 'gauge', 'lag',
     'etcd_index - index: how far behind etcd the watcher is, as far as '
     'it knows (writes anywhere in etcd count).'),
    ('etcdwatch_watcher_last_event_timestamp_seconds', 'gauge',
     'last_event_time',
     'Unix time of the last event applied (absent before the first).'),
    ('etcdwatch_watcher_synced', 'gauge', 'synced',
     '1 once the first load has been delivered to the callbacks.'),
    ('etcdwatch_watcher_pending', 'gauge', 'pending',
     'Callbacks waiting for a retry.'),
)

_OUTAGE_METRICS = (
    ('outage', '1 while etcd cannot be reached (from the first failure to '
     'the next answer), else 0.'),
    ('outage_seconds', 'Seconds the current outage has lasted (0 when '
     'there is none).'),
)


def _prometheus():
    try:
        from prometheus_client import core
    except ImportError as e:
        raise ImportError(
            'etcdwatch.metrics needs prometheus-client: the prometheus '
            'extra, pip install ".[prometheus]" in a clone of etcdwatch',
            name=e.name) from e
    return core


def _outage_seconds(log: Any) -> float:
    """How long ``log``'s (an OutageLog's) current outage has lasted."""
    return max(0.0, log.seconds())


def _watcher_outage(watcher: Any) -> Any:
    return watcher._mirror.outage


def _election_outage(election: Any) -> Any:
    return election._candidacy.outage


def _stopped(watcher: Any) -> bool:
    stop = getattr(watcher, '_stop', None)
    return stop is not None and stop.is_set()


def _as_number(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (bool, numbers.Real)):
        return float(value)
    return None


def _check_recipes(recipes: Any) -> Optional[List[Any]]:
    if recipes is None:
        return None
    if isinstance(recipes, (str, bytes)) or not hasattr(recipes,
                                                        '__iter__'):
        raise ValueError('recipes must be an iterable of elections and '
                         'watchers, or None, not %r' % (recipes,))
    chosen = list(recipes)
    for recipe in chosen:
        if not (_is_watcher(recipe) or _is_election(recipe)):
            raise ValueError('recipes must hold elections and watchers '
                             'only, not %r' % (recipe,))
    return chosen


def _is_watcher(recipe: Any) -> bool:
    return isinstance(recipe, watcher_base.WatcherBase)


def _is_election(recipe: Any) -> bool:
    return hasattr(recipe, '_candidacy') and hasattr(recipe, 'master_key')


def _split(recipes: Optional[List[Any]]) -> Tuple[List[Any], List[Any]]:
    """(elections, watchers): the chosen ones, or every live one."""
    if recipes is None:
        return recipes_registry.elections(), recipes_registry.watchers()
    return ([r for r in recipes if _is_election(r)],
            [r for r in recipes if _is_watcher(r)])


class Collector(object):
    """A Prometheus collector of elections' and watchers' metrics.

    :param recipes: the elections and watchers to report on; None (the
        default) reports on every one alive in the process at each scrape
        (threaded and asyncio).  Given, they are held for as long as the
        collector.

    Each scrape reads each recipe's counters once.  Label sets are
    ``name, key, kind`` for elections and ``name, prefix, kind`` for
    watchers (``kind`` is the class name, e.g. ``AsyncEtcdElection`` or
    your watcher subclass); when two recipes would have the same labels,
    the later ones get ``name#2``, ``name#3``... in creation order, so
    no sample is ever repeated.
    """

    def __init__(self, recipes: Optional[Iterable[Any]] = None) -> None:
        self._recipes = _check_recipes(recipes)

    def describe(self) -> Iterator[Any]:
        """The metric families without samples (for the registry)."""
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        """The metric families with one sample per recipe and metric."""
        families = self._families()
        by_name = {family.name: family for family in families}
        elections, watchers = _split(self._recipes)
        for labels, stats, outage in self._readings(
                elections, 'election', self._election_reading):
            for metric, _, key, _ in _ELECTION_METRICS:
                self._add(by_name, metric, labels, stats.get(key))
            self._add_outage(by_name, 'etcdwatch_election_', labels, outage)
        for labels, stats, outage in self._readings(
                watchers, 'watcher', self._watcher_reading):
            for metric, _, key, _ in _WATCHER_METRICS:
                self._add(by_name, metric, labels, stats.get(key))
            self._add_outage(by_name, 'etcdwatch_watcher_', labels, outage)
        return iter(families)

    # -- inside ----------------------------------------------------------

    @staticmethod
    def _families() -> List[Any]:
        core = _prometheus()
        families = []
        for table, labels, prefix in (
                (_ELECTION_METRICS, ELECTION_LABELS, 'etcdwatch_election_'),
                (_WATCHER_METRICS, WATCHER_LABELS, 'etcdwatch_watcher_')):
            for metric, kind, _, documentation in table:
                make = (core.CounterMetricFamily if kind == 'counter'
                        else core.GaugeMetricFamily)
                families.append(make(metric, documentation, labels=labels))
            for suffix, documentation in _OUTAGE_METRICS:
                families.append(core.GaugeMetricFamily(
                    prefix + suffix, documentation, labels=labels))
        return families

    @staticmethod
    def _election_reading(election: Any):
        labels = (str(election.name), str(election.master_key),
                  type(election).__name__)
        return (labels, election._candidacy.report(),
                _election_outage(election))

    @staticmethod
    def _watcher_reading(watcher: Any):
        labels = (str(watcher.name), str(watcher.watch_path),
                  type(watcher).__name__)
        # The library's own counters, whatever a subclass made of stats().
        return (labels, watcher_base.WatcherBase.stats(watcher),
                _watcher_outage(watcher))

    @staticmethod
    def _readings(recipes: List[Any], what: str, read: Any
                  ) -> Iterator[Tuple[Tuple[str, ...], Any, Any]]:
        seen: Dict[Tuple[str, ...], int] = {}
        for recipe in recipes:
            try:
                labels, stats, outage = read(recipe)
            except Exception:
                LOG.exception('metrics: cannot read %s %r', what, recipe)
                continue
            count = seen[labels] = seen.get(labels, 0) + 1
            if count > 1:
                labels = ('%s#%d' % (labels[0], count),) + labels[1:]
            yield labels, stats, outage

    @staticmethod
    def _add(by_name, metric, labels, value):
        number = _as_number(value)
        if number is not None:
            by_name[metric].add_metric(list(labels), number)

    @staticmethod
    def _add_outage(by_name, prefix, labels, outage):
        by_name[prefix + 'outage'].add_metric(
            list(labels), 1.0 if outage.in_outage else 0.0)
        by_name[prefix + 'outage_seconds'].add_metric(
            list(labels), _outage_seconds(outage))


# Registries -> the collector register() added to each.
_registered: Dict[int, Tuple[Any, Collector]] = {}


def _registry_or_default(registry: Any) -> Any:
    if registry is None:
        _prometheus()
        from prometheus_client import REGISTRY
        return REGISTRY
    if not callable(getattr(registry, 'register', None)):
        raise ValueError('registry must be a prometheus_client '
                         'CollectorRegistry or None, not %r' % (registry,))
    return registry


def register(registry: Any = None) -> Collector:
    """Register a :class:`Collector` of every live recipe; return it.

    :param registry: a ``prometheus_client.CollectorRegistry``; None means
        prometheus-client's global ``REGISTRY`` (what its
        ``start_http_server`` and ``generate_latest()`` serve).

    Idempotent: a registry gets one collector however often it is called.
    """
    registry = _registry_or_default(registry)
    known = _registered.get(id(registry))
    if known is not None and known[0] is registry:
        return known[1]
    collector = Collector()
    registry.register(collector)
    _registered[id(registry)] = (registry, collector)
    return collector


def unregister(registry: Any = None) -> bool:
    """Remove what :func:`register` added to ``registry``; True if any."""
    registry = _registry_or_default(registry)
    known = _registered.get(id(registry))
    if known is None or known[0] is not registry:
        return False
    del _registered[id(registry)]
    registry.unregister(known[1])
    return True


# -- health ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Health(object):
    """What :func:`health` found: ``ok``, and one line per problem.

    True in a boolean context when ``ok``.
    """

    ok: bool
    problems: Tuple[str, ...]

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return 'ok' if self.ok else '\n'.join(self.problems)


def _check_bound(argument: str, value: Any, allow_none: bool) -> Any:
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
            not math.isfinite(value) or value < 0):
        raise ValueError('%s must be a finite number >= 0%s, not %r'
                         % (argument, ' or None' if allow_none else '',
                            value))
    return value


def health(max_silence: float = 30.0, max_lag: Optional[int] = 1000,
           recipes: Optional[Iterable[Any]] = None) -> Health:
    """Whether the recipes work, for a liveness probe.

    :param max_silence: the longest, in seconds, etcd may stay unreachable
        (from a recipe's first failure to reach it) before that is a
        problem.  An outage is seen when a recipe's call fails: at once for
        a refused connection, after its timeout for an etcd that does not
        answer (a watcher's heartbeat plus the client's timeout at most).
    :param max_lag: the most indexes a watcher may be behind the newest
        index etcd showed it (its ``stats()['lag']``); None does not look.
        etcd's index counts writes anywhere in etcd, so allow for the
        writes of a heartbeat under other prefixes.
    :param recipes: the elections and watchers to look at; None (the
        default) looks at every one alive in the process.

    A problem is: a running watcher or an election in an outage longer
    than ``max_silence``; a running watcher that has not loaded and
    delivered its tree yet (unless it is elected and does not lead:
    followers do not load); a running watcher more than ``max_lag``
    behind.  Watchers that were stopped, and their elections, are not
    looked at.  Only reads the recipes' state: never calls etcd, never
    blocks them.
    """
    max_silence = _check_bound('max_silence', max_silence, False)
    max_lag = _check_bound('max_lag', max_lag, True)
    elections, watchers = _split(_check_recipes(recipes))
    problems: List[str] = []
    stopped_electors = set()
    for watcher in watchers:
        if _stopped(watcher):
            if watcher.etcd_elector is not None:
                stopped_electors.add(id(watcher.etcd_elector))
            continue
        problems.extend(_watcher_problems(watcher, max_silence, max_lag))
    for election in elections:
        if id(election) in stopped_electors:
            continue
        what = 'election %s (%s)' % (election.name, election.master_key)
        outage = _election_outage(election)
        if outage.in_outage:
            report = election._candidacy.report()
            silence = max(_outage_seconds(outage),
                          report['seconds_since_contact'] or 0.0)
            if silence > max_silence:
                problems.append('%s: etcd unreachable for %.1fs (max_silence '
                                '%gs)' % (what, silence, max_silence))
    return Health(not problems, tuple(problems))


def _watcher_problems(watcher: Any, max_silence: float,
                      max_lag: Optional[float]) -> Iterator[str]:
    what = 'watcher %s (%s)' % (watcher.name, watcher.watch_path)
    outage = _watcher_outage(watcher)
    silence = _outage_seconds(outage)
    if outage.in_outage and silence > max_silence:
        yield ('%s: etcd unreachable for %.1fs (max_silence %gs)'
               % (what, silence, max_silence))
    elector = watcher.etcd_elector
    follower = elector is not None and not elector.is_elected
    stats = watcher_base.WatcherBase.stats(watcher)
    if not stats['synced'] and not follower:
        yield '%s: not synced (the tree is not loaded and delivered yet)' % (
            what,)
    lag = stats['lag']
    if max_lag is not None and lag is not None and lag > max_lag:
        yield '%s: %d indexes behind etcd (max_lag %g)' % (what, lag,
                                                           max_lag)


def healthy(max_silence: float = 30.0, max_lag: Optional[int] = 1000,
            recipes: Optional[Iterable[Any]] = None) -> bool:
    """``health(...).ok``: True when :func:`health` finds no problem."""
    return health(max_silence, max_lag, recipes).ok
