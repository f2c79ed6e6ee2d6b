"""The callbacks a watcher still owes, in order, with their retry rule."""

import collections
from typing import Any

#: Queue items for the whole-tree callbacks (the others are
#: ``(action, key, value)`` tuples for ``do_work``).
ALL_WORK = 'do_all_work'
RESYNC_END = 'init_resync_end'


class DeliveryQueue(collections.deque):
    """Callbacks owed, oldest first; the head is retried until it returns.

    A callback that raises stays at the head: later ones wait behind it,
    so none is dropped and their order holds.  :meth:`retry_delay` grows
    exponentially with consecutive failures, so a callback that always
    fails costs a log line per wait, not a spinning core.
    """

    def __init__(self) -> None:
        # A deque itself: ``len()`` and truth, asked several times per
        # watch message, stay in C.
        super().__init__()
        #: Consecutive failures of the head.
        self.failures = 0
        #: The etcd index of each item's event (None for a whole-tree
        #: callback), in step with the items.
        self.indexes: collections.deque = collections.deque()
        #: How many whole-tree callbacks are queued.
        self.whole_tree = 0

    def push(self, item: Any, index: Any = None) -> None:
        """Queue an item (at the tail), with its event's index."""
        self.append(item)
        self.indexes.append(index)
        if not is_work(item):
            self.whole_tree += 1

    def clear(self) -> None:
        super().clear()
        self.indexes.clear()
        self.whole_tree = 0

    def reload(self, first: bool) -> None:
        """A full read supersedes whatever was owed: do_all_work covers it.

        The first load is followed by init_resync_end.
        """
        self.clear()
        self.push(ALL_WORK)
        if first:
            self.push(RESYNC_END)

    @property
    def head(self) -> Any:
        return self[0]

    def work_run(self) -> list:
        """The ``do_work`` items at the head, up to the next other item."""
        if not self.whole_tree:
            return list(self)
        run = []
        for item in self:
            if not is_work(item):
                break
            run.append(item)
        return run

    def succeeded(self) -> None:
        """The head returned: drop it."""
        # is_work, inline: once per callback.
        if type(self.popleft()) is not tuple:
            self.whole_tree -= 1
        self.indexes.popleft()
        self.failures = 0

    def failed(self) -> int:
        """The head raised: keep it; return its consecutive failures."""
        self.failures += 1
        return self.failures

    def retry_delay(self, shortest: float, longest: float) -> float:
        """The wait before retrying the head, or 0 if it has not failed."""
        if not self.failures:
            return 0.0
        return min(longest, shortest * 2 ** min(64, self.failures - 1))


def is_work(item: Any) -> bool:
    """Whether a queued item is a ``do_work`` call (not a whole-tree one)."""
    return type(item) is tuple


def describe(item: Any) -> str:
    """How a log line names a queued callback."""
    if item in (ALL_WORK, RESYNC_END):
        return '%s()' % item
    return '%s %s' % (item[0], item[1])
