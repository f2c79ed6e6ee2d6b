"""The ``etcdwatch`` command (also ``python -m etcdwatch``).

::

    etcdwatch demo   [--etcd URL[,URL...]]
    etcdwatch watch  PREFIX [--json]
    etcdwatch elect  NAME [--grace SECONDS] -- COMMAND [ARGS...]
    etcdwatch leader NAME

Every subcommand takes ``--etcd HOST:PORT[,HOST:PORT...]`` (default
``$ETCDWATCH_ETCD``, else ``127.0.0.1:2379``; ``demo`` runs on an in-memory
etcd unless given one), ``--api v2|v3`` (default ``$ETCDWATCH_API``, else
v2) and ``--help``.

Exit status: 0 success; 1 what the subcommand calls a failure (``leader``:
there is no leader); 2 a usage error (one line on stderr); 3 etcd could not
be reached, or does not serve the API asked for (one line on stderr, no
traceback); ``elect`` exits with COMMAND's status (128 + N when signal N
ended it; 127 or 126 when it could not be started).
"""

import argparse
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, NoReturn, \
    Optional, Sequence, TextIO, Tuple

from etcdwatch import backends
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import watcher

PROG = 'etcdwatch'
DEFAULT_ETCD = '127.0.0.1:2379'
DEFAULT_PORT = 2379
ENV_ETCD = 'ETCDWATCH_ETCD'
ENV_API = 'ETCDWATCH_API'
APIS = ('v2', 'v3')
DEFAULT_API = 'v2'
DEFAULT_ELECTION_PATH = '/etcdwatch/elections'

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

LOG = logging.getLogger('etcdwatch.cli')


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


# -- arguments ---------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
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


def _seconds(text: str) -> float:
    try:
        return float(keys.check_duration('value', float(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            'expected a number of seconds above 0, not %r' % text)


def _checked(check: Callable[[str, str], str], what: str
             ) -> Callable[[str], str]:
    def convert(text: str) -> str:
        try:
            return check(what, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    convert.__name__ = what
    return convert


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
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
        '--timeout', metavar='SECONDS', type=_seconds,
        default=5.0 if top else argparse.SUPPRESS,
        help='the longest one request to etcd may take (default 5)')
    group.add_argument('--cacert', metavar='FILE', default=default,
                       help='verify etcd with this CA bundle (TLS)')
    group.add_argument('--cert', metavar='FILE', default=default,
                       help='TLS client certificate')
    group.add_argument('--key', metavar='FILE', default=default,
                       help='TLS client key (with --cert)')
    group.add_argument('-v', '--verbose', action='count',
                       default=0 if top else argparse.SUPPRESS,
                       help="also log the library's own messages (-vv: "
                            'debug, with tracebacks)')
    group.add_argument('-q', '--quiet', action='store_true',
                       default=False if top else argparse.SUPPRESS,
                       help='print nothing on stderr but errors')


def _add_election(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('name', metavar='NAME',
                        type=_checked(keys.check_name, 'NAME'),
                        help='what is led: one leader per NAME and '
                             '--election-path')
    parser.add_argument(
        '--election-path', metavar='PATH',
        type=_checked(keys.check_path, '--election-path'),
        default=DEFAULT_ELECTION_PATH,
        help='etcd directory of the election keys (default %s); the key '
             'is PATH/master_NAME' % DEFAULT_ELECTION_PATH)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``etcdwatch`` command."""
    parser = _Parser(
        prog=PROG,
        description='Leader election and prefix watchers for etcd (v2 '
                    'or v3 API), from the command line.',
        epilog='Exit status: 0 ok, 1 failure (leader: no leader), 2 usage '
               'error, 3 etcd unreachable; elect: COMMAND\'s status.')
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest='subcommand', metavar='COMMAND',
                                parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser(
        'demo', help='three workers elect a leader that prints changes',
        description='Three workers elect a leader; the leader prints the '
                    'changes a writer makes; the leader stops, another '
                    'takes over, then hangs, and a third takes over.  Runs '
                    'on an embedded in-memory etcd unless --etcd is given.')
    _add_common(demo, top=False)
    demo.add_argument('--prefix', metavar='PATH',
                      type=_checked(keys.check_path, '--prefix'),
                      default='/etcdwatch-demo',
                      help='etcd directory the demo works under (a '
                           'sub-directory of its own, deleted at the end)')

    watch = sub.add_parser(
        'watch', help='print every key under PREFIX, then every change',
        description='Print every key under PREFIX, then every change, one '
                    'line each, until interrupted (Ctrl-C or SIGTERM: exit '
                    'status 0).  Keeps going across etcd restarts; when '
                    "etcd's history no longer reaches back, it re-reads "
                    'PREFIX and prints only what differs.',
        epilog='Line format: INDEX ACTION KEY [= VALUE], ACTION being add, '
               'change or delete.  --json: {"action", "key", "value", '
               '"index"} per line.')
    _add_common(watch, top=False)
    watch.add_argument('prefix', metavar='PREFIX',
                       type=_checked(keys.check_path, 'PREFIX'),
                       help='etcd directory to follow, e.g. /app/ports')
    watch.add_argument('--json', action='store_true',
                       help='one JSON object per line')
    watch.add_argument('--heartbeat', metavar='SECONDS', type=_seconds,
                       default=10.0,
                       help='longest single watch request (default 10)')

    elect = sub.add_parser(
        'elect', help='run COMMAND only while elected leader of NAME',
        usage='%s elect [options] NAME -- COMMAND [ARGS...]' % PROG,
        description='Campaign for NAME; once elected, run COMMAND.  When '
                    'leadership is lost, send COMMAND SIGTERM, then '
                    'SIGKILL after --grace seconds, and campaign again.  '
                    'When COMMAND exits on its own, resign and exit with '
                    'its status.  SIGINT/SIGTERM/SIGHUP are passed on to '
                    'COMMAND.  COMMAND finds $ETCDWATCH_LEADER_ID and '
                    '$ETCDWATCH_FENCING_TOKEN in its environment.')
    _add_common(elect, top=False)
    _add_election(elect)
    elect.add_argument('command', metavar='COMMAND', nargs='*',
                       help='the command to run, and its arguments, after '
                            '"--"')
    elect.add_argument('--ttl', metavar='SECONDS', type=_seconds,
                       default=10.0,
                       help="the election key's TTL: a dead leader is "
                            'replaced within it (default 10)')
    elect.add_argument('--recovery-time', metavar='SECONDS', type=_seconds,
                       default=5.0,
                       help='longest a follower sleeps between looks at '
                            'the key if a notification is lost (default 5)')
    elect.add_argument('--grace', metavar='SECONDS', type=_seconds,
                       default=5.0,
                       help='SIGKILL COMMAND this long after SIGTERM '
                            '(default 5)')

    leader = sub.add_parser(
        'leader', help="print the current leader's id",
        description="Print the id of NAME's current leader "
                    '(host:pid:random), or exit with status 1 if there is '
                    'none.')
    _add_common(leader, top=False)
    _add_election(leader)
    parser.subcommands = {'demo': demo, 'watch': watch, 'elect': elect,
                          'leader': leader}
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


# -- etcd --------------------------------------------------------------------

def describe(endpoints: Sequence[Endpoint]) -> str:
    """``http://h:p,http://h2:p2``, for messages."""
    return ','.join('%s://%s:%d' % (e.protocol or 'http',
                                    '[%s]' % e.host if ':' in e.host
                                    else e.host, e.port)
                    for e in endpoints)


def reason(exc: BaseException) -> str:
    """A short, human reason for an etcd failure (no traceback)."""
    texts: List[str] = []
    seen: Optional[BaseException] = exc
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or getattr(seen, 'cause', None)
    text = ' '.join(texts)
    match = re.search(r'\[Errno -?\d+\] ([^\'"()\]]+)', text)
    if match:
        return match.group(1).strip().rstrip('.').lower()
    if 'timed out' in text.lower() or 'timeout' in text.lower():
        return 'timed out'
    if 'Connection broken' in text or 'RemoteDisconnected' in text:
        return 'connection lost'
    lines = [line for line in str(exc).splitlines() if line.strip()]
    short = lines[0] if lines else type(exc).__name__
    return short if len(short) <= 160 else short[:157] + '...'


def _import_etcd3gw() -> Any:
    with warnings.catch_warnings():
        # etcd3gw imports eventlet (through futurist), which warns that it
        # is deprecated: nothing a user of this command can act on.
        warnings.filterwarnings('ignore', message=r'\s*Eventlet is '
                                'deprecated')
        try:
            import etcd3gw
        except ImportError as e:
            raise CliError("--api v3 needs etcd3gw (%s): pip install "
                           "'etcdwatch[v3]'" % e, EXIT_USAGE)
    return etcd3gw


def _make_v3_client(args: argparse.Namespace, protocol: str) -> Any:
    kwargs: Dict[str, Any] = {'endpoints': [(e.host, e.port)
                                            for e in args.etcd],
                              'protocol': protocol,
                              'timeout': args.timeout}
    if args.cacert:
        kwargs['ca_cert'] = args.cacert
    if args.cert:
        # Without --key, FailoverEtcd3Client takes --cert to hold the key.
        kwargs['cert_cert'] = args.cert
        kwargs['cert_key'] = args.key
    _import_etcd3gw()
    from etcdwatch import v3client
    # Sends nothing yet: probe() is the first request.  Knows every
    # member, and ignores $REQUESTS_CA_BUNDLE and proxy variables, as
    # python-etcd does.
    return v3client.client(**kwargs)


def make_client(args: argparse.Namespace) -> Any:
    """A client for the ``--etcd``, ``--api`` and TLS options.

    python-etcd's ``etcd.Client`` for ``--api v2``, etcd3gw's
    ``Etcd3Client`` for v3.
    """
    endpoints = args.etcd
    protocols = {e.protocol for e in endpoints if e.protocol}
    if len(protocols) > 1:
        raise CliError('--etcd mixes http:// and https://', EXIT_USAGE)
    protocol = protocols.pop() if protocols else (
        'https' if args.cacert or args.cert else 'http')
    if args.api == 'v3':
        return _make_v3_client(args, protocol)
    import etcd
    kwargs: Dict[str, Any] = {'protocol': protocol,
                              'read_timeout': args.timeout}
    if args.cacert:
        kwargs['ca_cert'] = args.cacert
    if args.cert:
        kwargs['cert'] = (args.cert, args.key) if args.key else args.cert
    if len(endpoints) == 1:
        kwargs.update(host=endpoints[0].host, port=endpoints[0].port)
    else:
        kwargs.update(host=tuple((e.host, e.port) for e in endpoints),
                      allow_reconnect=True)
    try:
        # With several members python-etcd asks them for the cluster's
        # member list right away.
        return etcd.Client(**kwargs)
    except etcd.EtcdException as e:
        why = reason(e)
        if 'list of servers' in why:
            why = 'none of them answered'
        raise CliError('cannot reach etcd at %s: %s'
                       % (describe(endpoints), why), EXIT_UNAVAILABLE)


def probe(client: Any, key: str, endpoints: Sequence[Endpoint]) -> None:
    """Read ``key`` once; raise :class:`CliError` if etcd cannot answer.

    Through the client's backend: a v2 or a v3 read.
    """
    backend = backends.for_client(client)
    try:
        backend.read_key(key)
    except exceptions.EtcdUnavailable as e:
        raise CliError('cannot reach etcd at %s: %s'
                       % (describe(endpoints), reason(e)), EXIT_UNAVAILABLE)
    except exceptions.BackendError as e:
        hint = ''
        if backend.name == 'v3':
            hint = ' (it needs etcd 3.4 or later)'
        elif '404' in str(e):
            hint = ' (is it started with --enable-v2=true? or try --api v3)'
        raise CliError('etcd at %s does not serve the %s API%s: %s'
                       % (describe(endpoints), backend.name, hint,
                          reason(e)), EXIT_UNAVAILABLE)


def _etcd_for(args: argparse.Namespace, key: str) -> Any:
    if args.etcd is None:
        args.etcd = parse_endpoints(os.environ.get(ENV_ETCD) or
                                    DEFAULT_ETCD)
    client = make_client(args)
    probe(client, key, args.etcd)
    return client


# -- output ------------------------------------------------------------------

class _OneLineFormatter(logging.Formatter):
    """``etcdwatch CMD: message (reason)``; tracebacks only if verbose."""

    def __init__(self, prog: str, tracebacks: bool) -> None:
        super(_OneLineFormatter, self).__init__()
        self.prog = prog
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        text = '%s: %s' % (self.prog, record.getMessage())
        info = record.exc_info
        exc = info[1] if info else None
        if info and exc is not None:
            if self.tracebacks:
                text += '\n' + self.formatException(info)
            else:
                text += ' (%s)' % reason(exc)
        return text


def setup_logging(prog: str, verbose: int, quiet: bool,
                  stream: Optional[TextIO] = None) -> Callable[[], None]:
    """Log to stderr, one line per message; returns what undoes it.

    The command's own notes are shown unless ``quiet``; the library's
    warnings always, its info with ``-v``; python-etcd's and tracebacks
    with ``-vv``.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_OneLineFormatter(prog, verbose >= 2))
    root = logging.getLogger()
    library = logging.getLogger('etcdwatch')
    # python-etcd logs every failed request as an error, which repeats
    # what etcdwatch reports.
    python_etcd = logging.getLogger('etcd')
    # urllib3 warns of each retry of a connection.
    transport = logging.getLogger('urllib3')
    loggers = (root, library, LOG, python_etcd, transport)
    saved = [logger.level for logger in loggers]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    library.setLevel(logging.WARNING if verbose == 0 else
                     logging.INFO if verbose == 1 else logging.DEBUG)
    LOG.setLevel(logging.WARNING if quiet else
                 logging.DEBUG if verbose >= 2 else logging.INFO)
    python_etcd.setLevel(logging.DEBUG if verbose >= 2 else
                         logging.CRITICAL)
    transport.setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)

    def restore() -> None:
        root.removeHandler(handler)
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)
    return restore


def _printable(value: str) -> str:
    return value if value.isprintable() else json.dumps(value)


def format_change(action: str, key: str, value: Optional[str],
                  index: Optional[int], as_json: bool = False) -> str:
    """One output line of ``etcdwatch watch`` (without the newline)."""
    if as_json:
        return json.dumps({'action': action, 'key': key, 'value': value,
                           'index': index}, sort_keys=True)
    text = '%6s  %-6s  %s' % ('-' if index is None else index, action, key)
    if value is not None:
        text += ' = ' + _printable(value)
    return text


class _Signals(object):
    """Route SIGINT/SIGTERM/SIGHUP into a queue while in effect.

    ``queue.SimpleQueue.put`` is reentrant, so a handler may put while the
    main thread is inside a ``get``.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, events: 'queue.SimpleQueue[Tuple[str, Any]]'
                 ) -> None:
        self.events = events
        self._saved: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.events.put(('signal', signum))

    def __enter__(self) -> '_Signals':
        for signum in self.SIGNALS:
            self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, saved in self._saved.items():
            signal.signal(signum, saved)


# -- watch -------------------------------------------------------------------

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


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    client = _etcd_for(args, args.prefix)
    events: 'queue.SimpleQueue[Tuple[str, Any]]' = queue.SimpleQueue()
    broken: List[bool] = []

    def emit(action: str, key: str, value: Optional[str],
             index: Optional[int]) -> None:
        if broken:
            return
        try:
            out.write(format_change(action, key, value, index, args.json) +
                      '\n')
            out.flush()
        except (BrokenPipeError, ValueError):
            # The reader went away (| head): stop quietly.
            broken.append(True)
            events.put(('broken', None))

    with _Signals(events):
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
        _silence_stdout()
        return EXIT_FAILURE
    return EXIT_OK


def _silence_stdout() -> None:
    # As the Python docs advise for SIGPIPE: point stdout at devnull so
    # the flush at exit does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- leader ------------------------------------------------------------------

def cmd_leader(args: argparse.Namespace, out: TextIO) -> int:
    key = '%s/master_%s' % (args.election_path, args.name)
    client = _etcd_for(args, key)
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
    out.write(leader + '\n')
    out.flush()
    return EXIT_OK


# -- elect -------------------------------------------------------------------

def _exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A preexec_fn making the kernel SIGKILL the child if we die.

    So that COMMAND cannot outlive an ``elect`` that was SIGKILLed (and
    run on while another host leads).  Linux only; the parent is the
    spawning *thread*, so the child must be spawned by the main thread.
    """
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(1, sigkill)    # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class Supervisor(object):
    """Runs COMMAND while this process leads ``name`` (``etcdwatch elect``).

    One main loop owns the child; the election's thread, a campaign
    thread and the child's waiter only post events to it.
    """

    def __init__(self, client: Any, name: str, election_path: str,
                 command: List[str], ttl: float, recovery_time: float,
                 grace: float) -> None:
        self.command = command
        self.grace = grace
        self.events: 'queue.SimpleQueue[Tuple[str, Any]]' = (
            queue.SimpleQueue())
        self.elector = election.EtcdElection(
            client, name, election_path, work_time=ttl,
            recovery_time=recovery_time,
            on_lost=lambda term: self.events.put(('lost', term)))
        self.check_in_every = ttl / 4.0
        self.child: Optional['subprocess.Popen[bytes]'] = None
        self.term: Optional[election.Term] = None
        self._campaigner: Optional[threading.Thread] = None
        self._kill_at: Optional[float] = None
        self._losing = False
        self._exiting = False
        self._preexec = _parent_death_signal()

    def run(self) -> int:
        """Campaign, run COMMAND while elected; return the exit status."""
        with _Signals(self.events):
            try:
                self._campaign()
                while True:
                    status = self._step()
                    if status is not None:
                        return status
            finally:
                if self.child is not None and self.child.poll() is None:
                    self.child.kill()
                    self.child.wait()
                self.elector.resign()

    def _step(self) -> Optional[int]:
        timeout = self.check_in_every
        if self._kill_at is not None:
            timeout = max(0.0, min(timeout, self._kill_at - time.monotonic()))
        try:
            kind, arg = self.events.get(timeout=timeout)
        except queue.Empty:
            kind, arg = 'tick', None
        self._tick()
        return getattr(self, '_on_' + kind)(arg)

    def _tick(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            LOG.warning('COMMAND still runs %ss after SIGTERM: SIGKILL',
                        self.grace)
            self._kill_at = None
            self._signal_child(signal.SIGKILL)
        if self.child is not None and not (self._losing or self._exiting):
            try:
                self.elector.check_in()
            except exceptions.EtcdElectionLost:
                self._lose(self.term)

    def _on_tick(self, _arg: None) -> None:
        return None

    def _on_elected(self, term: Optional[election.Term]) -> Optional[int]:
        self._campaigner = None
        if (self._exiting or self.child is not None or term is None or
                term.lost.is_set()):
            # Lost already: its 'lost' event follows.
            if term is None and not self._exiting:
                self._campaign()
            return None
        self.term = term
        env = dict(os.environ,
                   ETCDWATCH_ELECTION=self.elector.name,
                   ETCDWATCH_LEADER_ID=self.elector.thread_id,
                   ETCDWATCH_FENCING_TOKEN=str(term.fencing_token))
        try:
            child = subprocess.Popen(self.command, env=env,
                                     preexec_fn=self._preexec)
        except OSError as e:
            LOG.error('cannot run %s: %s', self.command[0],
                      e.strerror or e)
            return 127 if isinstance(e, FileNotFoundError) else 126
        self.child = child
        LOG.info('elected (term %s, id %s): started %s (pid %d)',
                 term.fencing_token, self.elector.thread_id,
                 self.command[0], child.pid)
        threading.Thread(target=self._wait_child, args=(child,),
                         name='etcdwatch-child', daemon=True).start()
        return None

    def _wait_child(self, child: 'subprocess.Popen[bytes]') -> None:
        self.events.put(('exited', (child, child.wait())))

    def _on_lost(self, term: Optional[election.Term]) -> None:
        if term is not None and term is self.term:
            self._lose(term)
        return None

    def _lose(self, term: Optional[election.Term]) -> None:
        if self._losing or term is None or term is not self.term:
            return
        self._losing = True
        if self.child is not None and self.child.poll() is None:
            LOG.warning('lost leadership (term %s): stopping %s (SIGTERM, '
                        'SIGKILL after %ss)', term.fencing_token,
                        self.command[0], self.grace)
            self._signal_child(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace
        else:
            self.elector.resign()
        # Else the key (if it is still ours: the term may have ended on a
        # lease deadline while etcd was out of reach) is released when
        # COMMAND has exited, not before.  Nothing renews it meanwhile, so
        # it can still expire while COMMAND runs out its grace: keep
        # --grace short against --ttl.

    def _on_exited(self, arg: Tuple['subprocess.Popen[bytes]', int]
                   ) -> Optional[int]:
        child, returncode = arg
        if child is not self.child:
            return None
        self.child = None
        self.term = None
        self._kill_at = None
        status = _exit_status(returncode)
        if self._exiting:
            return status
        if self._losing:
            self._losing = False
            LOG.info('%s ended (status %d); campaigning again',
                     self.command[0], status)
            self.elector.resign()
            self._campaign()
            return None
        LOG.info('%s exited with status %d; resigning', self.command[0],
                 status)
        return status

    def _on_signal(self, signum: int) -> Optional[int]:
        if self._exiting:
            return None
        self._exiting = True
        if self.child is None:
            return EXIT_OK
        LOG.info('%s: passing it on to %s', signal.Signals(signum).name,
                 self.command[0])
        self._signal_child(signum)
        if self._kill_at is None:
            self._kill_at = time.monotonic() + self.grace
        return None

    def _on_failed(self, exc: BaseException) -> None:
        LOG.error('campaign failed: %s; retrying', reason(exc))
        self._campaigner = None
        time.sleep(self.elector.recovery_time)
        if not self._exiting:
            self._campaign()
        return None

    def _signal_child(self, signum: int) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    def _campaign(self) -> None:
        if self._campaigner is not None and self._campaigner.is_alive():
            return

        def campaign() -> None:
            try:
                self.elector.wait_until_elected()
            except Exception as e:
                self.events.put(('failed', e))
                return
            self.events.put(('elected', self.elector.term))

        self._campaigner = threading.Thread(
            target=campaign, name='etcdwatch-campaign', daemon=True)
        self._campaigner.start()


def cmd_elect(args: argparse.Namespace, out: TextIO) -> int:
    key = '%s/master_%s' % (args.election_path, args.name)
    client = _etcd_for(args, key)
    supervisor = Supervisor(client, args.name, args.election_path,
                            args.command, ttl=args.ttl,
                            recovery_time=args.recovery_time,
                            grace=args.grace)
    LOG.info('campaigning for %s as %s', key, supervisor.elector.thread_id)
    return supervisor.run()


# -- demo --------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
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


# -- main --------------------------------------------------------------------

_COMMANDS: Dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    'demo': cmd_demo,
    'watch': cmd_watch,
    'elect': cmd_elect,
    'leader': cmd_leader,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``etcdwatch`` command; returns its exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prog = '%s %s' % (PROG, args.subcommand)
    restore_logging = setup_logging(prog, args.verbose, args.quiet)
    try:
        return _COMMANDS[args.subcommand](args, sys.stdout)
    except CliError as e:
        LOG.error('%s', e)
        return e.status
    except ValueError as e:
        # An argument the library refused (checked before any request).
        LOG.error('%s', e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        sys.stdout.flush()
        restore_logging()


if __name__ == '__main__':
    sys.exit(main())
