"""``etcdwatch leader NAME [--follow] [--json]``: print who leads NAME."""

import argparse
import json
import queue
import time
from typing import Any, Optional, TextIO

from etcdwatch.cli.client import etcd_for
from etcdwatch.cli.client import reason
from etcdwatch.cli.common import add_election
from etcdwatch.cli.common import CliError
from etcdwatch.cli.common import election_key
from etcdwatch.cli.common import EXIT_FAILURE
from etcdwatch.cli.common import EXIT_OK
from etcdwatch.cli.common import EXIT_UNAVAILABLE
from etcdwatch.cli.common import LOG
from etcdwatch.cli.common import Signals
from etcdwatch.cli.common import subcommand
from etcdwatch.cli.output import write_line
from etcdwatch import election
from etcdwatch import exceptions


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``leader`` to the subcommands ``sub``."""
    parser = subcommand(
        sub, 'leader', help="print the current leader's id",
        description="Print the id of NAME's current leader "
                    '(host:pid:random), or exit with status 1 if there is '
                    'none.  With --follow, print it, then every new '
                    'leader as it happens ("(no leader)" while there is '
                    'none), until interrupted.')
    add_election(parser)
    parser.add_argument('--follow', action='store_true',
                        help='go on printing each new leader')
    parser.add_argument('--json', action='store_true',
                        help='one JSON object a line: {"leader": ID or '
                             'null, "t": UNIX_TIME}')
    return parser


def _line(leader: Optional[str], as_json: bool) -> str:
    if as_json:
        return json.dumps({'leader': leader, 't': round(time.time(), 3)})
    return '(no leader)' if leader is None else leader


def _follow(elector: election.EtcdElection, args: argparse.Namespace,
            out: TextIO) -> int:
    """Print each new leader until a signal; status 0."""
    events: 'queue.SimpleQueue[Any]' = queue.SimpleQueue()
    with Signals(events):
        observer = elector.observe(lambda leader: events.put(
            ('leader', leader)))
        try:
            while True:
                kind, what = events.get()
                if kind == 'signal':
                    return EXIT_OK
                write_line(out, _line(what, args.json))
        finally:
            observer.stop()


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the leader's id (status 0), or status 1 if there is none."""
    key = election_key(args)
    client = etcd_for(args, key)
    elector = election.EtcdElection(client, args.name, args.election_path,
                                    work_time=args.timeout)
    if args.follow:
        return _follow(elector, args, out)
    try:
        leader = elector.leader()
    except exceptions.BackendError as e:
        raise CliError('cannot read %s: %s' % (key, reason(e)),
                       EXIT_UNAVAILABLE)
    if leader is None:
        LOG.info('%s has no leader', args.name)
        if args.json:
            write_line(out, _line(None, True))
        return EXIT_FAILURE
    write_line(out, _line(leader, args.json))
    return EXIT_OK
