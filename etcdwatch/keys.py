"""Validation of the keys and durations users hand us.

python-etcd puts keys into URLs without quoting them, so ``/a?b`` silently
becomes a write to ``/a`` and ``#`` or ``%2F`` misbehave.  Rather than quote
(which would store keys other tools cannot find by the same name), every key
that etcdwatch builds from user input is checked here, before any request,
and refused with a ``ValueError`` that names the argument.
"""

import math
import numbers
import re

# Characters that change the meaning of a URL path, or that etcd v2 treats
# specially in a key, plus whitespace and control characters.
_FORBIDDEN = re.compile(r'[?#%\s\x00-\x1f\x7f\\]')


def check_path(argument, value, allow_root=False):
    """Return ``value`` normalised as an etcd directory path.

    Accepts ``'/a/b'`` and ``'/a/b/'`` (the trailing slash is dropped).
    Refuses anything that python-etcd would send somewhere else.
    """
    if not isinstance(value, str):
        raise ValueError('%s must be a string, not %r' % (argument, value))
    if not value.startswith('/'):
        raise ValueError('%s must start with "/": %r' % (argument, value))
    stripped = value.rstrip('/') if value != '/' else value
    if stripped == '/' or stripped == '':
        if allow_root:
            return '/'
        raise ValueError('%s must not be the root "/"' % argument)
    _check_text(argument, value, stripped)
    for segment in stripped.split('/')[1:]:
        if segment == '':
            raise ValueError('%s has an empty segment ("//"): %r'
                             % (argument, value))
        if segment in ('.', '..'):
            raise ValueError('%s must not contain "." or ".." segments: %r'
                             % (argument, value))
        if segment.startswith('_'):
            # etcd v2 hides keys starting with "_" from recursive reads
            # and watches, so a watcher would never see them.
            raise ValueError('%s segments must not start with "_" (etcd '
                             'hides such keys): %r' % (argument, value))
    return stripped


def check_name(argument, value):
    """Return ``value`` if it is usable as one key segment."""
    if not isinstance(value, str):
        raise ValueError('%s must be a string, not %r' % (argument, value))
    if value == '':
        raise ValueError('%s must not be empty' % argument)
    _check_text(argument, value, value)
    if '/' in value:
        raise ValueError('%s must not contain "/": %r' % (argument, value))
    if value in ('.', '..'):
        raise ValueError('%s must not be "." or "..": %r' % (argument, value))
    return value


def _check_text(argument, original, value):
    match = _FORBIDDEN.search(value)
    if match:
        raise ValueError('%s contains %r, which python-etcd would not send '
                         'as part of the key: %r'
                         % (argument, match.group(0), original))
    if not value.isascii():
        raise ValueError('%s must be ASCII (python-etcd does not quote '
                         'keys): %r' % (argument, original))


def check_duration(argument, value, allow_none=False):
    """Return ``value`` if it is a finite number of seconds above zero."""
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
            not math.isfinite(value) or value <= 0):
        raise ValueError('%s must be a number of seconds greater than 0, '
                         'not %r' % (argument, value))
    return value
