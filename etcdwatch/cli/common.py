"""What every subcommand shares: exit statuses, errors, common options."""

import argparse
import logging
import queue
import re
import signal
from typing import Any, Callable, Dict, List, NamedTuple, NoReturn, \
    Optional, Tuple

from etcdwatch import keys
from etcdwatch import passwords

PROG = 'etcdwatch'
DEFAULT_ETCD = '127.0.0.1:2379'
DEFAULT_PORT = 2379
ENV_ETCD = 'ETCDWATCH_ETCD'
ENV_API = 'ETCDWATCH_API'
#: Where ``--user``'s password comes from, unless ``--password-file``.
ENV_PASSWORD = passwords.ENV_PASSWORD
APIS = ('v2', 'v3')
DEFAULT_API = 'v2'
DEFAULT_ELECTION_PATH = '/etcdwatch/elections'

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

LOG = logging.getLogger('etcdwatch.cli')

#: What the main loops of ``watch`` and ``elect`` wait on: (kind, arg).
Events = queue.SimpleQueue[Tuple[str, Any]]


class CliError(Exception):
    """Ends the command with one line on stderr and ``status``."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super(CliError, self).__init__(message)
        self.status = status


class Endpoint(NamedTuple):
    """One etcd client URL, split."""

    protocol: Optional[str]
    host: str
    port: int


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (and status 2), not the whole usage."""

    #: Each subcommand's parser, by name (on the main parser).
    subcommands: Dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, '%s: error: %s (see %s --help)\n'
                  % (self.prog, message, self.prog))


def parse_endpoints(text: str) -> List[Endpoint]:
    """Split ``HOST:PORT[,HOST:PORT...]``; each may be a URL or a bare host.

    ``http://``/``https://`` set the protocol; ``[::1]:2379`` is IPv6;
    the port defaults to 2379.  Raises ``ValueError`` for anything else.
    """
    endpoints = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            raise ValueError('empty address in %r' % text)
        protocol = None
        match = re.match(r'([A-Za-z][A-Za-z0-9+.-]*)://', part)
        if match:
            protocol = match.group(1).lower()
            if protocol not in ('http', 'https'):
                raise ValueError('%r: only http:// and https:// are '
                                 'supported' % part)
            part = part[match.end():].rstrip('/')
        if '@' in part:
            # Not echoed: it may hold a password.
            raise ValueError('an address with a user name or password '
                             '(USER@HOST) is not supported')
        match = re.match(r'(?:\[([0-9A-Fa-f:.]+)\]|([^:/\[\]\s]+))'
                         r'(?::([0-9]{1,5}))?\Z', part)
        if not match:
            raise ValueError('%r is not HOST:PORT' % part)
        port = int(match.group(3) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError('%r: port out of range' % part)
        endpoints.append(Endpoint(protocol, match.group(1) or match.group(2),
                                  port))
    return endpoints


def _endpoints_arg(text: str) -> List[Endpoint]:
    try:
        return parse_endpoints(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def seconds(text: str) -> float:
    """An argparse type: a duration above 0."""
    try:
        return float(keys.check_duration('value', float(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            'expected a number of seconds above 0, not %r' % text)


def checked(check: Callable[[str, str], str], what: str
            ) -> Callable[[str], str]:
    """An argparse type from a :mod:`etcdwatch.keys` check."""
    def convert(text: str) -> str:
        try:
            return check(what, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    convert.__name__ = what
    return convert


def add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Add the connection and output options."""
    # On the main parser and on each subcommand, so that both
    # ``etcdwatch --etcd X watch P`` and ``etcdwatch watch --etcd X P``
    # work; a subcommand's copy only overrides what was given to it.
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group('connection and output')
    group.add_argument(
        '--etcd', metavar='HOST:PORT[,HOST:PORT...]', type=_endpoints_arg,
        default=default,
        help='etcd client address(es), every member of a cluster; also '
             'http(s)://HOST:PORT (default: $%s, else %s)'
             % (ENV_ETCD, DEFAULT_ETCD))
    group.add_argument(
        '--api', choices=APIS, default=default,
        help="etcd's API: v2 (python-etcd; etcd <= 3.5 started with "
             '--enable-v2) or v3 (etcd3gw; etcd >= 3.4) (default: $%s, '
             'else %s)' % (ENV_API, DEFAULT_API))
    group.add_argument(
        '--timeout', metavar='SECONDS', type=seconds,
        default=5.0 if top else argparse.SUPPRESS,
        help='the longest one request to etcd may take (default 5)')
    group.add_argument('--cacert', metavar='FILE', default=default,
                       help='verify etcd with this CA bundle (TLS)')
    group.add_argument('--cert', metavar='FILE', default=default,
                       help='TLS client certificate')
    group.add_argument('--key', metavar='FILE', default=default,
                       help='TLS client key (with --cert)')
    group.add_argument('--user', metavar='NAME', default=default,
                       help='authenticate to etcd as NAME (v3: a token, '
                            'renewed when it expires; v2: basic auth); '
                            'the password comes from --password-file, '
                            'else $%s, never from the command line'
                            % ENV_PASSWORD)
    group.add_argument('--password-file', metavar='FILE', default=default,
                       help="--user's password: the file's first line")
    group.add_argument('-v', '--verbose', action='count',
                       default=0 if top else argparse.SUPPRESS,
                       help="also log the library's own messages (-vv: "
                            'debug, with tracebacks)')
    group.add_argument('-q', '--quiet', action='store_true',
                       default=False if top else argparse.SUPPRESS,
                       help='print nothing on stderr but errors')


def subcommand(sub: Any, name: str, **kwargs: Any
               ) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (``help``, ``description``...) to ``sub``.

    With the connection and output options.
    """
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    add_common(parser, top=False)
    return parser


def add_seconds(parser: argparse.ArgumentParser, option: str,
                default: float, help: str) -> None:
    """Add ``option SECONDS``, a duration above 0."""
    parser.add_argument(option, metavar='SECONDS', type=seconds,
                        default=default, help=help)


def add_election(parser: argparse.ArgumentParser) -> None:
    """Add NAME and --election-path (``elect``, ``leader``)."""
    parser.add_argument('name', metavar='NAME',
                        type=checked(keys.check_name, 'NAME'),
                        help='what is led: one leader per NAME and '
                             '--election-path')
    parser.add_argument(
        '--election-path', metavar='PATH',
        type=checked(keys.check_path, '--election-path'),
        default=DEFAULT_ELECTION_PATH,
        help='etcd directory of the election keys (default %s); the key '
             'is PATH/master_NAME' % DEFAULT_ELECTION_PATH)


def election_key(args: argparse.Namespace) -> str:
    """The key of ``args.name``'s election."""
    return '%s/master_%s' % (args.election_path, args.name)


class Signals(object):
    """Route SIGINT/SIGTERM/SIGHUP into a queue while in effect.

    ``queue.SimpleQueue.put`` is reentrant, so a handler may put while the
    main thread is inside a ``get``.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, events: Events) -> None:
        self.events = events
        self._saved: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.events.put(('signal', signum))

    def __enter__(self) -> 'Signals':
        for signum in self.SIGNALS:
            self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, saved in self._saved.items():
            signal.signal(signum, saved)
