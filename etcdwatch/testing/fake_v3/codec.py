"""Decoding gateway requests and encoding answers as etcd 3.5 does.

int64 fields go out as JSON strings; fields holding their zero value are
left out; keys and values are base64.  Requests may give an int64 as a
number or a string, an enum as its name or its number.
"""

import base64
import binascii

from etcdwatch.testing.fake_v3 import errors


def b64(data):
    return base64.b64encode(data).decode('ascii')


def get_bytes(body, name):
    """The bytes of base64 field ``name`` (b'' if absent)."""
    value = body.get(name)
    if value is None:
        return b''
    if not isinstance(value, str):
        raise errors.invalid_argument(
            'json: cannot unmarshal %s into Go value of type []uint8'
            % type(value).__name__)
    try:
        return base64.b64decode(value.encode('ascii'), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        bad = 0
        alphabet = (b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
                    b'0123456789+/=')
        for i, char in enumerate(value.encode('utf-8', 'replace')):
            if char not in alphabet:
                bad = i
                break
        raise errors.invalid_argument(
            'illegal base64 data at input byte %d' % bad)


def get_int(body, name):
    """int64 field ``name`` (0 if absent), number or string."""
    value = body.get(name)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise errors.invalid_argument(
            'json: cannot unmarshal bool into Go value of type int64')
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text, 10)
        except ValueError:
            pass
        char = text[:1] or '"'
        raise errors.invalid_argument(
            "invalid character '%s' looking for beginning of value" % char)
    raise errors.invalid_argument(
        'json: cannot unmarshal %s into Go value of type int64'
        % type(value).__name__)


def get_bool(body, name):
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.invalid_argument(
            'json: cannot unmarshal %s into Go value of type bool'
            % type(value).__name__)
    return value


def get_enum(body, name, names, enum_type):
    """Index of enum field ``name``: ``names[i]`` or the number ``i``."""
    value = body.get(name)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    raise errors.invalid_argument(
        'unknown value "\\"%s\\"" for enum %s' % (value, enum_type))


def get_dict(body, name):
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.invalid_argument(
            'json: cannot unmarshal %s into Go value of type %s'
            % (type(value).__name__, name))
    return value


def get_list(body, name):
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise errors.invalid_argument(
            'json: cannot unmarshal %s into Go value of type []%s'
            % (type(value).__name__, name))
    return value


def put_int(out, name, value):
    """Set ``out[name]`` to ``str(value)`` unless it is zero."""
    if value:
        out[name] = str(value)
    return out
