"""The ``etcdwatch`` command (also ``python -m etcdwatch``)."""

import argparse
import sys


def _client_for(url):
    """A python-etcd client for ``HOST:PORT``, or the fake for None."""
    if url is None:
        from etcdwatch.testing import fake
        return fake.FakeEtcdClient()
    import etcd
    host, _, port = url.rpartition(':')
    if '://' in host:
        host = host.split('://', 1)[1]
    if not host or not port.isdigit():
        raise SystemExit('etcdwatch: --etcd must be HOST:PORT, not %r' % url)
    return etcd.Client(host=host, port=int(port))


def _parser():
    parser = argparse.ArgumentParser(
        prog='etcdwatch',
        description='Leader election and prefix watchers for etcd.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    demo = sub.add_parser(
        'demo', help='three workers elect a leader that watches a prefix',
        description='Three workers elect a leader; the leader prints the '
                    'changes a writer makes; the leader stops and another '
                    'takes over.  Uses an embedded in-memory etcd unless '
                    '--etcd is given.')
    demo.add_argument('--etcd', metavar='HOST:PORT',
                      help='use this etcd (v2 API enabled) instead of the '
                           'embedded one')
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == 'demo':
        from etcdwatch import demo
        return demo.run(_client_for(args.etcd))
    return 2


if __name__ == '__main__':
    sys.exit(main())
