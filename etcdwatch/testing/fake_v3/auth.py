"""etcd v3 authentication for the fake: users, roles, simple tokens.

Tokens behave as etcd's "simple" tokens: ``<16 letters>.<index>``, valid
for ``token_ttl`` seconds of the fake clock after their last use (each
request that presents one resets its expiry, as etcd does).  Disabling
auth, deleting a user or changing its password invalidates its tokens.
"""

import random
import string

from etcdwatch.testing.fake_v3 import errors

READ, WRITE, READWRITE = 0, 1, 2
PERM_TYPES = ['READ', 'WRITE', 'READWRITE']

# A range's end that is past every key.
_INF = (1, b'')


def _bound(key):
    return (0, key)


def key_interval(key, range_end):
    """``(start, end)`` bounds of a request's key or range.

    ``range_end`` None is the single ``key``; b'\\x00' is every key from
    ``key`` on.
    """
    if range_end is None or range_end == b'':
        return _bound(key), _bound(key + b'\x00')
    if range_end == b'\x00':
        return _bound(key), _INF
    return _bound(key), _bound(range_end)


def _covered(want, have):
    """Whether interval ``want`` lies within the union of ``have``."""
    start, end = want
    if start >= end:
        return True
    cursor = start
    for s, e in sorted(have):
        if s > cursor:
            break
        if e > cursor:
            cursor = e
        if cursor >= end:
            return True
    return cursor >= end


class _User(object):
    def __init__(self, name, password):
        self.name = name
        self.password = password
        self.roles = []

    def __repr__(self):
        return '<user %s>' % self.name


class AuthStore(object):
    """Users, roles with key permissions, and the tokens in use."""

    def __init__(self, clock, token_ttl=300.0, seed=None):
        self._clock = clock
        self.token_ttl = float(token_ttl)
        self.enabled = False
        self.revision = 0
        self._users = {}
        self._roles = {}        # name -> list of (perm_type, interval)
        self._tokens = {}       # token -> [user name, expiry]
        self._index = 40
        self._random = random.Random(seed)

    # -- tokens

    def authenticate(self, name, password):
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED()
        user = self._users.get(name)
        if user is None or user.password != password:
            raise errors.AUTH_FAILED()
        self._index += 1
        token = '%s.%d' % (''.join(self._random.choice(string.ascii_letters)
                                   for _ in range(16)), self._index)
        self._tokens[token] = [name, self._clock.time() + self.token_ttl]
        return token

    def expire_tokens(self):
        now = self._clock.time()
        for token, (name, expiry) in list(self._tokens.items()):
            if expiry <= now:
                del self._tokens[token]

    def user_of(self, token):
        """The user name ``token`` stands for (None if auth is off).

        Raises the invalid token error for an unknown or expired token; an
        absent token gives '' (the permission check then refuses).
        """
        if not self.enabled:
            return None
        if not token:
            return ''
        self.expire_tokens()
        entry = self._tokens.get(token)
        if entry is None or entry[0] not in self._users:
            raise errors.INVALID_TOKEN()
        entry[1] = self._clock.time() + self.token_ttl
        return entry[0]

    def _drop_tokens(self, name=None):
        for token, entry in list(self._tokens.items()):
            if name is None or entry[0] == name:
                del self._tokens[token]

    # -- permission checks

    def is_root(self, user):
        if user is None:
            return True
        u = self._users.get(user)
        return u is not None and 'root' in u.roles

    def check(self, user, reads=(), writes=()):
        """Refuse unless ``user`` may read and write those intervals."""
        if user is None:
            return
        if user == '':
            raise errors.USER_EMPTY()
        if self.is_root(user):
            return
        u = self._users.get(user)
        if u is None:
            raise errors.PERMISSION_DENIED_ERR()
        can_read, can_write = [], []
        for role in u.roles:
            for perm, interval in self._roles.get(role, []):
                if perm in (READ, READWRITE):
                    can_read.append(interval)
                if perm in (WRITE, READWRITE):
                    can_write.append(interval)
        for want in reads:
            if not _covered(want, can_read):
                raise errors.PERMISSION_DENIED_ERR()
        for want in writes:
            if not _covered(want, can_write):
                raise errors.PERMISSION_DENIED_ERR()

    def check_admin(self, user):
        if user is None:
            return
        if user == '':
            raise errors.USER_EMPTY()
        if not self.is_root(user):
            raise errors.PERMISSION_DENIED_ERR()

    # -- administration

    def _changed(self):
        self.revision += 1

    def enable(self):
        if self.enabled:
            return
        root = self._users.get('root')
        if root is None:
            raise errors.ROOT_MISSING()
        if 'root' not in root.roles:
            raise errors.ROOT_NO_ROLE()
        self.enabled = True
        self._changed()

    def disable(self):
        self.enabled = False
        self._drop_tokens()
        self._changed()

    def user_add(self, name, password):
        if not name:
            raise errors.USER_EMPTY()
        if name in self._users:
            raise errors.USER_EXISTS()
        self._users[name] = _User(name, password)
        self._changed()

    def _user(self, name):
        if not name:
            raise errors.USER_EMPTY()
        user = self._users.get(name)
        if user is None:
            raise errors.USER_NOT_FOUND()
        return user

    def user_delete(self, name):
        self._user(name)
        del self._users[name]
        self._drop_tokens(name)
        self._changed()

    def user_change_password(self, name, password):
        self._user(name).password = password
        self._drop_tokens(name)
        self._changed()

    def user_grant_role(self, name, role):
        user = self._user(name)
        if role != 'root' and role not in self._roles:
            raise errors.ROLE_NOT_FOUND()
        if role not in user.roles:
            user.roles.append(role)
            user.roles.sort()
        self._changed()

    def user_revoke_role(self, name, role):
        user = self._user(name)
        if role not in user.roles:
            raise errors.ROLE_NOT_GRANTED()
        user.roles.remove(role)
        self._changed()

    def user_get(self, name):
        return list(self._user(name).roles)

    def user_list(self):
        return sorted(self._users)

    def role_add(self, name):
        if not name:
            raise errors.ROLE_EMPTY()
        if name in self._roles:
            raise errors.ROLE_EXISTS()
        self._roles[name] = []
        self._changed()

    def _role(self, name):
        if not name:
            raise errors.ROLE_EMPTY()
        if name not in self._roles:
            raise errors.ROLE_NOT_FOUND()
        return self._roles[name]

    def role_delete(self, name):
        self._role(name)
        del self._roles[name]
        for user in self._users.values():
            if name in user.roles:
                user.roles.remove(name)
        self._changed()

    def role_grant(self, name, perm_type, key, range_end):
        perms = self._role(name)
        interval = key_interval(key, range_end)
        perms[:] = [p for p in perms if p[1] != interval]
        perms.append((perm_type, interval))
        perms.sort()
        self._changed()

    def role_revoke(self, name, key, range_end):
        perms = self._role(name)
        interval = key_interval(key, range_end)
        kept = [p for p in perms if p[1] != interval]
        if len(kept) == len(perms):
            raise errors.PERM_NOT_GRANTED()
        perms[:] = kept
        self._changed()

    def role_get(self, name):
        """``[(perm_type, key, range_end)]`` as etcd lists them."""
        out = []
        for perm, (start, end) in self._role(name):
            key = start[1]
            if end == _INF:
                range_end = b'\x00'
            elif end[1] == key + b'\x00':
                range_end = b''
            else:
                range_end = end[1]
            out.append((perm, key, range_end))
        return out

    def role_list(self):
        return sorted(self._roles)

    def __repr__(self):
        return '<AuthStore %s, %d users>' % (
            'enabled' if self.enabled else 'disabled', len(self._users))
