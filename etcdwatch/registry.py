"""Every election and watcher alive in this process, held weakly.

The recipes' constructors add themselves here (threaded and asyncio
alike), so :mod:`etcdwatch.metrics` can report on all of them without the
application listing them.  The references are weak: being listed never
keeps a recipe alive, and one that was collected is gone from the lists.
Recipes are told apart by identity, never by their ``__eq__`` or
``__hash__`` (a subclass may define either).  Safe from any thread.
"""

import itertools
import weakref
from typing import Any, Dict, List

# order of addition -> weak reference to the recipe; the order makes the
# lists come out oldest first.  No lock: a reference's callback, which
# removes its entry, may run in the middle of anything (even a snapshot,
# in the same thread), so every step is one atomic dict operation.
_watchers: Dict[int, 'weakref.ref[Any]'] = {}
_elections: Dict[int, 'weakref.ref[Any]'] = {}
_order = itertools.count()


def _add(table: Dict[int, 'weakref.ref[Any]'], recipe: Any) -> None:
    number = next(_order)

    def forget(ref: 'weakref.ref[Any]') -> None:
        table.pop(number, None)

    table[number] = weakref.ref(recipe, forget)


def add_watcher(watcher: Any) -> None:
    """List ``watcher`` (a threaded or asyncio watcher) while it lives."""
    _add(_watchers, watcher)


def add_election(election: Any) -> None:
    """List ``election`` (threaded or asyncio) while it lives."""
    _add(_elections, election)


def _snapshot(table: Dict[int, 'weakref.ref[Any]']) -> List[Any]:
    while True:
        try:
            pairs = sorted(table.items())
            break
        except RuntimeError:
            # A collected recipe left the table while it was copied.
            continue
    recipes = (ref() for _, ref in pairs)
    return [recipe for recipe in recipes if recipe is not None]


def watchers() -> List[Any]:
    """The watchers alive now, oldest first, as a new list."""
    return _snapshot(_watchers)


def elections() -> List[Any]:
    """The elections alive now, oldest first, as a new list."""
    return _snapshot(_elections)
