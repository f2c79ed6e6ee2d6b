"""The ``etcdwatch`` command (also ``python -m etcdwatch``).

::

    etcdwatch demo   [--etcd URL[,URL...]]
    etcdwatch watch  PREFIX [--json]
    etcdwatch elect  NAME [--grace SECONDS] -- COMMAND [ARGS...]
    etcdwatch leader NAME [--follow] [--json]

Every subcommand takes ``--etcd HOST:PORT[,HOST:PORT...]`` (default
``$ETCDWATCH_ETCD``, else ``127.0.0.1:2379``; ``demo`` runs on an in-memory
etcd unless given one), ``--api v2|v3`` (default ``$ETCDWATCH_API``, else
v2) and ``--help``; ``etcdwatch --version`` prints the version.

Exit status: 0 success; 1 what the subcommand calls a failure (``leader``:
there is no leader); 2 a usage error (one line on stderr); 3 etcd could not
be reached, or does not serve the API asked for (one line on stderr, no
traceback); ``elect`` exits with COMMAND's status (128 + N when signal N
ended it; 127 or 126 when it could not be started).

One module per subcommand (``demo``, ``watch``, ``elect``, ``leader``),
each with ``add_parser`` and ``run``; :mod:`~etcdwatch.cli.common` holds
the shared options, :mod:`~etcdwatch.cli.client` the etcd client,
:mod:`~etcdwatch.cli.output` logging and printing, and
:mod:`~etcdwatch.cli.supervisor` ``elect``'s child supervisor.
"""

import argparse
import os
import signal
import sys
from typing import Any, Optional, Sequence

from etcdwatch.cli.client import describe
from etcdwatch.cli.client import make_client
from etcdwatch.cli.client import probe
from etcdwatch.cli.client import reason
from etcdwatch.cli.common import add_common
from etcdwatch.cli.common import APIS
from etcdwatch.cli.common import CliError
from etcdwatch.cli.common import DEFAULT_API
from etcdwatch.cli.common import Endpoint
from etcdwatch.cli.common import ENV_API
from etcdwatch.cli.common import EXIT_USAGE
from etcdwatch.cli.common import LOG
from etcdwatch.cli.common import parse_endpoints
from etcdwatch.cli.common import Parser
from etcdwatch.cli.common import PROG
from etcdwatch.cli import demo
from etcdwatch.cli import elect
from etcdwatch.cli import leader
from etcdwatch.cli.output import format_change
from etcdwatch.cli.output import setup_logging
from etcdwatch.cli.supervisor import Supervisor
from etcdwatch.cli import watch

__all__ = ['main', 'build_parser', 'parse_args', 'parse_endpoints',
           'Endpoint', 'CliError', 'make_client', 'probe', 'describe',
           'reason', 'format_change', 'setup_logging', 'Supervisor']

#: Each subcommand's module: ``add_parser(subparsers)`` and
#: ``run(args, stdout) -> status``.
_COMMANDS = {'demo': demo, 'watch': watch, 'elect': elect,
             'leader': leader}


class _Version(argparse.Action):
    """``--version``: print it and exit (looked up only when asked)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super(_Version, self).__init__(**kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        import etcdwatch
        sys.stdout.write('%s %s\n' % (PROG, etcdwatch.__version__))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``etcdwatch`` command."""
    parser = Parser(
        prog=PROG,
        description='Leader election and prefix watchers for etcd (v2 '
                    'or v3 API), from the command line.',
        epilog='Exit status: 0 ok, 1 failure (leader: no leader), 2 usage '
               'error, 3 etcd unreachable; elect: COMMAND\'s status.')
    parser.add_argument('--version', action=_Version,
                        help="print etcdwatch's version and exit")
    add_common(parser, top=True)
    sub = parser.add_subparsers(dest='subcommand', metavar='COMMAND',
                                parser_class=Parser)
    sub.required = True
    parser.subcommands = {name: module.add_parser(sub)
                          for name, module in _COMMANDS.items()}
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; exits with status 2 on a usage error."""
    argv = list(argv)
    parser = build_parser()
    subcommands = getattr(parser, 'subcommands')
    command = None
    if '--' in argv:
        split = argv.index('--')
        args = parser.parse_args(argv[:split])
        if args.subcommand == 'elect':
            command = argv[split + 1:]
        else:
            args = parser.parse_args(argv)
    else:
        args = parser.parse_args(argv)
    if args.subcommand == 'elect':
        if command is None:
            command = args.command
        if not command:
            subcommands['elect'].error(
                'COMMAND is missing: elect NAME -- COMMAND [ARGS...]')
        args.command = command
    if args.key and not args.cert:
        subcommands[args.subcommand].error('--key needs --cert')
    if args.api is None:
        args.api = os.environ.get(ENV_API) or DEFAULT_API
        if args.api not in APIS:
            subcommands[args.subcommand].error(
                '$%s must be %s, not %r' % (ENV_API, ' or '.join(APIS),
                                            args.api))
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``etcdwatch`` command; returns its exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prog = '%s %s' % (PROG, args.subcommand)
    restore_logging = setup_logging(prog, args.verbose, args.quiet)
    # -vv: the traceback of what the one-line error is about.
    tracebacks = args.verbose >= 2
    try:
        return _COMMANDS[args.subcommand].run(args, sys.stdout)
    except CliError as e:
        LOG.error('%s', str(e), exc_info=tracebacks)
        return e.status
    except ValueError as e:
        # An argument the library refused (checked before any request).
        LOG.error('%s', str(e), exc_info=tracebacks)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        sys.stdout.flush()
        restore_logging()
