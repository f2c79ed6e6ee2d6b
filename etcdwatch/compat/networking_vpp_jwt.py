"""networking-vpp's ``jwt_agent``: values signed as JWTs with X.509 keys.

The same API and the same format as ``networking_vpp.jwt_agent``, on PyJWT
and cryptography only (networking-vpp also needed pyOpenSSL), from the
``networking-vpp`` extra (in a clone of etcdwatch)::

    pip install '.[networking-vpp]'

A signed value, as stored in etcd (JSON)::

    {"jwt": <RS256 JWT of {"version": 1, "value": value, "path": path}>,
     "certificate": <the signer's PEM certificate>}

Tokens made here are accepted by networking-vpp's ``JWTUtils.verify`` and
the other way round.  :meth:`JWTUtils.verify` returns the value only if:
the certificate was issued by the CA (its signature checks out with the
CA's key) and both are within their validity period; the certificate's
common name is the one the path asks for (see :meth:`JWTUtils.
get_signer_name`); the token's RS256 signature checks out with the
certificate's key, and it has not expired; and the token names the path
the value was read from (so a signed value cannot be copied to another
key).  Anything else raises :class:`JWTSigningFailed`.

Like networking-vpp's, the signature does not stop an old value signed
for the same path from being written back.  No key material is ever part
of a log line, a repr or an exception message of this module.
"""

import collections
import datetime
import re
import time
from typing import Optional

try:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives import serialization
    from cryptography import x509
    from cryptography.x509 import oid
    import jwt
except ImportError as e:  # pragma: no cover - depends on the install
    _MISSING: Optional[ImportError] = e
else:
    _MISSING = None

__all__ = ['JWTSigningFailed', 'JWTUtils', 'etcd_controller_path_pattern',
           'etcd_computeNode_path_pattern', 'nodeName']

_INSTALL = "pip install '.[networking-vpp]' (in a clone of etcdwatch)"

#: Paths whose values a controller (networking-vpp's mechanism driver)
#: signs; the signer's common name must match ``controller_name_re``.
etcd_controller_path_pattern = (
    "^/networking-vpp/nodes/.*$|"
    "^/networking-vpp/global/secgroups/.*$")
#: Paths whose values a compute node signs; the signer's common name must
#: be the host name the path holds.
etcd_computeNode_path_pattern = (
    "^/networking-vpp/state/([^/]+)/.*$|"
    "^/networking-vpp/global/networks/gpe/[^/]+/([^/]+)/.*$")

#: What :meth:`JWTUtils.get_signer_name` returns: the signer's expected
#: common name, or (``isRegexp``) a pattern it must match.
nodeName = collections.namedtuple('nodeName', 'isRegexp value')


class JWTSigningFailed(Exception):
    """A signed value cannot be trusted (or could not be signed)."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _validity(cert):
    # cryptography >= 42 has the aware variants; older ones are naive UTC.
    before = getattr(cert, 'not_valid_before_utc', None)
    after = getattr(cert, 'not_valid_after_utc', None)
    if before is None or after is None:  # pragma: no cover - old releases
        before = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return before, after


def _common_name(cert):
    names = cert.subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)
    return names[0].value if names else None


class JWTUtils(object):
    """Sign values for etcd paths, and verify what others signed.

    :param local_cert: PEM file of this node's certificate (RSA key).
    :param priv_key: PEM file of its unencrypted private key.
    :param ca_cert: PEM file of the CA that signers' certificates must be
        issued by.
    :param controller_name_re: the pattern (``re.match``) that a
        controller's common name must match, e.g. ``'Controller.*'``.

    Files are read with :meth:`_get_crypto_material` (``OSError`` if one
    cannot be read); contents that are not what they should be raise
    ``ValueError`` naming the argument.  Needs PyJWT >= 2 and
    cryptography >= 40 (the ``networking-vpp`` extra); without them,
    ``ImportError`` says what to install.
    """

    def __init__(self, local_cert, priv_key, ca_cert, controller_name_re):
        if _MISSING is not None:
            raise ImportError('signing values needs PyJWT and cryptography '
                              '(%s): %s' % (_INSTALL, _MISSING))
        if not isinstance(controller_name_re, str):
            raise ValueError('controller_name_re must be a regular '
                             'expression string, not %r'
                             % (controller_name_re,))
        try:
            re.compile(controller_name_re)
        except re.error as e:
            raise ValueError('controller_name_re %r is not a valid regular '
                             'expression: %s' % (controller_name_re, e))

        try:
            self.private_key = serialization.load_pem_private_key(
                self._bytes('priv_key', self._get_crypto_material(priv_key)),
                password=None)
        except (ValueError, TypeError):
            # Never the exception's text: it may quote the file.
            raise ValueError('priv_key %r does not hold an unencrypted PEM '
                             'private key' % (priv_key,)) from None
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise ValueError('priv_key %r holds a %s key; networking-vpp '
                             'signs with RS256, which needs an RSA key'
                             % (priv_key,
                                type(self.private_key).__name__))

        self.node_certificate = self._get_crypto_material(local_cert)
        self.node_cert_obj = self._load_cert(
            'local_cert', local_cert, self.node_certificate)
        public = self.node_cert_obj.public_key()
        if (not isinstance(public, rsa.RSAPublicKey) or
                public.public_numbers() !=
                self.private_key.public_key().public_numbers()):
            raise ValueError('local_cert %r is not the certificate of the '
                             'key in priv_key %r: nobody could verify what '
                             'it signs' % (local_cert, priv_key))
        #: This node's certificate, PEM bytes, as networking-vpp keeps it.
        self.node_cert_pem = self.node_cert_obj.public_bytes(
            serialization.Encoding.PEM)

        self.ca_cert_obj = self._load_cert(
            'ca_cert', ca_cert, self._get_crypto_material(ca_cert))
        self.controller_name_re = controller_name_re

    @staticmethod
    def _bytes(argument, data):
        if isinstance(data, str):
            data = data.encode('ascii', 'replace')
        if not isinstance(data, bytes):
            raise ValueError('%s: expected the PEM file contents as bytes, '
                             'not %s' % (argument, type(data).__name__))
        return data

    def _load_cert(self, argument, filename, data):
        try:
            return x509.load_pem_x509_certificate(
                self._bytes(argument, data))
        except ValueError:
            raise ValueError('%s %r does not hold a PEM certificate'
                             % (argument, filename)) from None

    def _get_crypto_material(self, filename):
        """The bytes of ``filename`` (``OSError`` if it cannot be read)."""
        with open(filename, 'rb') as c_file:
            return c_file.read()

    # -- which paths, which signers -------------------------------------

    def should_path_be_signed(self, path):
        """True if values at ``path`` are signed (and must be verified)."""
        return bool(re.match(etcd_controller_path_pattern, path) or
                    re.match(etcd_computeNode_path_pattern, path))

    def get_signer_name(self, key):
        """The :data:`nodeName` a signer of ``key`` must have.

        The host name in a compute node's path; ``controller_name_re``
        (as a pattern) for a controller's path; ``''`` (which no
        certificate has) for a path that is not signed.
        """
        m = re.match(etcd_computeNode_path_pattern, key)
        if m:
            return nodeName(False, m.group(m.lastindex))
        if re.match(etcd_controller_path_pattern, key):
            return nodeName(True, self.controller_name_re)
        return nodeName(False, '')

    # -- signing -----------------------------------------------------------

    def _make_jwt_payload(self, path, value, delta=0):
        payload = {'version': 1, 'value': value, 'path': path}
        if delta > 0:
            # A registered claim, checked by every PyJWT reader (ours and
            # networking-vpp's).  networking-vpp wrote an unchecked
            # 'expires' datetime here, which PyJWT cannot encode.
            payload['exp'] = int(time.time() + delta)
        return payload

    def sign(self, path, value, delta=0):
        """Return ``{"jwt": token, "certificate": PEM}`` for ``value``.

        :param path: the etcd key the value will be stored at (signed).
        :param value: anything JSON can hold.
        :param delta: seconds the signature stays valid; 0 is forever.

        The certificate is a ``str`` (networking-vpp's was bytes, which its
        JSON encoder turned into the same string).  Raises
        :class:`JWTSigningFailed` for a value JSON cannot hold.
        """
        if (isinstance(delta, bool) or
                not isinstance(delta, (int, float)) or delta < 0):
            raise ValueError('delta must be a number of seconds >= 0, not '
                             '%r' % (delta,))
        try:
            token = jwt.encode(self._make_jwt_payload(path, value, delta),
                               self.private_key, algorithm='RS256')
        except TypeError as e:
            raise JWTSigningFailed('cannot sign the value for %s: %s'
                                   % (path, e)) from None
        if isinstance(token, bytes):  # pragma: no cover - PyJWT < 2
            token = token.decode('ascii')
        return {'jwt': token,
                'certificate': self.node_cert_pem.decode('ascii')}

    # -- verifying ---------------------------------------------------------

    def _verify_certificate(self, cert):
        """Raise unless ``cert`` was issued by our CA, and both are valid."""
        now = _now()
        for which, c in (('certificate', cert), ('CA certificate',
                                                 self.ca_cert_obj)):
            before, after = _validity(c)
            if not before <= now <= after:
                raise JWTSigningFailed('the signer\'s %s is not valid now '
                                       '(valid from %s to %s)'
                                       % (which, before, after))
        try:
            cert.verify_directly_issued_by(self.ca_cert_obj)
        except Exception:
            raise JWTSigningFailed('Certificate is not trusted: it was not '
                                   'issued by the CA') from None

    def _check_node_name(self, nodeName, vcert_obj):
        """Raise unless the certificate's common name is the one wanted."""
        common_name = _common_name(vcert_obj)
        if common_name is not None:
            if nodeName.isRegexp:
                if re.match(nodeName.value, common_name):
                    return
            elif nodeName.value == common_name:
                return
        raise JWTSigningFailed('cert says node name is %s and we want %s'
                               % (common_name, nodeName.value))

    def _check_path(self, dval, path):
        if not isinstance(dval, dict) or 'value' not in dval:
            raise JWTSigningFailed('the token at %s holds no value' % path)
        if dval.get('path') != path:
            raise JWTSigningFailed('path is %s in data and we want %s'
                                   % (dval.get('path'), path))

    def verify(self, signer_requirements, path, sgn_value):
        """Return the value signed in ``sgn_value``, found at ``path``.

        :param signer_requirements: the :data:`nodeName` the signer must
            have (usually ``get_signer_name(path)``).
        :param path: the etcd key ``sgn_value`` was read from.
        :param sgn_value: the decoded JSON stored there.

        Raises :class:`JWTSigningFailed` unless every check in the module
        doc passes.
        """
        if sgn_value is None:
            raise JWTSigningFailed('Invalid empty value at path %s' % path)
        if not isinstance(sgn_value, dict):
            raise JWTSigningFailed('the value at %s is not signed'
                                   % (path,))
        pem = sgn_value.get('certificate', '')
        if isinstance(pem, str):
            pem = pem.encode('ascii', 'replace')
        try:
            if not isinstance(pem, bytes):
                raise ValueError(pem)
            vcert_obj = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise JWTSigningFailed('the value at %s carries no PEM '
                                   'certificate' % path) from None
        self._check_node_name(signer_requirements, vcert_obj)
        self._verify_certificate(vcert_obj)
        public_key = vcert_obj.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise JWTSigningFailed('the certificate at %s has no RSA key'
                                   % path)
        try:
            dval = jwt.decode(sgn_value.get('jwt', ''), public_key,
                              algorithms=['RS256'])
        except jwt.PyJWTError as e:
            raise JWTSigningFailed('InvalidTokenError: path :%s (%s)'
                                   % (path, type(e).__name__)) from None
        self._check_path(dval, path)
        return dval['value']

    def __repr__(self):
        return '<JWTUtils signer %s, CA %s>' % (
            _common_name(self.node_cert_obj),
            _common_name(self.ca_cert_obj))
