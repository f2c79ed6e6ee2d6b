"""networking-vpp's ``networking_vpp.etcdutils``, every name of it.

Replace networking-vpp's module with one line and keep everything else::

    # networking_vpp/etcdutils.py
    from etcdwatch.compat.networking_vpp import *  # noqa

The names and parameter names are networking-vpp's (its last version,
2020-12); they map onto etcdwatch (see docs/migration.rst):

* ``EtcdElection``, ``EtcdElectionLost``, ``cleanup_electors``: etcdwatch's
  own (:mod:`etcdwatch.election`).
* ``EtcdWatcher``, ``EtcdChangeWatcher``: etcdwatch's watchers, with the
  ``expected_keys`` attribute and the hook parameters ``added(key,
  value)`` / ``removed(key)`` of networking-vpp.
* ``register_etcd_conn_opts``, ``list_opts``, ``EtcdClientFactory``:
  networking-vpp's options (``etcd_host``, ``etcd_port`` = 4001, ...),
  checked by :mod:`etcdwatch.config` before any connection.
* ``EtcdWriter``, ``EtcdJSONWriter``, ``SignedEtcdJSONWriter``,
  ``ParsedEtcdResult``, ``json_writer``, ``EtcdHelper``: networking-vpp's
  semantics, values through :class:`JsonUtilsCodec` (an etcdwatch codec)
  and, signed, :mod:`etcdwatch.compat.networking_vpp_jwt`.

Exceptions are those networking-vpp's code catches: python-etcd's from
the writers and the helper; when networking-vpp is importable, its own
``networking_vpp.exceptions`` classes from the factory and its own
``jwt_agent`` for signing (so ``jwt_agent.JWTSigningFailed``); otherwise
this module's ``InvalidEtc*`` classes (``ValueError`` subclasses naming the option)
and :mod:`etcdwatch.compat.networking_vpp_jwt`.
"""

import abc
import functools
import importlib

import etcd
from oslo_config import cfg
from oslo_log import log as logging
from oslo_serialization import jsonutils

from etcdwatch import codecs
from etcdwatch import config
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import keys
from etcdwatch import watcher

LOG = logging.getLogger(__name__)

__all__ = ['ETC_HOSTS_DELIMITER', 'ETC_PORT_HOST_DELIMITER',
           'EtcdWriter', 'ParsedEtcdResult', 'json_writer',
           'EtcdJSONWriter', 'SignedEtcdJSONWriter', 'cleanup_electors',
           'EtcdElectionLost', 'EtcdElection', 'EtcdWatcher',
           'EtcdChangeWatcher', 'EtcdHelper', 'register_etcd_conn_opts',
           'list_opts', 'EtcdClientFactory', 'InvalidEtcdCAConfig',
           'InvalidEtcHostsConfig', 'InvalidEtcHostConfig']

ETC_HOSTS_DELIMITER = ','
ETC_PORT_HOST_DELIMITER = ':'

EtcdElection = election.EtcdElection
EtcdElectionLost = exceptions.EtcdElectionLost
cleanup_electors = election.cleanup_electors


# -- exceptions ---------------------------------------------------------------

class _InvalidConfig(config.ConfigError):
    # networking-vpp's classes take no arguments; these take the option
    # and the reason, with defaults, so both are raised the same way.
    _option = 'etcd_host'
    _reason = 'invalid'

    def __init__(self, option=None, reason=None, group=None):
        super(_InvalidConfig, self).__init__(option or self._option,
                                             reason or self._reason, group)


class InvalidEtcdCAConfig(_InvalidConfig):
    """HTTPS is on and etcd_ca_cert is not set, or not a CA file."""
    _option = 'etcd_ca_cert'
    _reason = 'Invalid etcd CA config.'


class InvalidEtcHostsConfig(_InvalidConfig):
    """etcd_host is not a string."""
    _reason = ('Invalid etc host config. Expect comma-separated list of '
               '<Host> or <Host:Port> format')


class InvalidEtcHostConfig(_InvalidConfig):
    """An entry of etcd_host (or etcd_port) is not usable."""
    _reason = ('Invalid etc host config. Expect an IP or host name in the '
               'form <Host> or <Host:Port>')


def _use_networking_vpp_exceptions():
    """Inside networking-vpp, raise the classes its code and tests catch."""
    try:
        theirs = importlib.import_module('networking_vpp.exceptions')
    except ImportError:
        return
    for name in ('InvalidEtcdCAConfig', 'InvalidEtcHostsConfig',
                 'InvalidEtcHostConfig'):
        if isinstance(getattr(theirs, name, None), type):
            globals()[name] = getattr(theirs, name)


_use_networking_vpp_exceptions()


def _jwt_agent():
    """networking-vpp's ``jwt_agent`` where importable, else ours."""
    try:
        return importlib.import_module('networking_vpp.jwt_agent')
    except ImportError:
        return importlib.import_module(
            'etcdwatch.compat.networking_vpp_jwt')


# -- values -------------------------------------------------------------------

class JsonUtilsCodec(codecs.JsonCodec):
    """An etcdwatch codec for JSON as networking-vpp writes it.

    ``encode`` is oslo.serialization's ``jsonutils.dumps`` (with sorted
    keys, so equal values give equal strings): bytes, sets, datetimes and
    the like become their primitive form, as in networking-vpp.
    ``decode`` is :class:`etcdwatch.codecs.JsonCodec`'s: ``ValueError``
    for anything that is not one JSON document.
    """

    def encode(self, value):
        return jsonutils.dumps(value, sort_keys=True)

    def __repr__(self):
        return 'JsonUtilsCodec()'


class EtcdWriter(abc.ABC):
    """Reads and writes values, turned to and from etcd's strings per key.

    Subclasses implement ``_process_read_value(key, value)`` and
    ``_process_written_value(key, value)``.  Keys written or deleted are
    checked first (:func:`etcdwatch.keys.check_path`): ``ValueError``
    naming ``key`` for one python-etcd would send elsewhere.  etcd's
    errors are python-etcd's own.
    """

    @abc.abstractmethod
    def _process_read_value(self, key, value):
        """Return the value for etcd's string ``value`` at ``key``."""

    @abc.abstractmethod
    def _process_written_value(self, key, value):
        """Return the string to store at ``key`` for ``value``."""

    def __init__(self, etcd_client):
        self.etcd_client = etcd_client

    def write(self, key, data, *args, **kwargs):
        """Store ``data`` at ``key``; other arguments go to the client."""
        key = keys.check_path('key', key)
        data = self._process_written_value(key, data)
        self.etcd_client.write(key, data, *args, **kwargs)

    def read(self, *args, **kwargs):
        """``client.read(...)`` as a :class:`ParsedEtcdResult`."""
        return ParsedEtcdResult(self, self.etcd_client.read(*args, **kwargs))

    def watch(self, *args, **kwargs):
        """``client.watch(...)`` as a :class:`ParsedEtcdResult`."""
        return ParsedEtcdResult(self,
                                self.etcd_client.watch(*args, **kwargs))

    def delete(self, key):
        """Delete ``key``: a key, else an empty directory; gone is fine.

        A directory that is not empty stays, silently (networking-vpp's
        behaviour).
        """
        key = keys.check_path('key', key)
        try:
            self.etcd_client.delete(key)
        except etcd.EtcdNotFile:
            try:
                self.etcd_client.delete(key, dir=True)
            except etcd.EtcdException:
                LOG.debug('%s is a directory that cannot be deleted', key)
        except etcd.EtcdKeyNotFound:
            pass


def _unchanged(name):
    return property(lambda self: getattr(self._result, name))


def _parsed_value(self):
    return self._reader._process_read_value(self._result.key,
                                            self._result.value)


class ParsedEtcdResult(etcd.EtcdResult):
    """A python-etcd result whose ``value`` is parsed by its reader.

    ``value`` is ``reader._process_read_value(key, raw value)``, parsed on
    each access, so an unparsable or badly signed value raises only when
    read (the reader's own exception: ``ValueError``,
    ``JWTSigningFailed``).  ``get_subtree()`` and ``leaves`` yield parsed
    results.  ``children`` are the raw results, as in networking-vpp,
    whose callers parse them themselves.  Every other attribute is the
    result's.
    """

    def __init__(self, reader, result):
        self._reader = reader
        self._result = result

    def get_subtree(self, *args, **kwargs):
        for node in self._result.get_subtree(*args, **kwargs):
            yield ParsedEtcdResult(self._reader, node)


for _name in ('key', 'expiration', 'ttl', 'modifiedIndex', 'createdIndex',
              'newKey', 'dir', 'etcd_index', 'raft_index', 'action',
              'children', '_prev_node'):
    setattr(ParsedEtcdResult, _name, _unchanged(_name))
# Set here rather than in the class body: python-etcd's own result has
# plain attributes of these names.
setattr(ParsedEtcdResult, 'value', property(_parsed_value))


def json_writer(etcd_client):
    """The writer networking-vpp's [ml2_vpp] jwt_signing option asks for."""
    if cfg.CONF.ml2_vpp.jwt_signing:
        return SignedEtcdJSONWriter(etcd_client)
    return EtcdJSONWriter(etcd_client)


class EtcdJSONWriter(EtcdWriter):
    """Values as JSON (:class:`JsonUtilsCodec`)."""

    def __init__(self, etcd_client):
        super(EtcdJSONWriter, self).__init__(etcd_client)
        self.codec = JsonUtilsCodec()

    def _process_read_value(self, key, value):
        return self.codec.decode(value)

    def _process_written_value(self, key, value):
        return self.codec.encode(value)


class SignedEtcdJSONWriter(EtcdJSONWriter):
    """Values as JSON; at networking-vpp's signed paths, as signed JWTs.

    Values at the paths networking-vpp signs (``jwt_agent.
    should_path_be_signed``) are written signed with this node's key and
    read only if their signature and signer check out, else reading
    ``value`` raises ``JWTSigningFailed``; other paths are plain JSON.

    :param jwt_utils: a ``JWTUtils``; by default one made, as
        networking-vpp does, from ``cfg.CONF.ml2_vpp``'s ``jwt_node_cert``,
        ``jwt_node_private_key``, ``jwt_ca_cert`` and
        ``jwt_controller_name_pattern``, with networking-vpp's
        ``jwt_agent`` where it can be imported, else
        :mod:`etcdwatch.compat.networking_vpp_jwt` (which needs the
        ``networking-vpp`` extra: ``pip install '.[networking-vpp]'``).
    """

    def __init__(self, etcd_client, jwt_utils=None):
        if jwt_utils is None:
            conf = cfg.CONF.ml2_vpp
            jwt_utils = _jwt_agent().JWTUtils(
                conf.jwt_node_cert, conf.jwt_node_private_key,
                conf.jwt_ca_cert, conf.jwt_controller_name_pattern)
        for method in ('should_path_be_signed', 'get_signer_name', 'sign',
                       'verify'):
            if not callable(getattr(jwt_utils, method, None)):
                raise ValueError('jwt_utils must be a JWTUtils; %r has no '
                                 '%s()' % (jwt_utils, method))
        self.jwt_agent = jwt_utils
        super(SignedEtcdJSONWriter, self).__init__(etcd_client)

    def _process_read_value(self, key, value):
        value = self.codec.decode(value)
        if self.jwt_agent.should_path_be_signed(key):
            value = self.jwt_agent.verify(self.jwt_agent.get_signer_name(key),
                                          key, value)
        return value

    def _process_written_value(self, key, value):
        if self.jwt_agent.should_path_be_signed(key):
            value = self.jwt_agent.sign(key, value)
        return self.codec.encode(value)


class EtcdHelper(object):
    """Housekeeping of etcd directories, errors as python-etcd raises them."""

    def __init__(self, client):
        self.etcd_client = client

    def clear_state(self, key_space):
        """Delete the keys directly under ``key_space`` (not directories)."""
        LOG.debug('Clearing key space: %s', key_space)
        try:
            rv = self.etcd_client.read(key_space)
            for child in rv.children:
                self.etcd_client.delete(child.key)
        except etcd.EtcdNotFile:
            # A directory among them: harmless, left alone.
            pass

    def ensure_dir(self, path):
        """Create the directory ``path`` unless it exists."""
        try:
            self.etcd_client.write(path, None, dir=True)
        except etcd.EtcdNotFile:
            pass

    def remove_dir(self, path):
        """Delete the directory ``path`` if empty; log if it is not.

        (networking-vpp's caught only ``EtcdNotFile``, so the
        ``EtcdDirNotEmpty`` etcd raises went through.)
        """
        try:
            self.etcd_client.delete(path, dir=True)
        except (etcd.EtcdNotFile, etcd.EtcdDirNotEmpty):
            LOG.error('Directory path:%s is not empty and cannot be '
                      'deleted', path)
        except etcd.EtcdKeyNotFound:
            pass


# -- watchers -----------------------------------------------------------------

def _recording(init_resync_start):
    @functools.wraps(init_resync_start)
    def wrapper(self):
        self.expected_keys = init_resync_start(self)
        return self.expected_keys
    setattr(wrapper, '_records_expected_keys', True)
    return wrapper


class _Hooks(object):
    """networking-vpp's hook contract, on top of etcdwatch's watchers.

    ``expected_keys`` is set to what ``init_resync_start()`` returns, by
    every override of it (wrapped when the subclass is defined).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get('init_resync_start')
        if own is not None and not getattr(own, '_records_expected_keys',
                                           False):
            setattr(cls, 'init_resync_start', _recording(own))

    def init_resync_end(self, short_keys):
        """``removed(key)`` for each of ``expected_keys`` etcd lacks."""
        expected = getattr(self, 'expected_keys', None)
        if expected is None:
            return
        for key in sorted(set(expected) - set(short_keys)):
            self.removed(key)

    def removed(self, key):
        """``key`` (below watch_path) went away."""


class EtcdWatcher(_Hooks, watcher.EtcdWatcher):
    """etcdwatch's watcher with networking-vpp's ``expected_keys``.

    ``expected_keys`` is what ``init_resync_start()`` returned, and
    ``init_resync_end()`` uses it, as in networking-vpp.  Actions are
    etcdwatch's ('add', 'change', 'delete'), not etcd's ('set', 'expire',
    ...).
    """


class EtcdChangeWatcher(watcher.EtcdChangeWatcher, EtcdWatcher):
    """etcdwatch's change watcher with networking-vpp's hook names.

    ``added(key, value)`` and ``removed(key)``, ``key`` being the key
    below watch_path; ``expected_keys`` as in :class:`EtcdWatcher`.
    """

    init_resync_end = _Hooks.init_resync_end

    def added(self, key, value):
        """``key`` (below watch_path) appeared or took a new ``value``."""

    def removed(self, key):
        """``key`` (below watch_path) went away."""


# -- options and clients ------------------------------------------------------

_etcd_conn_opts = [
    cfg.StrOpt('etcd_host', default='127.0.0.1',
               help='The etcd host, or several as "host:port,host:port"; '
                    'an entry without a port takes etcd_port.'),
    cfg.IntOpt('etcd_port', default=4001,
               help='The port of every etcd_host entry that gives none.'),
    cfg.StrOpt('etcd_user', default=None,
               help='User name for etcd authentication.'),
    cfg.StrOpt('etcd_pass', default=None, secret=True,
               help='Password for etcd authentication.'),
    cfg.BoolOpt('etcd_insecure_explicit_disable_https', default=True,
                help='Talk plain HTTP to etcd; false for HTTPS (which '
                     'needs etcd_ca_cert).'),
    cfg.StrOpt('etcd_ca_cert', default=None,
               help='PEM file of the CA that signed etcd\'s certificate '
                    '(with HTTPS).'),
]

# etcdwatch.config's option names -> networking-vpp's.
_OPTION_NAMES = {'host': 'etcd_host', 'port': 'etcd_port',
                 'username': 'etcd_user', 'password': 'etcd_pass',
                 'ca_cert': 'etcd_ca_cert',
                 'protocol': 'etcd_insecure_explicit_disable_https'}


def register_etcd_conn_opts(cfg, group):
    """Register the etcd connection options on ``cfg`` in ``group``."""
    cfg.register_opts(_etcd_conn_opts, group)


def list_opts():
    """The options, as a list (the caller names the group)."""
    return list(_etcd_conn_opts)


class EtcdClientFactory(object):
    """Makes python-etcd clients from networking-vpp's option group.

    ``conf_group`` has ``etcd_host``, ``etcd_port``, ``etcd_user``,
    ``etcd_pass``, ``etcd_insecure_explicit_disable_https`` and, with
    HTTPS, ``etcd_ca_cert``.  They are checked here by
    :class:`etcdwatch.config.EtcdClientFactory`; a bad host raises
    ``InvalidEtcHostsConfig`` (not a string) or ``InvalidEtcHostConfig``,
    a missing or unusable CA file ``InvalidEtcdCAConfig``, anything else
    :class:`etcdwatch.config.ConfigError` naming the option, the
    details as ``__cause__``.

    ``etcd_args`` holds the keyword arguments of ``etcd.Client``:
    ``host`` (a tuple of ``(host, port)``), ``username``, ``password``,
    ``allow_reconnect`` (True) and, with HTTPS, ``protocol`` and
    ``ca_cert``.  :meth:`client` uses it as it is then.
    """

    def _parse_host(self, etc_host_elem, default_port):
        """``(host, port)`` from ``'host'`` or ``'host:port'``."""
        if not isinstance(etc_host_elem, str) or etc_host_elem == '':
            raise InvalidEtcHostConfig(reason='empty host entry: %r'
                                       % (etc_host_elem,))
        try:
            (entry,) = config.parse_hosts([etc_host_elem], default_port)
        except config.ConfigError as e:
            option = _OPTION_NAMES[e.option]
            raise InvalidEtcHostConfig(option=option, reason=e.reason) from \
                config.ConfigError(option, e.reason)
        return entry

    def _parse_host_config(self, etc_host, default_port):
        """A tuple of ``(host, port)`` from ``'h1:p1,h2,...'``."""
        if not isinstance(etc_host, str):
            raise InvalidEtcHostsConfig(reason='must be a string, not %r'
                                        % (etc_host,))
        return tuple(self._parse_host(entry, default_port)
                     for entry in etc_host.split(ETC_HOSTS_DELIMITER))

    def __init__(self, conf_group):
        hostconf = self._parse_host_config(conf_group.etcd_host,
                                           conf_group.etcd_port)
        https = not conf_group.etcd_insecure_explicit_disable_https
        ca_cert = conf_group.etcd_ca_cert if https else None
        if https and not ca_cert:
            raise InvalidEtcdCAConfig(
                reason='etcd_insecure_explicit_disable_https is false '
                       '(HTTPS) but etcd_ca_cert is not set')
        try:
            config.EtcdClientFactory(
                host=['%s:%d' % entry for entry in hostconf],
                protocol='https' if https else 'http',
                username=conf_group.etcd_user,
                password=conf_group.etcd_pass, ca_cert=ca_cert)
        except config.ConfigError as e:
            # In networking-vpp's option names.
            error = config.ConfigError(_OPTION_NAMES.get(e.option, e.option),
                                       e.reason)
            if error.option == 'etcd_ca_cert':
                raise InvalidEtcdCAConfig(option=error.option,
                                          reason=e.reason) from error
            raise error from None

        self.etcd_args = {
            'host': hostconf,
            'username': conf_group.etcd_user,
            'password': conf_group.etcd_pass,
            'allow_reconnect': True}
        if https:
            self.etcd_args['protocol'] = 'https'
            self.etcd_args['ca_cert'] = ca_cert
        else:
            LOG.warning('etcd is not using HTTPS, insecure setting')

    def client(self):
        """A new ``etcd.Client(**etcd_args)``."""
        return etcd.Client(**self.etcd_args)

    def __repr__(self):
        shown = dict(getattr(self, 'etcd_args', {}))
        if shown.get('password') is not None:
            shown['password'] = '***'
        return '<EtcdClientFactory %s>' % ' '.join(
            '%s=%r' % item for item in sorted(shown.items()))
