"""Connecting to etcd the way an OpenStack service does: options, a client.

:class:`EtcdClientFactory` checks a connection's settings (API version,
hosts, protocol, credentials, TLS files, timeout) and builds clients from
them: python-etcd ``etcd.Client`` for etcd's v2 API (the default), etcd3gw
``Etcd3Client`` for its v3 API (``api_version = v3``).  Bad settings raise
:class:`ConfigError`, a ``ValueError`` naming the option, when the factory
is made: before any connection.

The same settings as oslo.config options::

    from oslo_config import cfg
    from etcdwatch import config

    conf = cfg.ConfigOpts()
    config.register_opts(conf, group='etcd')   # the group is the caller's
    conf(['--config-file', 'agent.conf'])
    client = config.client_from_conf(conf, group='etcd')

Importing this module registers nothing on oslo.config's global ``CONF``.
:func:`list_opts` is the ``oslo.config.opts`` entry point, for
``oslo-config-generator --namespace etcdwatch``.

The password is never part of a log line, a repr or an exception message
of this module.
"""

import copy
import importlib.util
import ipaddress
import os
import re
import ssl

import etcd
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

__all__ = ['ConfigError', 'EtcdClientFactory', 'client_from_conf',
           'list_opts', 'parse_hosts', 'register_opts']

DEFAULT_GROUP = 'etcd'
DEFAULT_PORT = 2379
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_API_VERSION = 'v2'
API_VERSIONS = ('v2', 'v3')
_V3_INSTALL = "pip install '.[v3]' (from a clone of etcdwatch)"

_OPTS = [
    cfg.StrOpt('api_version', default=DEFAULT_API_VERSION,
               choices=[('v2', "etcd's v2 API, through python-etcd"),
                        ('v3', "etcd's v3 API, through etcd3gw (%s)"
                               % _V3_INSTALL)],
               help="Which of etcd's APIs to use.  v2 needs etcd 3.5 or "
                    "older started with --enable-v2 (etcd 3.6 has no v2 "
                    "API); v3 works on every etcd >= 3.4 and needs "
                    "etcd3gw (%s).  The two APIs do not share data: keys "
                    "written through one are invisible to the other.  "
                    "With v3, several hosts give a client that moves on "
                    "to the next member when one is down "
                    "(etcdwatch.v3client; allow_reconnect is not used), "
                    "and username and password authenticate with etcd's "
                    "v3 auth (a token, renewed when it expires)."
                    % _V3_INSTALL),
    cfg.StrOpt('host', default='127.0.0.1', deprecated_name='etcd_host',
               help='The etcd members to connect to: a comma-separated list '
                    'of host or host:port entries, such as '
                    '"10.0.0.1:2379,10.0.0.2:2379".  A host without a '
                    'port takes the port option.  IPv6 addresses go in '
                    'brackets: "[fd00::1]:2379".  With several hosts, '
                    'allow_reconnect must be true.'),
    cfg.PortOpt('port', default=DEFAULT_PORT, min=1,
                deprecated_name='etcd_port',
                help='The port of every host entry that does not give '
                     'its own.'),
    cfg.StrOpt('protocol', default='http',
               choices=[('http', 'plain HTTP'),
                        ('https', 'HTTPS; needs ca_cert')],
               help='How to talk to etcd.'),
    cfg.StrOpt('username', deprecated_name='etcd_user',
               help="The etcd user: v2, HTTP basic auth (ASCII, no ':'); "
                    "v3, etcd's v3 authentication (a token from "
                    "/v3/auth/authenticate, renewed when it expires).  "
                    "Set together with password, or not at all."),
    cfg.StrOpt('password', secret=True, deprecated_name='etcd_pass',
               help='The password of username.  ASCII.  Sent with every '
                    'request, so use protocol = https.'),
    cfg.StrOpt('ca_cert', deprecated_name='etcd_ca_cert',
               help='PEM file of the CA certificate(s) that etcd\'s server '
                    'certificate must chain to.  Required with protocol = '
                    'https; the system CAs are not used.'),
    cfg.StrOpt('cert_file',
               help='PEM file of the client certificate to present when '
                    'etcd requires one (its client-cert-auth flag).  It '
                    'may hold the key as well; otherwise set key_file.'),
    cfg.StrOpt('key_file',
               help='PEM file of the unencrypted private key of cert_file '
                    '(python-etcd cannot pass a key password).'),
    cfg.FloatOpt('read_timeout', default=DEFAULT_READ_TIMEOUT, min=0.1,
                 help='Seconds a request other than a watch may take, '
                      'connecting included, before it fails (or, with '
                      'allow_reconnect, moves to the next member).  '
                      'Watches have their own timeouts: a watcher\'s '
                      'heartbeat, an election\'s recovery_time.'),
    cfg.BoolOpt('allow_reconnect', default=True,
                help='Fail over to the other members when a request '
                     'fails.  The client then asks etcd for its member '
                     'list when it is created, so etcd must be reachable '
                     'at that moment.  Required with several hosts.'),
]


def list_opts():
    """The ``oslo.config.opts`` entry point: ``[('etcd', [options])]``.

    Copies, so a generator run cannot change the options registered by
    :func:`register_opts`.  'etcd' is only the suggested group: an
    application registers the options wherever it likes.
    """
    return [(DEFAULT_GROUP, copy.deepcopy(_OPTS))]


def register_opts(conf, group=DEFAULT_GROUP):
    """Register the options on ``conf`` in ``group``; idempotent.

    ``group`` is a name or an ``oslo_config.cfg.OptGroup``.  Give them a
    group of their own: ``host`` would clash with the ``host`` option many
    services keep in DEFAULT.
    """
    conf.register_opts(_OPTS, group=group)


def client_from_conf(conf, group=DEFAULT_GROUP):
    """A client built from ``conf``'s ``group``.

    A python-etcd ``etcd.Client``, or an etcd3gw ``Etcd3Client`` when
    ``api_version = v3``.  Registers the options first if needed.  Raises
    :class:`ConfigError` for bad settings; on v2 with allow_reconnect,
    python-etcd's ``etcd.EtcdException`` when no member answers.
    """
    register_opts(conf, group)
    return EtcdClientFactory.from_conf(conf, group).client()


class ConfigError(ValueError):
    """A connection setting is wrong; ``option`` names it.

    ``group`` is the oslo.config group, when the settings came from one.
    The message never contains the password.
    """

    def __init__(self, option, reason, group=None):
        self.option = option
        self.reason = reason
        self.group = group
        where = option if group is None else '[%s] %s' % (group, option)
        super(ConfigError, self).__init__('etcd option %s: %s'
                                          % (where, reason))


# Host names and IPv4 addresses as they may appear in a URL's authority.
_NAME = re.compile(r'^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$')
_BRACKETED = re.compile(r'^\[([^\]]*)\](?::(.*))?$')


def _check_port(option, value, entry=None):
    where = '' if entry is None else ' in %r' % (entry,)
    if isinstance(value, str):
        if not re.match(r'^[0-9]{1,5}$', value):
            raise ConfigError(option, 'port %r%s is not a number from 1 to '
                              '65535' % (value, where))
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int) or
            not 1 <= value <= 65535):
        raise ConfigError(option, 'port %r%s is not a number from 1 to '
                          '65535' % (value, where))
    return value


def _parse_entry(entry, default_port):
    if '@' in entry:
        # Do not echo it: it may hold a password.
        raise ConfigError('host', "an entry contains '@': credentials do "
                          "not go in host; use username and password")
    if '/' in entry:
        raise ConfigError('host', 'entries are host or host:port, not URLs '
                          '(set protocol instead): %r' % (entry,))
    match = _BRACKETED.match(entry)
    if match:
        address, port = match.groups()
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ConfigError('host', '%r is not an IPv6 address in '
                              'brackets, as in "[::1]:2379"'
                              % (entry,)) from None
        if '%' in address:
            raise ConfigError('host', 'IPv6 zone ids are not supported: %r'
                              % (entry,))
        host = '[%s]' % address
    elif '[' in entry or ']' in entry:
        raise ConfigError('host', '%r is not an IPv6 address in brackets, '
                          'as in "[::1]:2379"' % (entry,))
    elif entry.count(':') > 1:
        raise ConfigError('host', 'IPv6 addresses go in brackets, as in '
                          '"[::1]:2379": %r' % (entry,))
    else:
        host, colon, port = entry.partition(':')
        if not colon:
            port = None
        if not _NAME.match(host):
            raise ConfigError('host', '%r is not a host name or IP address'
                              % (entry,))
        if re.match(r'^[0-9.]+$', host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ConfigError('host', '%r is not a valid IPv4 address'
                                  % (entry,)) from None
    if port is None:
        return host, default_port
    return host, _check_port('host', port, entry)


def parse_hosts(hosts, default_port=DEFAULT_PORT):
    """Parse ``"h1:2379,h2,[::1]:2379"`` into ``[(host, port), ...]``.

    ``hosts`` is that string or a list of its entries.  Entries are
    ``host`` or ``host:port``; a host without a port takes
    ``default_port``.  IPv6 addresses come back in brackets, the form
    python-etcd needs to build URLs.  Raises :class:`ConfigError` (option
    'host' or 'port') for an empty list or entry, a bad port, an
    unbracketed IPv6 address, a URL or anything else that cannot be a host.
    """
    default_port = _check_port('port', default_port)
    if isinstance(hosts, str):
        entries = hosts.split(',')
    elif isinstance(hosts, (list, tuple)):
        entries = list(hosts)
    else:
        raise ConfigError('host', 'must be a string like "h1:2379,h2:2379", '
                          'not %r' % (hosts,))
    if not entries or all(not str(e).strip() for e in entries):
        raise ConfigError('host', 'no host given')
    parsed = []
    for position, entry in enumerate(entries, 1):
        if not isinstance(entry, str):
            raise ConfigError('host', 'entries must be strings, not %r'
                              % (entry,))
        entry = entry.strip()
        if not entry:
            raise ConfigError('host', 'entry %d of %d is empty'
                              % (position, len(entries)))
        parsed.append(_parse_entry(entry, default_port))
    return parsed


def _blank(value):
    # oslo.config gives '' for "option =" in a file: that means unset.
    return value is None or value == ''


class _EncryptedKey(Exception):
    pass


def _refuse_key_password():
    raise _EncryptedKey()


def _check_file(option, path):
    if not isinstance(path, str):
        raise ConfigError(option, 'must be a file name, not %r' % (path,))
    if not os.path.isfile(path):
        raise ConfigError(option, 'file %r does not exist' % (path,))
    if not os.access(path, os.R_OK):
        raise ConfigError(option, 'file %r is not readable' % (path,))


def _check_tls_files(ca_cert, cert_file, key_file):
    """Load the files as python-etcd's TLS stack will, to fail early."""
    _check_file('ca_cert', ca_cert)
    try:
        ssl.create_default_context(cafile=ca_cert)
    except ssl.SSLError as e:
        raise ConfigError('ca_cert', '%r holds no PEM CA certificate (%s)'
                          % (ca_cert, e)) from None
    if key_file is not None and cert_file is None:
        raise ConfigError('cert_file', 'key_file is set but cert_file is '
                          'not')
    if cert_file is None:
        return
    _check_file('cert_file', cert_file)
    if key_file is not None:
        _check_file('key_file', key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_file, key_file,
                                password=_refuse_key_password)
    except _EncryptedKey:
        raise ConfigError('key_file' if key_file else 'cert_file',
                          'the private key is encrypted; neither '
                          'python-etcd nor etcd3gw can pass its '
                          'password') from None
    except ssl.SSLError as e:
        raise ConfigError('cert_file', '%r%s do not hold a PEM certificate '
                          'and its private key (%s)'
                          % (cert_file,
                             '' if key_file is None else
                             ' and key_file %r' % (key_file,), e)) from None


def _check_credential(option, value):
    if not isinstance(value, str):
        # Only the type: the value may be the password.
        raise ConfigError(option, 'must be a string, not %s'
                          % type(value).__name__)
    if not value.isascii() or not value.isprintable():
        # python-etcd encodes basic auth as latin-1; etcd compares UTF-8.
        raise ConfigError(option, 'must be printable ASCII')


def _import_etcd3gw():
    """etcd3gw, imported now (it imports eventlet, through futurist)."""
    try:
        import etcd3gw
    except ImportError as e:
        raise ConfigError('api_version', 'v3 needs etcd3gw, which cannot '
                          'be imported (%s): %s' % (e, _V3_INSTALL)) from e
    return etcd3gw


class EtcdClientFactory(object):
    """Checked etcd connection settings; :meth:`client` builds clients.

    :param host: ``"10.0.0.1:2379,10.0.0.2:2379"`` or a list of entries
        (see :func:`parse_hosts`); with ``api_version`` 'v3', a client
        that moves on to the next of them when one is down.
    :param port: the port of entries that give none.
    :param protocol: 'http' or 'https'.
    :param username: etcd user, with ``password`` (both or neither): on
        v2 sent as HTTP basic auth; on v3 the client authenticates
        (``/v3/auth/authenticate``) and sends the token, renewed when etcd
        refuses it (see :mod:`etcdwatch.backends.v3auth`).
    :param password: never shown in logs, repr or error messages.
    :param ca_cert: the CA file to verify etcd's certificate; required
        for https (the system CAs are not used), refused for http.
    :param cert_file: client certificate (may hold the key too).
    :param key_file: its unencrypted private key.
    :param read_timeout: seconds for any request but a watch.
    :param allow_reconnect: fail over to other members; required with
        several hosts.  Not used with ``api_version`` 'v3'.
    :param api_version: 'v2' (python-etcd clients, the default) or 'v3'
        (etcd3gw clients; needs the ``v3`` extra: ``pip install
        '.[v3]'`` in a clone).

    Everything is checked here, files included (they must load as PEM
    certificates and keys), and nothing is sent: a bad setting raises
    :class:`ConfigError` naming its option.  Empty strings count as unset.
    """

    def __init__(self, host='127.0.0.1', port=DEFAULT_PORT, protocol='http',
                 username=None, password=None, ca_cert=None, cert_file=None,
                 key_file=None, read_timeout=DEFAULT_READ_TIMEOUT,
                 allow_reconnect=True, api_version=DEFAULT_API_VERSION):
        if api_version not in API_VERSIONS:
            raise ConfigError('api_version', "must be 'v2' or 'v3', not %r"
                              % (api_version,))
        if (api_version == 'v3' and
                importlib.util.find_spec('etcd3gw') is None):
            raise ConfigError('api_version', 'v3 needs etcd3gw, which is '
                              'not installed: %s' % _V3_INSTALL)
        self.api_version = api_version
        self.hosts = parse_hosts(host, port)
        if protocol not in ('http', 'https'):
            raise ConfigError('protocol', "must be 'http' or 'https', not %r"
                              % (protocol,))
        self.protocol = protocol
        self.ca_cert = None if _blank(ca_cert) else ca_cert
        self.cert_file = None if _blank(cert_file) else cert_file
        self.key_file = None if _blank(key_file) else key_file
        if protocol == 'https':
            if self.ca_cert is None:
                raise ConfigError('ca_cert', 'protocol is https but ca_cert '
                                  'is not set: give the CA that signed '
                                  "etcd's certificate")
            _check_tls_files(self.ca_cert, self.cert_file, self.key_file)
        else:
            given = [name for name in ('ca_cert', 'cert_file', 'key_file')
                     if getattr(self, name) is not None]
            if given:
                raise ConfigError('protocol', '%s set but protocol is http, '
                                  'which would ignore them; set protocol to '
                                  'https' % ' and '.join(given))

        username = None if _blank(username) else username
        password = None if _blank(password) else password
        if username is not None:
            _check_credential('username', username)
            if ':' in username and api_version == 'v2':
                raise ConfigError('username', "must not contain ':' (HTTP "
                                  "basic auth splits on it)")
        if password is not None:
            _check_credential('password', password)
        if (username is None) != (password is None):
            missing = 'password' if password is None else 'username'
            other = 'username' if missing == 'password' else 'password'
            raise ConfigError(missing, '%s is set but %s is not; '
                              'both are needed to authenticate'
                              % (other, missing))
        self.username = username
        self._password = password

        if (isinstance(read_timeout, bool) or
                not isinstance(read_timeout, (int, float)) or
                not 0 < read_timeout < float('inf')):
            raise ConfigError('read_timeout', 'must be a number of seconds '
                              'greater than 0, not %r' % (read_timeout,))
        self.read_timeout = read_timeout
        if not isinstance(allow_reconnect, bool):
            raise ConfigError('allow_reconnect', 'must be True or False, '
                              'not %r' % (allow_reconnect,))
        if len(self.hosts) > 1 and not allow_reconnect and (
                api_version == 'v2'):
            raise ConfigError('allow_reconnect', 'host lists %d members, '
                              'which python-etcd uses only with '
                              'allow_reconnect' % len(self.hosts))
        self.allow_reconnect = allow_reconnect
        if self._password is not None and protocol == 'http':
            LOG.warning('etcd: the password for user %s goes over plain '
                        'HTTP to %s; set protocol to https', self.username,
                        self._hosts_text())

    @classmethod
    def from_conf(cls, conf, group=DEFAULT_GROUP):
        """The factory for ``conf``'s options in ``group``.

        The options must be registered (:func:`register_opts`).  A
        :class:`ConfigError` then names the group too.
        """
        name = getattr(group, 'name', group)
        section = getattr(conf, name)
        try:
            return cls(host=section.host, port=section.port,
                       protocol=section.protocol,
                       username=section.username,
                       password=section.password,
                       ca_cert=section.ca_cert,
                       cert_file=section.cert_file,
                       key_file=section.key_file,
                       read_timeout=section.read_timeout,
                       allow_reconnect=section.allow_reconnect,
                       api_version=section.api_version)
        except ConfigError as e:
            raise ConfigError(e.option, e.reason, group=name) from None

    def client_kwargs(self, include_password=False):
        """The keyword arguments :meth:`client` passes to build a client.

        For ``api_version`` 'v2', those of ``etcd.Client``; without
        ``include_password`` the password is replaced by ``'***'``: for
        logs and tests.

        For 'v3', those of :func:`etcdwatch.v3client.client`:
        ``endpoints`` (``(host, port)`` pairs, IPv6 addresses without
        brackets), ``protocol``, ``timeout`` (read_timeout) and, as set,
        ``ca_cert``, ``cert_cert`` and ``cert_key`` (cert_file again when
        it holds the key: etcd3gw ignores a certificate without a key),
        ``username`` and ``password`` (``'***'`` unless
        ``include_password``).
        """
        if self.api_version == 'v3':
            return self._etcd3gw_kwargs(include_password)
        kwargs = {'protocol': self.protocol,
                  'read_timeout': self.read_timeout,
                  'allow_reconnect': self.allow_reconnect}
        if len(self.hosts) == 1:
            kwargs['host'], kwargs['port'] = self.hosts[0]
        else:
            kwargs['host'] = tuple(self.hosts)
        if self.ca_cert is not None:
            kwargs['ca_cert'] = self.ca_cert
        if self.cert_file is not None:
            kwargs['cert'] = (self.cert_file if self.key_file is None
                              else (self.cert_file, self.key_file))
        if self.username is not None:
            kwargs['username'] = self.username
            kwargs['password'] = (self._password if include_password
                                  else '***')
        return kwargs

    def _etcd3gw_kwargs(self, include_password=False):
        kwargs = {'endpoints': [
                      (host[1:-1] if host.startswith('[') else host, port)
                      for host, port in self.hosts],
                  'protocol': self.protocol, 'timeout': self.read_timeout}
        if self.ca_cert is not None:
            kwargs['ca_cert'] = self.ca_cert
        if self.cert_file is not None:
            kwargs['cert_cert'] = self.cert_file
            kwargs['cert_key'] = (self.cert_file if self.key_file is None
                                  else self.key_file)
        if self.username is not None:
            kwargs['username'] = self.username
            kwargs['password'] = (self._password if include_password
                                  else '***')
        return kwargs

    def client(self):
        """A new client with these settings.

        For ``api_version`` 'v2', a python-etcd ``etcd.Client``: with
        allow_reconnect, python-etcd asks etcd for its members here and
        raises ``etcd.EtcdException`` if none of the hosts answers.

        For 'v3', a :class:`~etcdwatch.v3client.FailoverEtcd3Client` (an
        etcd3gw ``Etcd3Client`` that knows every host and moves on when
        one is down), which sends nothing until used.  Its ``requests``
        session ignores the environment (``$REQUESTS_CA_BUNDLE``, which
        requests would otherwise use instead of ca_cert; proxies;
        ``.netrc``), as python-etcd does.
        etcd3gw is imported here, not before (it imports eventlet, whose
        deprecation warning Python then shows once); if it cannot be,
        :class:`ConfigError` names ``api_version``.
        """
        LOG.debug('etcd: connecting with %r', self)
        if self.api_version == 'v3':
            _import_etcd3gw()
            from etcdwatch import v3client
            return v3client.client(**self._etcd3gw_kwargs(
                include_password=True))
        return etcd.Client(**self.client_kwargs(include_password=True))

    def _hosts_text(self):
        return ','.join('%s:%d' % hp for hp in self.hosts)

    def __repr__(self):
        parts = ['api_version=%s' % self.api_version,
                 'hosts=%s' % self._hosts_text(),
                 'protocol=%s' % self.protocol]
        if self.username is not None:
            parts.append('username=%r password=***' % self.username)
        for name in ('ca_cert', 'cert_file', 'key_file'):
            if getattr(self, name) is not None:
                parts.append('%s=%r' % (name, getattr(self, name)))
        parts.append('read_timeout=%r' % self.read_timeout)
        parts.append('allow_reconnect=%r' % self.allow_reconnect)
        return '<EtcdClientFactory %s>' % ' '.join(parts)
