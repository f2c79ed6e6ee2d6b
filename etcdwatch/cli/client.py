"""The etcd client of a command: its options, its first request, its errors."""

import argparse
import os
import re
import ssl
import warnings
from typing import Any, Dict, List, Sequence

from etcdwatch import backends
from etcdwatch.cli.common import CliError
from etcdwatch.cli.common import DEFAULT_ETCD
from etcdwatch.cli.common import Endpoint
from etcdwatch.cli.common import ENV_ETCD
from etcdwatch.cli.common import ENV_PASSWORD
from etcdwatch.cli.common import EXIT_UNAVAILABLE
from etcdwatch.cli.common import EXIT_USAGE
from etcdwatch.cli.common import parse_endpoints
from etcdwatch import exceptions
from etcdwatch import passwords

# An ssl error's text inside another error's message or repr.
_SSL_TEXT = re.compile(r'\[SSL(?:: [A-Z0-9_]+)?\] .*?'
                       r'(?= \(_ssl\.c:\d+\)|[\'"]\)|\Z)')


def describe(endpoints: Sequence[Endpoint]) -> str:
    """``http://h:p,http://h2:p2``, for messages."""
    return ','.join('%s://%s:%d' % (e.protocol or 'http',
                                    '[%s]' % e.host if ':' in e.host
                                    else e.host, e.port)
                    for e in endpoints)


def _carried(exc: BaseException) -> List[BaseException]:
    """``exc`` and the errors it wraps: causes, ``cause``, ``reason``, args.

    python-etcd keeps urllib3's error as ``cause``; urllib3 keeps the
    socket's or ssl's as ``reason``; requests keeps urllib3's in ``args``.
    """
    found: List[BaseException] = []
    todo = [exc]
    while todo and len(found) < 20:
        seen = todo.pop(0)
        if any(seen is f for f in found):
            continue
        found.append(seen)
        todo += [e for e in (seen.__cause__, getattr(seen, 'cause', None),
                             getattr(seen, 'reason', None)) + seen.args
                 if isinstance(e, BaseException)]
    return found


def reason(exc: BaseException) -> str:
    """A human reason for an etcd failure, in full, on one line.

    The socket's error (``connection refused``), ``timed out``, the ssl
    error (``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:
    ...``), else the message itself.
    """
    carried = _carried(exc)
    text = ' '.join(str(e) for e in carried)
    for seen in carried:
        if isinstance(seen, ssl.SSLError):
            text = str(seen)
            break
    match = _SSL_TEXT.search(text)
    if match:
        return match.group(0).rstrip('. ')
    match = re.search(r'\[Errno -?\d+\] ([^\'"()\]]+)', text)
    if match:
        return match.group(1).strip().rstrip('.').lower()
    if 'timed out' in text.lower() or 'timeout' in text.lower():
        return 'timed out'
    if 'Connection broken' in text or 'RemoteDisconnected' in text:
        return 'connection lost'
    return ' '.join(str(exc).split()) or type(exc).__name__


def _check_files(args: argparse.Namespace) -> None:
    """A usage error naming a TLS file that cannot be read."""
    for option in ('cacert', 'cert', 'key'):
        path = getattr(args, option)
        if not path:
            continue
        try:
            with open(path, 'rb'):
                pass
        except OSError as e:
            raise CliError('--%s %s: %s' % (option, path,
                                            (e.strerror or str(e)).lower()),
                           EXIT_USAGE)


def credentials(args: argparse.Namespace) -> Dict[str, str]:
    """``{'username': ..., 'password': ...}`` for ``--user``, or ``{}``.

    The password is the first line of ``--password-file``, else
    ``$ETCDWATCH_PASSWORD``.  A usage error (naming the option, never the
    password) when it is missing, empty or unreadable.
    """
    user = getattr(args, 'user', None)
    path = getattr(args, 'password_file', None)
    if user is None:
        if path:
            raise CliError('--password-file needs --user', EXIT_USAGE)
        return {}
    if not user or user != user.strip() or not user.isprintable():
        raise CliError('--user: %r is not a user name' % user, EXIT_USAGE)
    if path:
        try:
            return {'username': user, 'password': passwords.read_file(path)}
        except ValueError as e:
            raise CliError('--password-file %s: %s' % (path, e), EXIT_USAGE)
    password = passwords.from_environment()
    if password is None:
        raise CliError('--user %s needs a password: set $%s or give '
                       '--password-file' % (user, ENV_PASSWORD), EXIT_USAGE)
    return {'username': user, 'password': password}


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
                           "'.[v3]' in a clone of etcdwatch" % e, EXIT_USAGE)
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
    kwargs.update(credentials(args))
    _import_etcd3gw()
    from etcdwatch import v3client
    # Sends nothing yet: probe() is the first request.  Knows every
    # member, and ignores $REQUESTS_CA_BUNDLE and proxy variables, as
    # python-etcd does.
    return v3client.client(**kwargs)


def make_client(args: argparse.Namespace) -> Any:
    """A client for the ``--etcd``, ``--api`` and TLS options.

    python-etcd's ``etcd.Client`` for ``--api v2``, etcd3gw's
    ``Etcd3Client`` for v3.  A TLS file that cannot be read, or ``--user``
    without its password (:func:`credentials`), is a usage error.
    """
    endpoints = args.etcd
    protocols = {e.protocol for e in endpoints if e.protocol}
    if len(protocols) > 1:
        raise CliError('--etcd mixes http:// and https://', EXIT_USAGE)
    _check_files(args)
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
    kwargs.update(credentials(args))
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
    except exceptions.EtcdAuthError as e:
        raise CliError('etcd at %s: %s' % (describe(endpoints), e))
    except exceptions.BackendError as e:
        hint = ''
        if backend.name == 'v3':
            hint = ' (it needs etcd 3.4 or later)'
        elif '404' in str(e):
            hint = ' (is it started with --enable-v2=true? or try --api v3)'
        raise CliError('etcd at %s does not serve the %s API%s: %s'
                       % (describe(endpoints), backend.name, hint,
                          reason(e)), EXIT_UNAVAILABLE)


def etcd_for(args: argparse.Namespace, key: str) -> Any:
    """A client for the options, that has read ``key`` once."""
    if args.etcd is None:
        args.etcd = parse_endpoints(os.environ.get(ENV_ETCD) or
                                    DEFAULT_ETCD)
    client = make_client(args)
    probe(client, key, args.etcd)
    return client
