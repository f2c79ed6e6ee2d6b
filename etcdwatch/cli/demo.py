"""``etcdwatch demo``: the election and watcher recipes at work."""

import argparse
import logging
from typing import Any, TextIO

from etcdwatch.cli.client import describe
from etcdwatch.cli.client import make_client
from etcdwatch.cli.client import probe
from etcdwatch.cli.common import checked
from etcdwatch.cli.common import subcommand
from etcdwatch import keys


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the subcommands ``sub``."""
    parser = subcommand(
        sub, 'demo', help='three workers elect a leader that prints changes',
        description='Three workers elect a leader; the leader prints the '
                    'changes a writer makes; the leader stops, another '
                    'takes over, then hangs, and a third takes over.  Runs '
                    'on an embedded in-memory etcd unless --etcd is given.')
    parser.add_argument('--prefix', metavar='PATH',
                        type=checked(keys.check_path, '--prefix'),
                        default='/etcdwatch-demo',
                        help='etcd directory the demo works under (a '
                             'sub-directory of its own, deleted at the end)')
    return parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run the demo on the fake, or on ``--etcd``."""
    from etcdwatch import demo
    if args.etcd is None:
        from etcdwatch.testing import fake
        client: Any = fake.FakeEtcdClient()
        where = 'an embedded in-memory etcd (--etcd HOST:PORT for a real one)'
    else:
        client = make_client(args)
        probe(client, args.prefix, args.etcd)
        where = 'etcd at ' + describe(args.etcd)
    out.write('etcdwatch demo on %s\n' % where)
    if not args.verbose:
        # The demo prints what the library would warn about.
        logging.getLogger('etcdwatch').setLevel(logging.ERROR)
    return demo.run(client, out=out, prefix=args.prefix)
