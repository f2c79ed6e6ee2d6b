"""A tooz coordination driver on etcdwatch's recipes (etcd's v3 API).

Install ``etcdwatch[tooz]`` and give tooz a URL with the scheme
``etcdwatch+http`` or ``etcdwatch+https``::

    etcdwatch+http://10.0.0.1:2379,10.0.0.2:2379/?timeout=30

The members are the URL's comma-separated ``host:port`` list (the client
fails over between them).  Options (the query string): ``timeout`` (the
lease TTL of member keys, locks and leaders, seconds; 30), ``lock_timeout``
(the TTL of lock keys; ``timeout``), ``membership_timeout`` (the TTL of
member keys; ``timeout``), ``request_timeout`` (one request to
etcd; 5), ``prefix`` (the etcd directory of all keys;
``/etcdwatch-tooz``), and TLS: ``ca_cert``, ``cert_file``, ``key_file``.

etcd v3 authentication: the user in the URL
(``etcdwatch+http://user:password@10.0.0.1:2379,10.0.0.2:2379/``,
percent-encoded), and its password in the URL, else in the first line of
the file named by the ``password_file`` option, else in
``$ETCDWATCH_PASSWORD``.  The password is in no log line, repr or error.

What it is built on:

* leaders: :class:`etcdwatch.EtcdElection`, one per group; a candidate
  campaigns on a thread of its own (a watch of the leader's key, no
  request while another leads), started by ``run_watchers()``, which
  announces the terms won; ``heartbeat()`` is the leader's "show life";
* groups and members: a group is a key ``<prefix>/groups/<group>``, a
  member a key ``<prefix>/members/<group>/<member>`` kept by an
  :class:`etcdwatch.EtcdMembership` with ``max_silence`` (its keepalive
  renews the key only while ``heartbeat()`` showed life within half of
  ``membership_timeout``, on a TTL of a third of it, at least 2 s: a
  silent coordinator's key is gone within ``membership_timeout``); a key
  that lapsed (a pause, an outage) is registered again by the next
  ``heartbeat()``, in every joined group;
* join/leave watches: an :class:`etcdwatch.EtcdGroupWatcher` per watched
  group; ``run_watchers()`` first reads the group from etcd (a quorum
  read) and waits until its watcher has seen that state, so a change made
  just before the call is reported by it;
* locks: :class:`etcdwatch.EtcdLock` (a fair queue of keys) for exclusive
  locks; shared locks queue in the same directory, so readers hold
  together and a writer waits for every earlier holder.

IDs (group, member, lock names) are bytes or str; they are stored
hex-encoded, so any byte string is a valid id.  tooz is imported only by
this module.
"""

import base64
import binascii
import collections
import datetime
import json
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
import urllib.parse

import tooz
from tooz import coordination
from tooz import locking
from tooz import utils as tooz_utils

from etcdwatch import backends
from etcdwatch import election
from etcdwatch import exceptions
from etcdwatch import lock as etcd_lock
from etcdwatch import membership
from etcdwatch import passwords
from etcdwatch.rules import candidacy
from etcdwatch.rules import lock as lock_rules
from etcdwatch import v3client

__all__ = ['EtcdwatchDriver', 'EtcdwatchLock']

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30
DEFAULT_REQUEST_TIMEOUT = 5
DEFAULT_PREFIX = '/etcdwatch-tooz'
#: How long run_watchers() waits for a watcher to see what etcd holds.
BARRIER_TIMEOUT = 10.0
#: How long run_watchers() waits for a campaign (running in the
#: background, on a watch) to win a leadership it does not hold.
CAMPAIGN_WAIT = 0.05
#: The value prefix of a shared (reader) key in a lock's queue.
SHARED = lock_rules.SHARED
#: Where the password is read from when neither the URL nor the
#: ``password_file`` option holds it (the same as the CLI's).
ENV_PASSWORD = passwords.ENV_PASSWORD


def _to_bytes(value: Any) -> bytes:
    return value.encode('utf-8') if isinstance(value, str) else bytes(value)


def _enc(value: Any) -> str:
    """An id (bytes or str) as a key segment: its hex."""
    return binascii.hexlify(_to_bytes(value)).decode('ascii')


def _dec(segment: str) -> bytes:
    return binascii.unhexlify(segment.encode('ascii'))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _one(options: Dict[str, Any], name: str, default: Any = None) -> Any:
    value = options.get(name, default)
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else default
    return value


def parse_url(parsed_url: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    """The client settings and options of a tooz URL (see the module)."""
    scheme = parsed_url.scheme
    if scheme not in ('etcdwatch+http', 'etcdwatch+https'):
        raise ValueError('etcdwatch tooz driver: scheme %r is not '
                         'etcdwatch+http or etcdwatch+https' % scheme)
    userinfo, _at, hosts = parsed_url.netloc.rpartition('@')
    username, password = _credentials(userinfo, options)
    endpoints = [part.strip() for part in hosts.split(',')
                 if part.strip()]
    if not endpoints:
        raise ValueError('etcdwatch tooz driver: the URL names no etcd '
                         'member')
    endpoints = [e if ':' in e.rsplit(']', 1)[-1] else e + ':2379'
                 for e in endpoints]
    timeout = float(_one(options, 'timeout', DEFAULT_TIMEOUT))
    settings = {
        'endpoints': endpoints,
        'protocol': scheme.split('+', 1)[1],
        'timeout': timeout,
        'lock_timeout': float(_one(options, 'lock_timeout', timeout)),
        'membership_timeout': float(_one(options, 'membership_timeout',
                                         timeout)),
        'request_timeout': float(_one(options, 'request_timeout',
                                      DEFAULT_REQUEST_TIMEOUT)),
        'prefix': '/' + str(_one(options, 'prefix',
                                 DEFAULT_PREFIX)).strip('/'),
        'ca_cert': _one(options, 'ca_cert'),
        'cert_file': _one(options, 'cert_file'),
        'key_file': _one(options, 'key_file'),
        'username': username,
        'password': _Secret(password) if password is not None else None,
    }
    for name in ('timeout', 'lock_timeout', 'membership_timeout',
                 'request_timeout'):
        if not settings[name] > 0:
            raise ValueError('etcdwatch tooz driver: %s must be > 0' % name)
    return settings


class _Secret(object):
    """A password, shown as ``'***'`` by repr() and str()."""

    __slots__ = ('_value',)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _credentials(userinfo: str, options: Dict[str, Any]
                 ) -> Tuple[Optional[str], Optional[str]]:
    """``(username, password)`` of a URL's user info and the options.

    The password comes from the URL, else the first line of the file
    ``password_file`` names, else ``$ETCDWATCH_PASSWORD``.  Errors name
    the user, the option or the file, never the password.
    """
    user_part, colon, password_part = userinfo.partition(':')
    username = urllib.parse.unquote(user_part) if user_part else None
    password = urllib.parse.unquote(password_part) if colon else None
    path = _one(options, 'password_file')
    if 'password' in options:
        raise ValueError('etcdwatch tooz driver: no password option, '
                         'please: put it in the URL (user:password@), in '
                         'password_file, or in $%s' % ENV_PASSWORD)
    if username is None:
        if password is not None:
            raise ValueError('etcdwatch tooz driver: the URL has a password '
                             'but no user (user:password@host)')
        if path:
            raise ValueError('etcdwatch tooz driver: password_file needs a '
                             'user in the URL (user@host)')
        return None, None
    if not username.isprintable() or username != username.strip():
        raise ValueError('etcdwatch tooz driver: the URL\'s user %r is not '
                         'a user name' % username)
    if password is not None:
        if path:
            raise ValueError('etcdwatch tooz driver: user %s: the password '
                             'is both in the URL and in password_file; '
                             'give one' % username)
        if not password:
            raise ValueError('etcdwatch tooz driver: user %s: the password '
                             'in the URL is empty' % username)
        return username, password
    if path:
        try:
            return username, passwords.read_file(path)
        except ValueError as e:
            raise ValueError('etcdwatch tooz driver: user %s: password_file '
                             '%s: %s' % (username, path, e)) from None
    password = passwords.from_environment()
    if password is None:
        raise ValueError('etcdwatch tooz driver: user %s needs a password: '
                         'in the URL (user:password@host), in '
                         'password_file, or in $%s'
                         % (username, ENV_PASSWORD))
    return username, password


def make_client(settings: Dict[str, Any]) -> v3client.FailoverEtcd3Client:
    kwargs: Dict[str, Any] = {'protocol': settings['protocol'],
                              'timeout': settings['request_timeout']}
    if settings.get('username') is not None:
        kwargs['username'] = settings['username']
        kwargs['password'] = settings['password'].reveal()
    if settings['ca_cert']:
        kwargs['ca_cert'] = settings['ca_cert']
    if settings['cert_file']:
        kwargs['cert_cert'] = settings['cert_file']
    if settings['key_file']:
        kwargs['cert_key'] = settings['key_file']
    return v3client.client(settings['endpoints'], **kwargs)


def _result(value: Any) -> coordination.CoordAsyncResult:
    """A done tooz result holding ``value`` (or raising it)."""
    from concurrent import futures
    future: 'futures.Future[Any]' = futures.Future()
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
    return coordination.CoordinatorResult(future)


def _call(func: Callable[..., Any], *args: Any, auth: Any = None) -> Any:
    """Run ``func`` now; its answer or its tooz error, as a result.

    etcd refusing the user (a wrong password, a key outside its roles) is
    a ToozError naming the user (``auth``'s); being unable to reach etcd
    a ToozConnectionError.
    """
    try:
        return _result(func(*args))
    except tooz.ToozError as e:
        return _result(e)
    except exceptions.EtcdAuthError as e:
        if auth is not None:
            auth.name(e)
        return _result(tooz.ToozError(str(e)))
    except exceptions.BackendError as e:
        return _result(coordination.ToozConnectionError(str(e)))
    except Exception as e:   # requests' and etcd3gw's errors
        error = v3client._auth_error(e)
        if isinstance(error, exceptions.EtcdAuthError):
            if auth is not None:
                auth.name(error)
            return _result(tooz.ToozError(str(error)))
        return _result(coordination.ToozConnectionError(
            '%s: %s' % (type(e).__name__, e)))


class _Election(election.EtcdElection):
    """An EtcdElection that runs its campaign on a thread of its own.

    Its ``candidate_id`` (the key's value) starts with the coordinator's
    hex member id, so any coordinator can tell the leader's tooz member id
    from the key.  ``won`` is notified when a term begins; ``campaign`` is
    the thread campaigning in the background, if any.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.won = threading.Condition()
        self.campaign: Optional[threading.Thread] = None
        super(_Election, self).__init__(*args, **kwargs)

    def _begin_term(self, token, expires):
        super(_Election, self)._begin_term(token, expires)
        with self.won:
            self.won.notify_all()

    def start_campaign(self) -> None:
        """Campaign on a thread (a watch of the key) unless one does."""
        if self.campaign is not None and self.campaign.is_alive():
            return
        self.campaign = threading.Thread(
            target=self._campaign_once, daemon=True,
            name='tooz-campaign-%s' % self.name)
        self.campaign.start()

    def _campaign_once(self) -> None:
        try:
            self.wait_until_elected()
        except Exception:      # logged; the next run_watchers() retries
            LOG.exception('%s: campaign failed', self.name)

    def stop_campaign(self) -> None:
        """End a background campaign, then resign."""
        campaign = self.campaign
        if campaign is not None and campaign.is_alive():
            self.cancel()
            campaign.join(10)
        self.resign()


class _GroupWatcher(membership.EtcdGroupWatcher):
    """Queues join/leave events of one group for run_watchers()."""

    def __init__(self, driver: 'EtcdwatchDriver', group_id: bytes,
                 path: str) -> None:
        self._driver = driver
        self._group_id = group_id
        self.changed = threading.Condition()
        self.events: 'collections.deque[Any]' = collections.deque()
        #: Changes applied so far (under ``changed``).
        self.generation = 0
        self._live = False
        super(_GroupWatcher, self).__init__(
            driver.client, 'tooz-group-' + _enc(group_id), path,
            heartbeat=10)
        # Members present before the watch began did not join now.
        self._live = True

    def _queue(self, event: Any) -> None:
        with self.changed:
            if self._live:
                self.events.append(event)

    def key_change(self, action: str, key: str, value: Any) -> None:
        super(_GroupWatcher, self).key_change(action, key, value)
        # Now that ``members`` shows it too.
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def caught_up(self, index: int) -> bool:
        """Whether every change up to etcd index ``index`` is queued."""
        with self.etcd_data_lock:
            if not self.synced:
                return False
            stats = self.stats()
        return (stats['index'] is not None and stats['index'] >= index
                and not stats['pending'])

    def joined(self, member: str, value: Any) -> None:
        self._queue(coordination.MemberJoinedGroup(self._group_id,
                                                   _dec(member)))

    def left(self, member: str) -> None:
        self._queue(coordination.MemberLeftGroup(self._group_id,
                                                 _dec(member)))

    def updated(self, member: str, value: Any) -> None:
        self._queue(None)


class EtcdwatchDriver(coordination.CoordinationDriver):
    """A tooz coordinator on etcd (v3) built on etcdwatch's recipes.

    See the module docstring for the URL and what each part rests on.
    """

    CHARACTERISTICS = (
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
        coordination.Characteristics.LINEARIZABLE,
        coordination.Characteristics.SEQUENTIAL,
        coordination.Characteristics.CAUSAL,
    )

    def __init__(self, member_id: bytes, parsed_url: Any,
                 options: Dict[str, Any]) -> None:
        super(EtcdwatchDriver, self).__init__(member_id, parsed_url,
                                              options)
        self._settings = parse_url(parsed_url, options)
        self._member = _to_bytes(member_id)
        self.timeout = self._settings['timeout']
        self.lock_timeout = self._settings['lock_timeout']
        self.membership_timeout = self._settings['membership_timeout']
        self.prefix = self._settings['prefix']
        self.client: Any = None
        self._backend: Any = None
        self._guard = threading.RLock()
        # group_id -> our membership of it.
        self._memberships: Dict[bytes, membership.EtcdMembership] = {}
        self._electors: Dict[bytes, _Election] = {}
        # group_id -> the term we last reported LeaderElected for.
        self._announced: Dict[bytes, Any] = {}
        self._watchers: Dict[bytes, _GroupWatcher] = {}
        self._locks: 'Set[EtcdwatchLock]' = set()

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        client = self.client
        return _call(func, *args,
                     auth=None if client is None else client.auth)

    # -- keys -------------------------------------------------------------

    def _group_key(self, group_id: Any) -> str:
        return '%s/groups/%s' % (self.prefix, _enc(group_id))

    def _members_path(self, group_id: Any) -> str:
        return '%s/members/%s' % (self.prefix, _enc(group_id))

    def _member_key(self, group_id: Any, member_id: Any = None) -> str:
        return '%s/%s' % (self._members_path(group_id),
                          _enc(self._member if member_id is None
                               else member_id))

    @property
    def election_path(self) -> str:
        return self.prefix + '/leaders'

    @property
    def lock_path(self) -> str:
        return self.prefix + '/locks'

    # -- start, stop, heartbeat -------------------------------------------

    def _start(self) -> None:
        self.client = make_client(self._settings)
        self._backend = backends.for_client(self.client)
        try:
            self.client.status()
        except exceptions.EtcdAuthError as e:
            # Not worth retrying: a wrong user or password.  The error
            # names the user, never the password.
            self.client = self._backend = None
            raise coordination.ToozConnectionError(
                'etcd at %s: %s' % (','.join(self._settings['endpoints']),
                                    e)) from None
        except Exception as e:
            self.client = self._backend = None
            raise coordination.ToozConnectionError(
                'cannot reach etcd at %s: %s'
                % (','.join(self._settings['endpoints']), e)) from e

    def _stop(self) -> None:
        for watcher in list(self._watchers.values()):
            watcher.close(timeout=5)
        self._watchers.clear()
        for elector in list(self._electors.values()):
            elector.stop_campaign()
        self._electors.clear()
        self._announced.clear()
        for lock in list(self._locks):
            lock._abandon()
        with self._guard:
            members = list(self._memberships.values())
            self._memberships.clear()
        for member in members:
            member.close(timeout=5)

    def heartbeat(self) -> float:
        """Show life: to the memberships, locks and leaderships.

        A member key that lapsed (a pause longer than its timeout, an
        outage) is registered again at once, in every joined group.
        Returns the seconds to wait before the next heartbeat.
        """
        for member in list(self._memberships.values()):
            try:
                member.show_life()
            except Exception:
                pass
        for lock in list(self._locks):
            lock.heartbeat()
        for elector in list(self._electors.values()):
            if elector.is_elected:
                try:
                    elector.extend_election(elector.work_time)
                except Exception:
                    pass
        return min(self.timeout, self.lock_timeout,
                   self.membership_timeout) / 3.0

    # -- groups -----------------------------------------------------------

    def _group_exists(self, group_id: Any) -> bool:
        return bool(self.client.get(self._group_key(group_id)))

    def create_group(self, group_id: bytes) -> Any:
        def create():
            if not self.client.create(self._group_key(group_id), _now()):
                raise coordination.GroupAlreadyExist(group_id)
        return self._call(create)

    def get_groups(self) -> Any:
        def groups():
            path = self.prefix + '/groups'
            items = self._backend.read_tree(path).items
            return [_dec(key[len(path) + 1:]) for key in items
                    if '/' not in key[len(path) + 1:]]
        return self._call(groups)

    def _members(self, group_id: Any) -> Dict[str, str]:
        return membership.group_members(self.client,
                                        self._members_path(group_id))

    def delete_group(self, group_id: bytes) -> Any:
        def delete():
            if not self._group_exists(group_id):
                raise coordination.GroupNotCreated(group_id)
            if self._members(group_id):
                raise coordination.GroupNotEmpty(group_id)
            self.client.delete(self._group_key(group_id))
        return self._call(delete)

    def _destroy_group(self, group_id: bytes) -> None:
        """Delete a group and its members (tests; tooz's suite)."""
        self.client.delete_prefix(self._members_path(group_id) + '/')
        self.client.delete(self._group_key(group_id))

    def join_group(self, group_id: bytes, capabilities: Any = b'') -> Any:
        def join():
            if not self._group_exists(group_id):
                raise coordination.GroupNotCreated(group_id)
            value = self._member_value(capabilities)
            with self._guard:
                if group_id in self._memberships or self.client.get(
                        self._member_key(group_id)):
                    raise coordination.MemberAlreadyExist(group_id,
                                                          self._member)
                # Kept alive while heartbeat() shows life: a coordinator
                # silent for membership_timeout is gone by then (renewed
                # for half of it, on a lease of a third, at least 2 s).
                member = membership.EtcdMembership(
                    self.client, self._members_path(group_id),
                    _enc(self._member), value,
                    max(2.0, self.membership_timeout / 3.0),
                    handler='threading',
                    max_silence=self.membership_timeout / 2.0)
                if not member.is_registered:
                    stats = member.stats()
                    member.close(timeout=5)
                    if stats['conflicts']:
                        raise coordination.MemberAlreadyExist(
                            group_id, self._member)
                    raise coordination.ToozConnectionError(
                        'could not join %r: etcd did not answer' % group_id)
                self._memberships[group_id] = member
                self._joined_groups.add(group_id)
        return self._call(join)

    @staticmethod
    def _member_value(capabilities: Any, created_at: Optional[str] = None
                      ) -> str:
        now = _now()
        return json.dumps({
            'capabilities': base64.b64encode(
                tooz_utils.dumps(capabilities)).decode('ascii'),
            'created_at': created_at or now,
            'updated_at': now})

    @staticmethod
    def _member_info(value: str) -> Dict[str, Any]:
        info = json.loads(value)
        info['capabilities'] = tooz_utils.loads(
            base64.b64decode(info['capabilities']))
        return info

    def leave_group(self, group_id: bytes) -> Any:
        def leave():
            with self._guard:
                member = self._memberships.pop(group_id, None)
                self._joined_groups.discard(group_id)
            if member is not None:
                deleted = member.close(timeout=5)
            else:
                deleted = self.client.delete(self._member_key(group_id))
            if not deleted:
                if not self._group_exists(group_id):
                    raise coordination.GroupNotCreated(group_id)
                raise coordination.MemberNotJoined(group_id, self._member)
        return self._call(leave)

    def get_members(self, group_id: bytes) -> Any:
        def members():
            found = self._members(group_id)
            if not found and not self._group_exists(group_id):
                raise coordination.GroupNotCreated(group_id)
            return {_dec(m) for m in found}
        return self._call(members)

    def _read_member(self, group_id: Any, member_id: Any) -> Dict[str, Any]:
        found = self.client.get(self._member_key(group_id, member_id))
        if not found:
            if not self._group_exists(group_id):
                raise coordination.GroupNotCreated(group_id)
            raise coordination.MemberNotJoined(group_id, member_id)
        value = found[0]
        if isinstance(value, bytes):
            value = value.decode('utf-8')
        return self._member_info(value)

    def get_member_capabilities(self, group_id: bytes,
                                member_id: bytes) -> Any:
        return self._call(lambda: self._read_member(
            group_id, member_id)['capabilities'])

    def get_members_with_capabilities(self, group_id: bytes) -> Any:
        def members():
            found = self._members(group_id)
            if not found and not self._group_exists(group_id):
                raise coordination.GroupNotCreated(group_id)
            result = {}
            for member, value in found.items():
                caps = self._member_info(value)['capabilities']
                # Joined without capabilities (tooz's default b''): None.
                result[_dec(member)] = None if caps == b'' else caps
            return result
        return self._call(members)

    def get_member_info(self, group_id: bytes, member_id: bytes) -> Any:
        return self._call(self._read_member, group_id, member_id)

    def update_capabilities(self, group_id: bytes,
                            capabilities: Any) -> Any:
        def update():
            with self._guard:
                member = self._memberships.get(group_id)
                if member is None:
                    if not self._group_exists(group_id):
                        raise coordination.GroupNotCreated(group_id)
                    raise coordination.MemberNotJoined(group_id,
                                                       self._member)
                new = self._member_value(
                    capabilities, json.loads(member.value)['created_at'])
                # In place (watchers see an update); a lapsed key is
                # registered again with the new value.
                if not member.update(new):
                    raise coordination.MemberNotJoined(group_id,
                                                       self._member)
        return self._call(update)

    # -- watches ----------------------------------------------------------

    def _ensure_watcher(self, group_id: bytes) -> None:
        if group_id in self._watchers:
            return
        if not self._group_exists(group_id):
            raise coordination.GroupNotCreated(group_id)
        watcher = _GroupWatcher(self, group_id,
                                self._members_path(group_id))
        watcher.start()
        self._watchers[group_id] = watcher

    def _drop_watcher_if_unused(self, group_id: bytes) -> None:
        if self._has_hooks_for_group(group_id):
            return
        watcher = self._watchers.pop(group_id, None)
        if watcher is not None:
            watcher.close(timeout=5)

    def watch_join_group(self, group_id: bytes, callback: Any) -> None:
        self._ensure_watcher(group_id)
        super(EtcdwatchDriver, self).watch_join_group(group_id, callback)

    def unwatch_join_group(self, group_id: bytes, callback: Any) -> None:
        super(EtcdwatchDriver, self).unwatch_join_group(group_id, callback)
        self._drop_watcher_if_unused(group_id)

    def watch_leave_group(self, group_id: bytes, callback: Any) -> None:
        self._ensure_watcher(group_id)
        super(EtcdwatchDriver, self).watch_leave_group(group_id, callback)

    def unwatch_leave_group(self, group_id: bytes, callback: Any) -> None:
        super(EtcdwatchDriver, self).unwatch_leave_group(group_id, callback)
        self._drop_watcher_if_unused(group_id)

    def _barrier(self, group_id: bytes, watcher: _GroupWatcher) -> None:
        """Wait until ``watcher`` has seen what etcd holds now.

        One quorum read of the group: the watcher has seen it once its
        members are those, or once it has applied every change up to the
        read's index (a change made after the read may already be in).
        """
        path = self._members_path(group_id)
        snapshot = self._backend.read_tree(path)
        prefix = path + '/'
        expected = {key[len(prefix):] for key in snapshot.items
                    if key.startswith(prefix)
                    and '/' not in key[len(prefix):]}
        deadline = time.monotonic() + BARRIER_TIMEOUT
        while True:
            with watcher.changed:
                generation = watcher.generation
                members = set(watcher.members)
            if members == expected or watcher.caught_up(snapshot.index):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with watcher.changed:
                if watcher.generation == generation:
                    # Bounded: the index may move without a new change.
                    watcher.changed.wait(min(left, 0.1))

    def run_watchers(self, timeout: Optional[float] = None) -> List[Any]:
        results: List[Any] = []
        for group_id, watcher in list(self._watchers.items()):
            try:
                self._barrier(group_id, watcher)
            except Exception:
                pass
            while True:
                with watcher.changed:
                    if not watcher.events:
                        break
                    event = watcher.events.popleft()
                if isinstance(event, coordination.MemberJoinedGroup):
                    results.extend(
                        self._hooks_join_group[group_id].run(event))
                elif isinstance(event, coordination.MemberLeftGroup):
                    results.extend(
                        self._hooks_leave_group[group_id].run(event))
        results.extend(self._run_elections())
        return results

    # -- leaders ----------------------------------------------------------

    def _elector(self, group_id: bytes) -> _Election:
        elector = self._electors.get(group_id)
        if elector is None:
            elector = _Election(
                self.client, _enc(group_id), self.election_path,
                work_time=self.timeout, handler='threading',
                candidate_id='%s.%s' % (_enc(self._member),
                                        candidacy.make_id()))
            self._electors[group_id] = elector
        return elector

    def _run_elections(self) -> List[Any]:
        """Announce the terms won since the last call.

        A candidate campaigns on a thread of its own, waiting on a watch
        of the leader's key (no request while someone else leads); this
        starts that campaign when none runs, and waits up to
        CAMPAIGN_WAIT for it to win.  A leader shows life (no request).
        """
        results: List[Any] = []
        for group_id in list(self._hooks_elected_leader):
            elector = self._elector(group_id)
            if elector.term is None:
                elector.start_campaign()
                deadline = time.monotonic() + CAMPAIGN_WAIT
                with elector.won:
                    while elector.term is None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        elector.won.wait(left)
            term = elector.term
            if term is None or not elector.is_elected:
                continue
            try:
                elector.check_in()
            except exceptions.EtcdElectionLost:
                continue
            if self._announced.get(group_id) is term:
                continue
            self._announced[group_id] = term
            results.extend(self._hooks_elected_leader[group_id].run(
                coordination.LeaderElected(group_id, self._member)))
        return results

    def run_elect_coordinator(self) -> None:
        self._run_elections()

    def stand_down_group_leader(self, group_id: bytes) -> bool:
        elector = self._electors.get(group_id)
        if elector is None or not elector.is_elected:
            return False
        elector.resign()
        self._announced.pop(group_id, None)
        return True

    def unwatch_elected_as_leader(self, group_id: bytes,
                                  callback: Any) -> None:
        super(EtcdwatchDriver, self).unwatch_elected_as_leader(group_id,
                                                               callback)
        if group_id not in self._hooks_elected_leader:
            elector = self._electors.pop(group_id, None)
            if elector is not None:
                elector.stop_campaign()

    def get_leader(self, group_id: bytes) -> Any:
        def leader():
            key = '%s/master_%s' % (self.election_path, _enc(group_id))
            state, _index = self._backend.read_key(key)
            if state is None:
                return None
            return _dec(state.value.split('.', 1)[0])
        return self._call(leader)

    def leader_fencing_token(self, group_id: bytes) -> Optional[int]:
        """Our term's fencing token in ``group_id``, or None."""
        elector = self._electors.get(group_id)
        return None if elector is None else elector.fencing_token

    # -- locks ------------------------------------------------------------

    def get_lock(self, name: bytes) -> 'EtcdwatchLock':
        return EtcdwatchLock(name, self)


class EtcdwatchLock(locking.Lock):
    """A tooz lock: two :class:`etcdwatch.EtcdLock` waiters on one queue.

    An exclusive hold is an EtcdLock; a shared hold an EtcdLock with
    ``shared=True`` in the same queue (readers hold together, a writer
    waits for every earlier holder, a reader behind a waiting writer waits
    for it; all by watches, no polling).  Shared holds of one object are
    counted (each acquire needs a release).  Both kinds show life through
    the coordinator's ``heartbeat()``: a holder that does not for
    ``lock_timeout`` loses the lock, and knows it (``is_still_owner()``
    and ``heartbeat()`` turn False before another can take it).
    """

    def __init__(self, name: bytes, driver: EtcdwatchDriver) -> None:
        super(EtcdwatchLock, self).__init__(name)
        self._driver = driver
        self._path = driver.lock_path
        self._ttl = driver.lock_timeout
        self._exclusive = etcd_lock.EtcdLock(
            driver.client, _enc(name), self._path, ttl=self._ttl,
            handler='threading', max_silence=self._ttl)
        self._reader = etcd_lock.EtcdLock(
            driver.client, _enc(name), self._path, ttl=self._ttl,
            handler='threading', max_silence=self._ttl, shared=True)
        self.prefix = self._exclusive.prefix
        self._backend = backends.for_client(driver.client)
        self._mutex = threading.Lock()
        # Held while this object holds (or takes) the exclusive lock, so
        # threads sharing the object take turns.
        self._local = threading.Lock()
        # Held while this object takes the shared lock.
        self._reading = threading.Lock()
        # Shared acquires not yet released (under _mutex).
        self._shared_count = 0

    # -- what tooz asks ---------------------------------------------------

    @property
    def fencing_token(self) -> Optional[int]:
        """The exclusive hold's fencing token (see EtcdLock), or None."""
        return self._exclusive.fencing_token

    def acquire(self, blocking: Any = True, shared: bool = False,
                timeout: Optional[float] = None) -> bool:
        wait: Optional[float]
        if blocking is False:
            wait, nonblocking = None, True
        else:
            nonblocking = False
            wait = timeout
            if blocking is not True and blocking is not None:
                wait = float(blocking)
        if wait is not None and wait <= 0:
            nonblocking, wait = True, None
        if shared:
            got = self._acquire_shared(nonblocking, wait)
        else:
            got = self._acquire_exclusive(nonblocking, wait)
        if got:
            self._driver._locks.add(self)
        return got

    def _acquire_exclusive(self, nonblocking: bool,
                           wait: Optional[float]) -> bool:
        if self._shared_count:
            return False
        start = time.monotonic()
        if not self._local.acquire(blocking=not nonblocking,
                                   timeout=-1 if wait is None else wait):
            return False
        won = False
        try:
            left = None if wait is None else \
                max(0.001, wait - (time.monotonic() - start))
            won = self._exclusive.acquire(blocking=not nonblocking,
                                          timeout=left)
        except RuntimeError:
            won = False
        finally:
            if not won:
                self._local.release()
        return won

    def _acquire_shared(self, nonblocking: bool,
                        wait: Optional[float]) -> bool:
        start = time.monotonic()
        if not self._reading.acquire(blocking=not nonblocking,
                                     timeout=-1 if wait is None else wait):
            return False
        try:
            with self._mutex:
                if self._shared_count:
                    self._shared_count += 1
                    return True
            if self._local.locked():
                return False
            left = None if wait is None else \
                max(0.001, wait - (time.monotonic() - start))
            try:
                won = self._reader.acquire(blocking=not nonblocking,
                                           timeout=left)
            except RuntimeError:
                won = False
            if won:
                with self._mutex:
                    self._shared_count = 1
            return won
        finally:
            self._reading.release()

    def release(self) -> bool:
        with self._mutex:
            count = self._shared_count
            if count:
                self._shared_count = count - 1
        if count > 1:
            return True
        if count == 1:
            self._driver._locks.discard(self)
            try:
                # True if our key was still there: the hold was ours.
                return self._reader.release()
            except RuntimeError:
                return False
        if not self._local.locked():
            return False
        ours = False
        try:
            try:
                ours = self._exclusive.release()
            except RuntimeError:
                pass
        finally:
            self._driver._locks.discard(self)
            self._local.release()
        return ours

    def break_(self) -> bool:
        """Delete every key of the lock's queue: holders and waiters."""
        entries = self._backend.read_queue(self.prefix).entries
        for entry in entries:
            self._backend.delete_if(entry.key, entry.value)
        return bool(entries)

    def is_still_owner(self) -> bool:
        if self._shared_count:
            return self._reader.is_held
        return self._exclusive.is_held

    def heartbeat(self) -> bool:
        """Show life; True while this lock is still held."""
        held = self._reader if self._shared_count else self._exclusive
        if held.key is None:
            return False
        try:
            held.check_in()
        except etcd_lock.EtcdLockLost:
            return False
        return True

    def _abandon(self) -> None:
        try:
            while self.release() and self._shared_count:
                pass
        except Exception:
            pass
