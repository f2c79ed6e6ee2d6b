"""``etcdwatch watch PREFIX``: print every key, then every change."""

import argparse
import queue
import threading
from typing import Any, Callable, List, Optional, TextIO

from etcdwatch.cli.client import etcd_for
from etcdwatch.cli.common import add_seconds
from etcdwatch.cli.common import checked
from etcdwatch.cli.common import Events
from etcdwatch.cli.common import EXIT_FAILURE
from etcdwatch.cli.common import EXIT_OK
from etcdwatch.cli.common import LOG
from etcdwatch.cli.common import Signals
from etcdwatch.cli.common import subcommand
from etcdwatch.cli.output import format_change
from etcdwatch.cli.output import silence_stdout
from etcdwatch.cli.output import write_line
from etcdwatch import keys
from etcdwatch import watcher


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``watch`` to the subcommands ``sub``."""
    parser = subcommand(
        sub, 'watch', help='print every key under PREFIX, then every change',
        description='Print every key under PREFIX, then every change, one '
                    'line each, until interrupted (Ctrl-C or SIGTERM: exit '
                    'status 0).  Keeps going across etcd restarts; when '
                    "etcd's history no longer reaches back, it re-reads "
                    'PREFIX and prints only what differs.',
        epilog='Line format: INDEX ACTION KEY [= VALUE], ACTION being add, '
               'change or delete.  --json: {"action", "key", "value", '
               '"index"} per line.')
    parser.add_argument('prefix', metavar='PREFIX',
                        type=checked(keys.check_path, 'PREFIX'),
                        help='etcd directory to follow, e.g. /app/ports')
    parser.add_argument('--json', action='store_true',
                        help='one JSON object per line')
    add_seconds(parser, '--heartbeat', 10.0,
                'longest single watch request (default 10)')
    return parser


class _WatchPrinter(watcher.EtcdChangeWatcher):
    """Prints each change, with the etcd index it was seen at."""

    def __init__(self, client: Any, prefix: str, heartbeat: float,
                 emit: Callable[[str, str, Optional[str], Optional[int]],
                                None]) -> None:
        self._emit = emit
        self._loads = 0
        super(_WatchPrinter, self).__init__(client, prefix, prefix,
                                            heartbeat=heartbeat)

    def key_change(self, action: str, key: str,
                   value: Optional[str]) -> None:
        # tick is the next index to watch from; during a callback, the one
        # just applied (an event's, or a full read's) plus one.
        tick = self.tick
        self._emit(action, key, value, None if tick is None else tick - 1)

    def do_all_work(self) -> None:
        super(_WatchPrinter, self).do_all_work()
        self._loads += 1
        if self._loads > 1:
            LOG.info('re-read %s at index %s (%d keys)', self.watch_path,
                     self.tick - 1 if self.tick else None,
                     len(self.etcd_data or ()))


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print until a signal (status 0) or until stdout's reader goes (1)."""
    client = etcd_for(args, args.prefix)
    events: Events = queue.SimpleQueue()
    broken: List[bool] = []

    def emit(action: str, key: str, value: Optional[str],
             index: Optional[int]) -> None:
        if broken:
            return
        try:
            write_line(out, format_change(action, key, value, index,
                                          args.json))
        except (BrokenPipeError, ValueError):
            # The reader went away (| head): stop quietly.
            broken.append(True)
            events.put(('broken', None))

    with Signals(events):
        printer = _WatchPrinter(client, args.prefix, args.heartbeat, emit)
        if printer.synced:
            count = len(printer.etcd_data or ())
            LOG.info('watching %s: %d key%s at index %s', args.prefix, count,
                     '' if count == 1 else 's', printer.stats()['index'])
        thread = threading.Thread(target=printer.watch_forever,
                                  name='etcdwatch-watch', daemon=True)
        thread.start()
        kind, _ = events.get()
        printer.stop()
        # Leave no line half written: callbacks run under this lock.  The
        # watch thread, maybe blocked in a watch request, ends with us.
        printer.etcd_data_lock.acquire(timeout=args.timeout)
    if kind == 'broken':
        silence_stdout()
        return EXIT_FAILURE
    return EXIT_OK
