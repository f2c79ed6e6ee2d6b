"""``etcdwatch elect NAME -- COMMAND``: run COMMAND while elected."""

import argparse
from typing import Any, TextIO

from etcdwatch.cli.client import etcd_for
from etcdwatch.cli.common import add_election
from etcdwatch.cli.common import add_seconds
from etcdwatch.cli.common import election_key
from etcdwatch.cli.common import PROG
from etcdwatch.cli.common import subcommand
from etcdwatch.cli.supervisor import Supervisor


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``elect`` to the subcommands ``sub``."""
    parser = subcommand(
        sub, 'elect', help='run COMMAND only while elected leader of NAME',
        usage='%s elect [options] NAME -- COMMAND [ARGS...]' % PROG,
        description='Campaign for NAME; once elected, run COMMAND.  When '
                    'leadership is lost, send COMMAND SIGTERM, then '
                    'SIGKILL after --grace seconds, and campaign again.  '
                    'When COMMAND exits on its own, resign and exit with '
                    'its status.  SIGINT/SIGTERM/SIGHUP are passed on to '
                    'COMMAND.  COMMAND finds $ETCDWATCH_LEADER_ID and '
                    '$ETCDWATCH_FENCING_TOKEN in its environment.')
    add_election(parser)
    parser.add_argument('command', metavar='COMMAND', nargs='*',
                        help='the command to run, and its arguments, after '
                             '"--"')
    add_seconds(parser, '--ttl', 10.0,
                "the election key's TTL: a dead leader is replaced within "
                'it (default 10)')
    add_seconds(parser, '--recovery-time', 5.0,
                'longest a follower sleeps between looks at the key if a '
                'notification is lost (default 5)')
    add_seconds(parser, '--grace', 5.0,
                'SIGKILL COMMAND this long after SIGTERM (default 5)')
    return parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Supervise COMMAND; exit with its status."""
    client = etcd_for(args, election_key(args))
    supervisor = Supervisor(client, args.name, args.election_path,
                            args.command, ttl=args.ttl,
                            recovery_time=args.recovery_time,
                            grace=args.grace)
    return supervisor.run()
