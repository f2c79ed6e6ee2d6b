"""One report per real change: what was last delivered, and what differs.

:class:`ChangeLedger` records the value of each key as last delivered to
``key_change`` without error, and decides from it what a change watcher
reports, whether the tree changed by a watch event or by a full re-read.
"""

from typing import Any, Callable, Dict, Optional, Tuple

from etcdwatch.rules import mirror
from etcdwatch.rules import requests

# Never equal to a value, so a key absent from the ledger differs.
_MISSING = object()


class ChangeLedger(object):
    """What was delivered, key by key.

    :param state: the dict to keep it in (a watcher's
        ``implemented_state``: key -> value last delivered).
    """

    def __init__(self, state: Dict[str, Any]) -> None:
        self.state = state

    def change_for(self, key: str, data: Dict[str, Any]
                   ) -> Optional[Tuple[str, str, Any]]:
        """The ``(action, key, value)`` to report for ``key``, or None.

        A rewrite with the value already delivered is no change; a key
        never delivered is never reported deleted.
        """
        if key in data:
            return self.change_to(mirror.CHANGE, key, data[key])
        return self.change_to(mirror.DELETE, key, None)

    def change_to(self, action: str, key: str, value: Any
                  ) -> Optional[Tuple[str, str, Any]]:
        """The report for a change that left ``key`` at ``value``, or None.

        ``action`` 'delete' leaves it absent.  As :meth:`change_for`.
        """
        known = key in self.state
        if action == mirror.DELETE:
            return (mirror.DELETE, key, None) if known else None
        if known and self.state[key] == value:
            return None
        return (mirror.CHANGE if known else mirror.ADD), key, value

    def delivered(self, action: str, key: str, value: Any) -> None:
        """``key_change(action, key, value)`` returned without error."""
        if action == mirror.DELETE:
            del self.state[key]
        else:
            self.state[key] = value

    def report(self, action: str, key: str, value: Any,
               key_change: Callable[[str, str, Any], Any]) -> None:
        """Report one event's change, if any, to a plain ``key_change``.

        The event left ``key`` at ``value`` (:meth:`change_to`): its own
        value, not the tree's, which may already hold later events of the
        same watch message; so reports keep the order of etcd's changes.
        Without a driver: the threaded change watcher's ``do_work``.
        """
        change = self.change_to(action, key, value)
        if change is not None:
            key_change(*change)
            self.delivered(*change)

    def keys_to_reconcile(self, data: Dict[str, Any]):
        """Keys whose value differs from the one delivered.

        The gone come first, then the rest, each in key order.  Costs
        one comparison per key; only the keys that differ are sorted.
        """
        state = self.state
        gone = state.keys() - data.keys()
        changed = [key for key, value in data.items()
                   if state.get(key, _MISSING) != value]
        return sorted(gone) + sorted(changed)

    def reconcile(self, keys, data: Dict[str, Any]):
        """Report each of ``keys`` that changed.

        A rule: yields a ``key_change`` HOOK per change and records it
        once it returned; an error it raises propagates, leaving the rest
        for a retry.
        """
        for key in keys:
            change = self.change_for(key, data)
            if change is not None:
                yield requests.hook('key_change', *change)
                self.delivered(*change)
