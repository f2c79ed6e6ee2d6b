"""``etcdwatch leader NAME``: print who leads NAME."""

import argparse
from typing import Any, TextIO

from etcdwatch.cli.client import etcd_for
from etcdwatch.cli.client import reason
from etcdwatch.cli.common import add_election
from etcdwatch.cli.common import CliError
from etcdwatch.cli.common import election_key
from etcdwatch.cli.common import EXIT_FAILURE
from etcdwatch.cli.common import EXIT_OK
from etcdwatch.cli.common import EXIT_UNAVAILABLE
from etcdwatch.cli.common import LOG
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
                    'none.')
    add_election(parser)
    return parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the leader's id (status 0), or status 1 if there is none."""
    key = election_key(args)
    client = etcd_for(args, key)
    elector = election.EtcdElection(client, args.name, args.election_path,
                                    work_time=args.timeout)
    try:
        leader = elector.leader()
    except exceptions.BackendError as e:
        raise CliError('cannot read %s: %s' % (key, reason(e)),
                       EXIT_UNAVAILABLE)
    if leader is None:
        LOG.info('%s has no leader', args.name)
        return EXIT_FAILURE
    write_line(out, leader)
    return EXIT_OK
