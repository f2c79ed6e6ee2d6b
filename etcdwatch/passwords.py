"""Where a password comes from when it must not be on a command line.

The CLI (``--user`` with ``--password-file``) and the tooz driver (a
URL's user with ``password_file``) take a password from the first line of
a file, else from the environment variable :data:`ENV_PASSWORD`.  Errors
say why there is none; they never hold the file's text.
"""

import os
from typing import Optional

#: The environment variable a password is taken from.
ENV_PASSWORD = 'ETCDWATCH_PASSWORD'


def read_file(path: str) -> str:
    """The first line of the file at ``path`` (line ending stripped).

    Raises ValueError with the reason alone (``no such file or
    directory``, ``its first line is empty``...) when it cannot be read,
    is not UTF-8 or its first line is empty: the caller names the file.
    """
    try:
        with open(path, encoding='utf-8') as f:
            password = f.readline().rstrip('\r\n')
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError((getattr(e, 'strerror', None) or
                          type(e).__name__).lower()) from None
    if not password:
        raise ValueError('its first line is empty')
    return password


def from_environment() -> Optional[str]:
    """``$ETCDWATCH_PASSWORD``, or None if it is unset or empty."""
    return os.environ.get(ENV_PASSWORD) or None
