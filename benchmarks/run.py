#!/usr/bin/env python
"""Run every benchmark against a fresh etcd; print and write the results.

    python benchmarks/run.py [--quick] [--only CASE ...] [--api API ...]
                             [--no-docs]

Starts its own etcd for each API (``etcdwatch.testing.server.EtcdServer``:
one with ``--enable-v2`` for v2, one with the v2 API disabled for v3),
measures each case on each API it is shaped for, side by side with that
API's baseline, prints a table, and writes ``docs/performance.rst`` and the
plots ``docs/performance-*.png``; with ``--only``, only those cases'
sections of the page (and their goal rows) are replaced, in place, and
the rest of the page is kept.  ``--quick`` is a smoke run (fewer
repeats, smaller sizes; a few minutes); its figures are not worth
publishing.
"""

import argparse
import contextlib
import json
import logging
import os
import pickle
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import aio  # noqa: E402
from benchmarks import apis  # noqa: E402
from benchmarks import catchup  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks import failover  # noqa: E402
from benchmarks import fanout  # noqa: E402
from benchmarks import ingest  # noqa: E402
from benchmarks import latency  # noqa: E402
from benchmarks import load  # noqa: E402
from benchmarks import quiet  # noqa: E402
from benchmarks import report  # noqa: E402
from benchmarks import restart  # noqa: E402
from benchmarks import throughput  # noqa: E402
from etcdwatch.testing import server as etcd_server  # noqa: E402

#: Every case, in the order it runs and is reported.
CASES = (
    ('catchup', catchup),
    ('throughput', throughput),
    ('ingest', ingest),
    ('load', load),
    ('latency', latency),
    ('election', failover),
    ('fanout', fanout),
    ('quiet', quiet),
    ('restart', restart),
    ('aio', aio),
)
DOCS = os.path.join(ROOT, 'docs')
#: The last run's rows as JSON, and everything it measured, so that the
#: report can be redone (``--report-only``) without measuring again; kept
#: out of the source tree.
RAW_RESULTS = os.path.join(tempfile.gettempdir(),
                           'etcdwatch-bench-results.json')
MEASURED = os.path.join(tempfile.gettempdir(), 'etcdwatch-bench-run.pickle')


class Context(object):
    """What a case gets: the APIs measured (each with its etcd), the mode."""

    def __init__(self, servers, quick):
        self.apis = {name: apis.Api(name, servers[name])
                     for name in apis.NAMES if name in servers}
        self.quick = quick

    def select(self, names):
        """The :class:`apis.Api` of each of ``names`` this run measures."""
        return [self.apis[name] for name in names if name in self.apis]

    def pick(self, full, quick):
        """``full`` in a full run, ``quick`` in a quick one."""
        return quick if self.quick else full

    @staticmethod
    def log(message):
        sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), message))
        sys.stderr.flush()

    def close(self):
        for api in self.apis.values():
            api.close()


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: fewer repeats, smaller sizes')
    parser.add_argument('--only', nargs='+', metavar='CASE',
                        choices=[name for name, _ in CASES],
                        help='run only these cases')
    parser.add_argument('--api', nargs='+', choices=apis.NAMES,
                        default=list(apis.NAMES),
                        help='measure on these APIs only (default: both); '
                        'a case shaped for neither is skipped')
    parser.add_argument('--no-docs', action='store_true',
                        help='print the table only; write no files')
    parser.add_argument('--report-only', action='store_true',
                        help='measure nothing: report the last run again')
    return parser.parse_args(argv)


def _run_cases(ctx, names):
    measured = {}
    for name, module in CASES:
        if name not in names:
            continue
        if not ctx.select(module.APIS):
            ctx.log('case %s: skipped (runs on %s only)'
                    % (name, ', '.join(module.APIS)))
            continue
        ctx.log('case %s: starting' % name)
        started = time.monotonic()
        results = module.measure(ctx)
        measured[name] = {
            'results': results,
            'rows': module.rows(results),
            'seconds': time.monotonic() - started,
        }
        ctx.log('case %s: done in %.0f s' % (name,
                                             measured[name]['seconds']))
    return measured


def _measure(args, names):
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(etcd_server.EtcdServer(
            name='etcd-%s' % name, enable_v2=name == apis.V2))
            for name in args.api}
        ctx = Context(servers, args.quick)
        try:
            machine = common.machine_info(servers)
            measured = _run_cases(ctx, names)
        finally:
            ctx.close()
    machine['runtime_s'] = round(time.monotonic() - started)
    machine['date'] = time.strftime('%Y-%m-%d %H:%M',
                                    time.localtime(time.time() -
                                                   machine['runtime_s']))
    machine['load_at_end'] = '%.2f %.2f %.2f' % os.getloadavg()
    machine['quick'] = args.quick
    with open(MEASURED, 'wb') as out:
        pickle.dump((machine, names, measured), out)
    return machine, measured


def _report(machine, names, measured, write_docs):
    table = [r for name in names if name in measured
             for r in measured[name]['rows']]
    print(report.text_table(table))
    print(report.machine_line(machine))
    if not write_docs:
        return
    plots = report.write_plots(DOCS, measured)
    page = os.path.join(DOCS, 'performance.rst')
    if set(names) != {name for name, _ in CASES} and os.path.exists(page):
        # Some cases only: their sections change in place, the rest of the
        # page (and its other cases' figures) stays.
        report.update_rst(page, machine, CASES, measured, table, plots)
    else:
        report.write_rst(page, machine, CASES, measured, table, plots)
    with open(RAW_RESULTS, 'w') as out:
        json.dump({'machine': machine,
                   'rows': [r._asdict() for r in table]},
                  out, indent=1, default=str)


def main(argv=None):
    args = _parse(argv if argv is not None else sys.argv[1:])
    # python-etcd and urllib3 log every discarded pooled connection:
    # that is measured (fan-out case), not printed.
    logging.basicConfig(level=logging.ERROR)
    names = args.only or [name for name, _ in CASES]
    if args.report_only:
        with open(MEASURED, 'rb') as source:
            machine, names, measured = pickle.load(source)
        for name, module in CASES:
            if name in measured:
                measured[name]['rows'] = module.rows(
                    measured[name]['results'])
    else:
        machine, measured = _measure(args, names)
    _report(machine, names, measured, not args.no_docs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
