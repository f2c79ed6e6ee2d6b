"""Values as Python data in etcd: codecs, and a writer that uses them.

A *codec* is any object with two methods:

``encode(value) -> str``
    The string to store in etcd for ``value``.  Raise ``ValueError`` or
    ``TypeError`` for a value it cannot store.
``decode(text) -> value``
    The value back from etcd's string.  Raise ``ValueError`` (or any
    exception) for a string it refuses; a watcher then logs the key,
    reports it to ``value_unparsable()`` and treats the key as absent.

``decode(encode(v)) == v`` must hold for every value it accepts.  For
compare-and-swap on values (``prevValue``), ``encode`` must also be
deterministic: equal values, equal strings.

:class:`JsonCodec` stores JSON; :class:`SignedCodec` wraps any codec and
adds an HMAC so that a reader refuses values written without the secret.
:class:`EtcdWriter` writes, reads and deletes through a codec, and a
watcher given the same codec (``EtcdChangeWatcher(..., codec=codec)``)
receives the decoded values.
"""

import hashlib
import hmac
import json

from etcdwatch import keys

__all__ = ['JsonCodec', 'SignedCodec', 'EtcdWriter', 'DecodedResult',
           'check_codec']


def check_codec(codec, argument='codec'):
    """Return ``codec`` if it has callable ``encode`` and ``decode``."""
    for method in ('encode', 'decode'):
        if not callable(getattr(codec, method, None)):
            raise ValueError('%s must have encode(value) and decode(text) '
                             'methods; %r has no %s()'
                             % (argument, codec, method))
    return codec


def _refuse_constant(name):
    raise ValueError('%s is not JSON' % name)


class JsonCodec(object):
    """Python data as JSON text.

    ``encode`` writes compact JSON with sorted keys, so equal values give
    equal strings (usable in ``prevValue``), ASCII only.  Both directions
    refuse NaN and infinities, which are not JSON and which other
    languages' parsers reject.  ``decode`` raises ``ValueError`` for
    anything that is not one JSON document.  Tuples come back as lists,
    dict keys as strings: JSON's own limits.
    """

    def encode(self, value):
        return json.dumps(value, sort_keys=True, separators=(',', ':'),
                          allow_nan=False)

    def decode(self, text):
        if not isinstance(text, str):
            raise ValueError('expected a string from etcd, not %s'
                             % type(text).__name__)
        return json.loads(text, parse_constant=_refuse_constant)

    def __repr__(self):
        return 'JsonCodec()'


class SignedCodec(object):
    """Wraps a codec; every stored string carries an HMAC of its content.

    ``encode`` gives ``'hmac-<digest>:<hex mac>:<inner text>'``;
    ``decode`` raises ``ValueError`` unless the MAC matches (compared in
    constant time), then decodes the inner text with ``inner``.

    :param inner: the codec of the payload, e.g. :class:`JsonCodec`.
    :param secret: the shared secret, bytes or str (UTF-8); everyone who
        writes or reads needs it.  Never shown in repr.
    :param digest: a hashlib name; 'sha256' by default.

    It proves that a holder of the secret wrote this text, nothing more:
    the MAC does not cover the etcd key, so a value can be copied to
    another key or an old value written back.  Put the key (or a version)
    inside the value and check it when that matters.
    """

    def __init__(self, inner, secret, digest='sha256'):
        self.inner = check_codec(inner, 'inner')
        if isinstance(secret, str):
            secret = secret.encode('utf-8')
        if not isinstance(secret, bytes) or not secret:
            raise ValueError('secret must be non-empty bytes or str')
        if digest not in hashlib.algorithms_available:
            raise ValueError('digest %r is not a hashlib algorithm'
                             % (digest,))
        self._secret = secret
        self.digest = digest
        self._prefix = 'hmac-%s:' % digest

    def _mac(self, text):
        return hmac.new(self._secret, text.encode('utf-8'),
                        self.digest).hexdigest()

    def encode(self, value):
        text = self.inner.encode(value)
        if not isinstance(text, str):
            raise TypeError('%r.encode() returned %s, not str'
                            % (self.inner, type(text).__name__))
        return '%s%s:%s' % (self._prefix, self._mac(text), text)

    def decode(self, text):
        if not isinstance(text, str) or not text.startswith(self._prefix):
            raise ValueError('not signed with hmac-%s' % self.digest)
        mac, colon, payload = text[len(self._prefix):].partition(':')
        if not colon or not hmac.compare_digest(mac, self._mac(payload)):
            raise ValueError('bad signature')
        return self.inner.decode(payload)

    def __repr__(self):
        return 'SignedCodec(%r, secret=***, digest=%r)' % (self.inner,
                                                           self.digest)


class DecodedResult(object):
    """A python-etcd result whose values are decoded by a codec.

    ``value`` is the decoded value (None for a directory), decoded on
    first use; a value the codec refuses raises ``ValueError`` naming the
    key, with the codec's error as ``__cause__``.  ``children`` and
    ``leaves`` yield DecodedResults, so one bad child does not hide the
    others.  Every other attribute (``key``, ``dir``, ``ttl``,
    ``modifiedIndex``, ``etcd_index``, ...) is the original result's;
    ``raw`` is the original itself.
    """

    _UNSET = object()

    def __init__(self, result, codec):
        self.raw = result
        self._codec = codec
        self._value = self._UNSET

    @property
    def value(self):
        if self._value is self._UNSET:
            if self.raw.dir or self.raw.value is None:
                self._value = None
            else:
                try:
                    self._value = self._codec.decode(self.raw.value)
                except Exception as e:
                    raise ValueError('cannot decode the value of %s: %s'
                                     % (self.raw.key, e)) from e
        return self._value

    @property
    def children(self):
        for child in self.raw.children:
            yield DecodedResult(child, self._codec)

    @property
    def leaves(self):
        for leaf in self.raw.leaves:
            yield DecodedResult(leaf, self._codec)

    def __getattr__(self, name):
        # Only reached for attributes not defined here.  'raw' itself is
        # missing only on a half-made object (copy, pickle): no recursion.
        if name == 'raw':
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __repr__(self):
        return '<DecodedResult %s>' % (self.raw.key,)


class EtcdWriter(object):
    """Write, read and delete Python values in etcd through a codec.

    :param client: a python-etcd ``etcd.Client`` (or FakeEtcdClient).
    :param codec: a codec (see the module doc); :class:`JsonCodec` by
        default.

    Every key is checked before any request, as etcdwatch checks keys
    everywhere (``etcdwatch.keys.check_path``): python-etcd does not
    quote keys, so ``/a?b`` would write ``/a``.  A bad key raises
    ``ValueError`` naming ``key``; keys with a segment starting with
    ``_`` (hidden from etcd's recursive reads and watches) are refused
    too.  etcd's own errors (``etcd.EtcdKeyNotFound``, ...) pass through
    unchanged.
    """

    def __init__(self, client, codec=None):
        self.client = client
        self.codec = JsonCodec() if codec is None else check_codec(codec)

    def _encode(self, value):
        text = self.codec.encode(value)
        if not isinstance(text, str):
            raise TypeError('%r.encode() returned %s, not str'
                            % (self.codec, type(text).__name__))
        return text

    def _conditions(self, kwargs):
        # A compare-and-swap value is compared with the stored string, so
        # it is encoded the same way (None too: it is a value, JSON null).
        if 'prevValue' in kwargs:
            kwargs['prevValue'] = self._encode(kwargs['prevValue'])
        return kwargs

    def write(self, key, value, **kwargs):
        """Store ``codec.encode(value)`` at ``key``; return etcd's result.

        ``kwargs`` go to ``client.write`` (``ttl``, ``prevExist``,
        ``prevIndex``, ``prevValue``; a ``prevValue`` is encoded too).
        The result is python-etcd's: its ``value`` is the stored string.
        """
        key = keys.check_path('key', key)
        return self.client.write(key, self._encode(value),
                                 **self._conditions(kwargs))

    def read(self, key, **kwargs):
        """Read ``key``; return a :class:`DecodedResult`.

        ``kwargs`` go to ``client.read`` (``recursive``, ``sorted``, ...).
        """
        key = keys.check_path('key', key)
        return DecodedResult(self.client.read(key, **kwargs), self.codec)

    def delete(self, key, **kwargs):
        """Delete ``key``; return etcd's result.

        ``kwargs`` go to ``client.delete`` (``recursive``, ``dir``,
        ``prevIndex``, ``prevValue``; a ``prevValue`` is encoded too).
        """
        key = keys.check_path('key', key)
        return self.client.delete(key, **self._conditions(kwargs))
