"""What a command prints: its log lines on stderr and watch's changes."""

import json
import logging
import os
import sys
from typing import Callable, Optional, TextIO

from etcdwatch.cli.client import reason
from etcdwatch.cli.common import LOG


class _OneLineFormatter(logging.Formatter):
    """``etcdwatch CMD: message (reason)``; tracebacks only if verbose.

    An error among a message's arguments is given as its :func:`reason`
    (``connection refused``), not as the repr of urllib3's error.
    """

    def __init__(self, prog: str, tracebacks: bool) -> None:
        super(_OneLineFormatter, self).__init__()
        self.prog = prog
        self.tracebacks = tracebacks

    def _message(self, record: logging.LogRecord) -> str:
        args = record.args
        if not self.tracebacks and isinstance(args, tuple) and any(
                isinstance(arg, BaseException) for arg in args):
            return str(record.msg) % tuple(
                reason(arg) if isinstance(arg, BaseException) else arg
                for arg in args)
        return record.getMessage()

    def format(self, record: logging.LogRecord) -> str:
        text = '%s: %s' % (self.prog, self._message(record))
        info = record.exc_info
        exc = info[1] if info else None
        if info and exc is not None:
            if self.tracebacks:
                text += '\n' + self.formatException(info)
            else:
                text += ' (%s)' % reason(exc)
        return text


def _outage_end(record: logging.LogRecord) -> bool:
    """Whether ``record`` is the library's "etcd available again"."""
    # etcdwatch.outage.OutageLog logs the end of an outage at INFO, and
    # nothing else at INFO.
    return (record.levelno == logging.INFO and record.module == 'outage' and
            record.name.startswith('etcdwatch.'))


class _LibraryFilter(logging.Filter):
    """At the default verbosity, the library's warnings and outage ends."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.WARNING or
                not record.name.startswith('etcdwatch.') or
                record.name == LOG.name):
            return True
        return _outage_end(record)


def setup_logging(prog: str, verbose: int, quiet: bool,
                  stream: Optional[TextIO] = None) -> Callable[[], None]:
    """Log to stderr, one line per message; returns what undoes it.

    The command's own notes are shown unless ``quiet``; the library's
    warnings always, the end of an outage unless ``quiet``, the rest of
    its info with ``-v``; python-etcd's and tracebacks with ``-vv``.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_OneLineFormatter(prog, verbose >= 2))
    root = logging.getLogger()
    library = logging.getLogger('etcdwatch')
    # python-etcd logs every failed request as an error, which repeats
    # what etcdwatch reports.
    python_etcd = logging.getLogger('etcd')
    # urllib3 warns of each retry of a connection.
    transport = logging.getLogger('urllib3')
    loggers = (root, library, LOG, python_etcd, transport)
    saved = [logger.level for logger in loggers]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    if verbose == 0 and not quiet:
        library.setLevel(logging.INFO)
        handler.addFilter(_LibraryFilter())
    else:
        library.setLevel(logging.WARNING if verbose == 0 else
                         logging.INFO if verbose == 1 else logging.DEBUG)
    LOG.setLevel(logging.WARNING if quiet else
                 logging.DEBUG if verbose >= 2 else logging.INFO)
    python_etcd.setLevel(logging.DEBUG if verbose >= 2 else
                         logging.CRITICAL)
    transport.setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)

    def restore() -> None:
        root.removeHandler(handler)
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)
    return restore


def _printable(value: str) -> str:
    return value if value.isprintable() else json.dumps(value)


def format_change(action: str, key: str, value: Optional[str],
                  index: Optional[int], as_json: bool = False) -> str:
    """One output line of ``etcdwatch watch`` (without the newline)."""
    if as_json:
        return json.dumps({'action': action, 'key': key, 'value': value,
                           'index': index}, sort_keys=True)
    text = '%6s  %-6s  %s' % ('-' if index is None else index, action, key)
    if value is not None:
        text += ' = ' + _printable(value)
    return text


def silence_stdout() -> None:
    """Point stdout at /dev/null, its reader gone (``| head``).

    As the Python docs advise for SIGPIPE, so that the flush at exit does
    not raise again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def write_line(out: TextIO, text: str) -> None:
    """Write one line to ``out`` and flush it."""
    out.write(text + '\n')
    out.flush()
