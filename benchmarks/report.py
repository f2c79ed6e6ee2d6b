"""Turn the measurements into a text table, plots and docs/performance.rst.

The reStructuredText page is generated whole from the last run; its prose
explains each goal that the run missed with the cause we found (see
:data:`CAUSES`).
"""

import math
import os
import re
import time

from benchmarks import aio
from benchmarks import apis
from benchmarks import catchup
from benchmarks import failover
from benchmarks import load
from benchmarks import throughput

CATCHUP_PLOT = 'performance-catchup.png'
LOAD_PLOT = 'performance-load.png'
THROUGHPUT_PLOT = 'performance-throughput.png'
AIO_PLOT = 'performance-aio.png'
#: Plots shown in their case's own section, not in the page's opening.
SECTION_PLOTS = {'aio': AIO_PLOT}
PLOT_SIZE = (9, 4)
PLOT_DPI = 100
#: What the page says about the machine and the run, in order.
MACHINE_FIELDS = (
    ('cores', 'CPU cores'),
    ('python', 'Python'),
    ('implementation', 'Python implementation'),
    ('etcd', 'etcd'),
    ('servers', 'etcd servers'),
    ('python_etcd', 'python-etcd'),
    ('etcd3gw', 'etcd3gw'),
    ('source', 'etcdwatch measured at commit'),
    ('platform', 'platform'),
    ('load_at_start', 'load average at start (1, 5, 15 min)'),
    ('load_at_end', 'load average at end'),
    ('runtime_s', 'run time (s)'),
    ('argv', 'command'),
)
#: Width of a text-table column, by field.
WIDTHS = (12, 26, 48, 10, 26, 18, 30, 6)

_IMPL_LABELS = {
    'etcdwatch': 'etcdwatch',
    'seed': "seed (walk every event)",
    'bare': 'bare python-etcd loop',
    'watcher': 'etcdwatch EtcdWatcher',
    'change': 'etcdwatch EtcdChangeWatcher',
}

_LOAD_LABELS = {'bare': 'bare client.read() into a dict'}

#: What causes a missed goal, by (case, metric prefix, API or None for
#: either); shown only when the run missed it.
CAUSES = {
    ('catch-up', 'time', apis.V2): (
        'For small K etcdwatch walks like the seed, one watch request per '
        'event, and adds its own per-event cost (error translation, the '
        'Event tuple, the lock and the delivery queue): a few percent of a '
        'loopback round trip, about the size of the noise.  Past '
        '``max(CATCHUP_MIN_LAG=16, tree/64)`` events it re-reads instead.'),
    ('throughput', 'converge', apis.V2): (
        'After the writers stop, etcdwatch walks whatever lag it has left '
        'as long as the lag is under ``max(CATCHUP_MIN_LAG=16, tree/64)`` '
        'events (at most 16 round trips), then re-reads; one read of these '
        'trees costs a few round trips, so the walk can exceed it.'),
    ('throughput', 'events', None): (
        'Events applied per second cannot exceed what the writers wrote in '
        'that trial, and the writers\' rate moved by up to 2x between '
        'trials of the same setting (two cores shared with etcd, the '
        'writers, the follower and other test runs: see "writes/s" in the '
        'notes).  The share of written events applied, measured within each '
        'trial, does not depend on it.'),
    ('throughput', 'share', None): (
        'See the follower CPU per 1000 events, and etcd\'s in its notes: '
        'they say whether the follower or etcd paid for the difference.'),
    ('initial load', 'EtcdWatcher time', None): (
        'At 1000 keys one read takes a few milliseconds and the watcher\'s '
        'fixed costs (backend, handler, locks) show; the difference is a '
        'fraction of a millisecond.'),
    ('initial load', 'change-watcher', None): (
        'The goal (< 5 % of a read) is this benchmark\'s own bar; the issue '
        'sets none.  ``EtcdChangeWatcher.do_all_work`` reconciles only the '
        'keys that differ, but still compares every value once, because a '
        'v2 read cannot say which keys changed; at 100k keys that is about '
        'a tenth of the read.'),
    ('latency', 'write', apis.V2): (
        'etcdwatch sends the same single watch request per event as the '
        'bare loop; a difference in the tail is scheduling noise on a '
        'shared machine (the p99 of 500 samples is the 5th-worst one).'),
    ('latency', 'write', apis.V3): (
        'On v3 etcdwatch and the bare loop read the same kind of stream '
        '(etcd3gw in a thread of its own and a queue, etcdwatch in the '
        'watcher\'s thread); a difference in the tail is scheduling noise '
        'on a shared machine (the p99 of 500 samples is the 5th-worst '
        'one).'),
    ('throughput', 'converge', apis.V3): (
        'On v3 a follower that re-read while the writers wrote restarts its '
        'stream at a past revision, which etcd answers at its next round '
        'for late watchers (every 100 ms); the bare etcd3gw loop never '
        're-reads and stays on its live stream (see "v3 against v2").'),
    ('fan-out', 'idle', None): (
        'Idle watchers sit in a blocking read; CPU is spent only when a '
        'heartbeat expires and the watch is re-issued on a new connection '
        '(see the notes for the cost of each).'),
}


def _fmt(value, digits=1):
    if value is None:
        return '-'
    if isinstance(value, float):
        if math.isnan(value):
            return 'n/a'
        if abs(value) >= 100:
            return '%.0f' % value
        if abs(value) < 1:
            digits += 1
        return '%.*f' % (digits, value)
    return str(value)


def _met(flag):
    return {True: 'MET', False: 'MISSED', None: ''}[flag]


def _cells(row):
    ratio = ('%s %s' % (_fmt(row.ratio, 2), row.ratio_name)
             if row.ratio is not None else '')
    baseline = '%s %s' % (row.baseline_name or '', _fmt(row.baseline))
    return [row.case, row.param, '%s (%s)' % (row.metric, row.unit),
            _fmt(row.ours), baseline.strip(), ratio, row.goal,
            _met(row.met)]


def text_table(rows):
    header = ['case', 'param', 'metric', 'etcdwatch', 'baseline', 'ratio',
              'goal', 'met']
    lines = [' '.join(h.ljust(w) for h, w in zip(header, WIDTHS))]
    for row in rows:
        lines.append(' '.join(str(c).ljust(w)
                              for c, w in zip(_cells(row), WIDTHS)))
    return '\n'.join(lines)


def machine_line(machine):
    return ('machine: %(cores)s cores, %(implementation)s %(python)s, etcd '
            '%(etcd)s, python-etcd %(python_etcd)s, %(platform)s; load '
            'average %(load_at_start)s at start, %(load_at_end)s at end; '
            'run took %(runtime_s)s s' % machine)


# -- plots ---------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    return pyplot


def _draw(axes, series, title, xlabel, ylabel, log=True, labels=None):
    from matplotlib import ticker
    labels = dict(_IMPL_LABELS, **(labels or {}))
    for name, points in series.items():
        xs = [x for x, _y in points]
        ys = [y for _x, y in points]
        axes.plot(xs, ys, marker='o', label=labels.get(name, name))
    if log:
        axes.set_xscale('log')
        axes.set_yscale('log')
        plain = ticker.FuncFormatter(lambda value, _pos: '%g' % value)
        axes.xaxis.set_major_formatter(plain)
        axes.yaxis.set_major_formatter(plain)
        axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which='both', alpha=0.3)
    axes.legend(fontsize='small')


def _save(pyplot, figure, docs, name):
    figure.tight_layout()
    figure.savefig(os.path.join(docs, name), dpi=PLOT_DPI)
    pyplot.close(figure)
    return name


def write_plots(docs, measured):
    """Write the PNGs the measured cases allow; return their names."""
    pyplot = _pyplot()
    names = []
    if 'catchup' in measured:
        figure, axes = pyplot.subplots(figsize=PLOT_SIZE)
        _draw(axes, catchup.plot_series(measured['catchup']['results']),
              'Catch-up after K missed events (tree of %d keys)'
              % catchup.TREE_SIZE, 'K missed events', 'ms (median)')
        names.append(_save(pyplot, figure, docs, CATCHUP_PLOT))
    if 'load' in measured:
        figure, (left, right) = pyplot.subplots(1, 2, figsize=PLOT_SIZE)
        series = load.plot_series(measured['load']['results'])
        _draw(left, {impl: series[('time', impl)] for impl in load.IMPLS},
              'Initial load: time', 'keys', 'ms (median)',
              labels=_LOAD_LABELS)
        _draw(right, {impl: series[('memory', impl)]
                      for impl in load.IMPLS},
              'Initial load: peak memory', 'keys', 'MiB (tracemalloc)',
              labels=_LOAD_LABELS)
        names.append(_save(pyplot, figure, docs, LOAD_PLOT))
    if 'throughput' in measured:
        figure, axes = pyplot.subplots(figsize=PLOT_SIZE)
        _draw(axes, throughput.plot_series(
            measured['throughput']['results']),
            'Live throughput: index applied per second', 'writer processes',
            'events/s (median)', log=False)
        names.append(_save(pyplot, figure, docs, THROUGHPUT_PLOT))
    if 'aio' in measured:
        names.append(_aio_plot(pyplot, docs, measured['aio']['results']))
    return names


def _aio_plot(pyplot, docs, results):
    """Bars: asyncio, threads and the bare loop, one panel per figure."""
    panels = (('idle', 'Idle CPU (%% of a core, %.0f s)'
               % results['window']),
              ('cpu', 'CPU per 1,000 events (ms)'),
              ('sweep', 'One write per prefix:\nfirst write -> last '
               'delivery (ms)'),
              ('memory', 'Memory per watcher (KiB)'))
    series = aio.plot_series(results)
    figure, axes = pyplot.subplots(1, len(panels), figsize=(12, 3.6))
    colours = ('tab:blue', 'tab:orange', 'tab:green')
    for axis, (key, title) in zip(axes, panels):
        labels = list(series[key])
        values = [series[key][label] for label in labels]
        bars = axis.bar(range(len(labels)), values, color=colours)
        axis.bar_label(bars, labels=[_fmt(v) for v in values],
                       fontsize='small')
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels([label.replace(' ', '\n', 1)
                              for label in labels], fontsize='small')
        axis.set_title(title, fontsize='medium')
        axis.margins(y=0.15)
        axis.grid(True, axis='y', alpha=0.3)
    figure.suptitle('%d watchers in one process each (v3)'
                    % results['count'], fontsize='medium')
    return _save(pyplot, figure, docs, AIO_PLOT)


# -- reStructuredText ---------------------------------------------------

def _rst_table(rows, header):
    lines = ['.. list-table::', '   :header-rows: 1', '']
    for cells in [header] + rows:
        lines.append('   * - ' + _rst_escape(cells[0]))
        lines.extend('     - ' + _rst_escape(cell) for cell in cells[1:])
    return lines + ['']


def _rst_escape(text):
    text = str(text)
    return text.replace('*', '\\*') if text else '\\'


def _goal_lines(table):
    rows = []
    causes = []
    for row in table:
        if not row.goal:
            continue
        rows.append([row.case, row.param, row.metric, row.goal,
                     '%s %s vs %s %s (%s %s)' % (
                         _fmt(row.ours), row.unit, _fmt(row.baseline),
                         row.baseline_name, _fmt(row.ratio, 2),
                         row.ratio_name),
                     _met(row.met)])
        cause = _cause(row)
        if row.met is False and cause and cause not in causes:
            causes.append(cause)
    lines = _rst_table(rows, ['case', 'param', 'metric', 'goal',
                              'figure', 'result'])
    if causes:
        lines += ['Why the missed goals were missed:', '']
        lines += ['- ' + cause for cause in causes] + ['']
    return lines


def _cause(row):
    for (case, prefix, api), text in CAUSES.items():
        if (row.case == case and row.metric.startswith(prefix) and
                api in (None, _api_of(row))):
            return text
    return None


def _api_of(row):
    """The API a row was measured on, or None (both, or v2-only cases)."""
    head = row.param.split(',')[0]
    return head if head in apis.NAMES else None


def _finding_lines(cases, measured):
    """What the cases themselves conclude from their figures."""
    lines = []
    for name, module in cases:
        if name in measured and hasattr(module, 'findings'):
            lines += ['- ' + finding for finding in
                      module.findings(measured[name]['results'])]
    if not lines:
        return []
    return ['Findings', '--------', ''] + lines + ['']


#: The baselines of the v3 rows that the v3 section compares with.
_V3_BASELINES = ('bare etcd3gw loop', 'bare etcd3gw walk',
                 'bare etcd3gw lock')


def _v3_lines(cases, measured, table):
    """etcdwatch on v3 against the bare etcd3gw code and etcdwatch on v2."""
    rows = []
    for row in table:
        if (_api_of(row) != apis.V3 or
                row.baseline_name not in _V3_BASELINES):
            continue
        param = row.param.split(', ', 1)[1]
        v2 = _matching(table, row.case, '%s, %s' % (apis.V2, param),
                       row.metric)
        rows.append([row.case, param, '%s (%s)' % (row.metric, row.unit),
                     _fmt(row.ours), _fmt(row.baseline), _fmt(row.ratio, 2),
                     _fmt(v2.ours) if v2 else '-',
                     _fmt(row.ours / v2.ours, 2) if v2 and v2.ours else '-'])
    if not rows:
        return []
    title = 'v3 against v2'
    lines = [title, '-' * len(title), '',
             'What etcdwatch costs on v3, against the least code that does '
             'the same with etcd3gw alone, and against etcdwatch on v2 in '
             'the same run (the rows of the cases below, side by side; "-" '
             'where v2 has no such row).', '']
    lines += _rst_table(rows, ['case', 'param', 'metric', 'etcdwatch v3',
                               'bare etcd3gw', 'ours/bare', 'etcdwatch v2',
                               'v3/v2'])
    said = []
    for name, module in cases:
        if name in measured and hasattr(module, 'v3_findings'):
            said += module.v3_findings(measured[name]['results'])
    lines += ['- ' + finding for finding in said]
    return lines + ([''] if said else [])


def _matching(table, case, param, metric):
    for row in table:
        if (row.case, row.param, row.metric) == (case, param, metric):
            return row
    return None


#: The first run's proposals, adopted since; the figures are the ones that
#: run recorded in docs/performance.rst (commit f41ae07), old -> proposed.
_HISTORY = (
    'History: the first run of these benchmarks (commit f41ae07) measured '
    'three changes proposed for etcdwatch, and all three were adopted '
    '(commit 6f9c58f): catch-up thresholds ``CATCHUP_MIN_LAG`` 100 -> 16 '
    'and ``CATCHUP_TREE_FRACTION`` 16 -> 64 (catch-up after 100 events on '
    'a 1000-key tree: 45.3 -> 3.3 ms), a change-watcher diff that '
    'reconciles only the keys that differ (100000 keys, nothing changed: '
    '109 -> 32.7 ms) and a tree read from python-etcd\'s raw JSON nodes '
    '(initial load of 100000 keys: 499 -> 264 ms).  The figures above '
    'measure etcdwatch as it now is.')


def _section_lines(name, module, measured, plots, machine=None):
    """The lines of one case's section (title included).

    ``machine`` is given when the section was measured apart from the
    rest of the page (``--only``): it then says how and when.
    """
    title = _CASE_TITLES[name]
    results = measured[name]['results']
    if not hasattr(module, 'table'):
        return _case_lines(title, module.__doc__, measured[name]['rows'],
                           machine)
    lines = [title, '-' * len(title), '']
    lines += [line.strip() for line in (module.__doc__ or '').strip()
              .splitlines()]
    lines.append('')
    if machine is not None:
        lines += _apart_lines(machine)
    header, body = module.table(results)
    lines += _rst_table([[cells[0]] + [_fmt(v) for v in cells[1:4]] +
                         [_fmt(v, 2) for v in cells[4:]] for cells in body],
                        header)
    plot = SECTION_PLOTS.get(name)
    if plot in plots:
        lines += ['.. image:: %s' % plot, '']
    said = module.section_findings(results)
    lines += ['- ' + finding for finding in said]
    return lines + ([''] if said else [])


def _apart_lines(machine):
    lines = ['*Measured apart from the rest of this page, by* ``python %s`` '
             '*on %s* (etcdwatch at commit %s; etcd %s; load average %s at '
             'start, %s at end; %s s).' % (
                 machine.get('argv', 'benchmarks/run.py'),
                 machine.get('date') or time.strftime('%Y-%m-%d %H:%M'),
                 machine.get('source', '?'), machine.get('etcd', '?'),
                 machine.get('load_at_start', '?'),
                 machine.get('load_at_end', '?'),
                 machine.get('runtime_s', '?')), '']
    if machine.get('quick'):
        lines += ['.. warning:: A ``--quick`` smoke run: few repeats and '
                  'small sizes.  Do not quote these figures.', '']
    return lines


def _case_lines(title, doc, rows, machine=None):
    lines = [title, '-' * len(title), '']
    lines += [line.strip() for line in (doc or '').strip().splitlines()]
    lines.append('')
    if machine is not None:
        lines += _apart_lines(machine)
    body = [[r.param, '%s (%s)' % (r.metric, r.unit), _fmt(r.ours),
             '%s: %s' % (r.baseline_name or '', _fmt(r.baseline)),
             '%s %s' % (_fmt(r.ratio, 2), r.ratio_name), _met(r.met),
             r.note] for r in rows]
    return lines + _rst_table(body, ['param', 'metric', 'etcdwatch',
                                     'baseline', 'ratio', 'goal',
                                     'notes'])


_CASE_TITLES = {
    'catchup': 'Catch-up after K missed events',
    'throughput': 'Live throughput',
    'ingest': 'CPU per event: whole watch messages',
    'load': 'Initial load and resync',
    'latency': 'Event latency',
    'election': 'Election handover and failover',
    'fanout': 'Fan-out in one eventlet process',
    'quiet': 'Quiet prefixes on a busy etcd',
    'restart': 'Coming back after an etcd restart',
    'aio': 'asyncio',
}

_INTRO = '''\
How it was measured
-------------------

Every figure below was measured in one run of ``python
benchmarks/run.py`` (``tox -e bench``) on both of etcd's APIs, each
against an etcd that the run started itself: v2 (python-etcd) on one with
``--enable-v2``, v3 (etcd3gw, through etcd's JSON gateway) on a second one
with the v2 API disabled.  Each figure stands side by side with a baseline
on the same API, measured in the same run.  On v2: networking-vpp's
original ``etcdutils`` module, from which etcdwatch grew (called "the
seed" below: one ``client.watch(path, index=i, recursive=True)`` call per
event, a full read only when etcd says the index was cleared) or
a bare python-etcd loop (the least code that follows a prefix: a recursive
read into a dict, then watch with ``waitIndex``).  On v3: a bare etcd3gw
loop (the least correct code with etcd3gw alone: one range read of the
prefix, for its revision, then ``client.watch_prefix(prefix,
start_revision=revision + 1)``, applying each event it yields), and for
elections etcd3gw's ``Lock`` with lease keepalives and ``watch_once``.
Figures are medians over the repeats (p99 where it says so); a ratio
compares etcdwatch with the baseline.  "v3 against v2" puts the two APIs
side by side.  Initial load and fan-out are measured on v2 only,
quiet prefixes on a busy etcd and asyncio on v3 only.

These are benchmarks, not tests.  The machine has two cores that etcd, the
followers, the writers and other engineers' test runs share, so figures of
a few milliseconds move by 10-20 % between runs; the load average at start
and end says how busy it was.'''


def _row(table, case, param, metric):
    row = _matching(table, case, param, metric)
    return row if row is not None and row.ours is not None else None


def _headline_lines(table, plots):
    """The page's opening, for users: three figures, then the plots.

    Each figure is said only if the run measured it (a ``--quick`` run
    may not have every row).
    """
    said = []
    v2 = _row(table, 'latency', '%s, idle watcher' % apis.V2,
              'write -> callback p50')
    v3 = _row(table, 'latency', '%s, idle watcher' % apis.V3,
              'write -> callback p50')
    if v2 and v3:
        said.append(
            '**A change reaches your callback %s ms after the write** on '
            'v2, %s ms on v3 (medians, on loopback), as fast as the least '
            'code that follows a prefix with the client alone (%s and %s '
            'ms).' % (_fmt(v2.ours), _fmt(v3.ours), _fmt(v2.baseline),
                      _fmt(v3.baseline)))
    walks = [row for row in table
             if row.case == 'catch-up' and _api_of(row) == apis.V2
             and row.metric == 'time to catch up' and row.ratio
             and row.ours is not None]
    if walks:
        best = max(walks, key=lambda row: row.ratio)
        missed = best.param.split('K=')[-1]
        said.append(
            '**A watcher that missed %s events catches up in %s ms**, %.0f '
            'times faster than networking-vpp\'s original ``etcdutils``, '
            'which asks etcd for each missed event in turn (%s ms; v2, a '
            '%d-key tree).' % (missed, _fmt(best.ours), best.ratio,
                               _fmt(best.baseline), catchup.TREE_SIZE))
    clean = _row(table, 'election', '%s, handover after clean exit'
                 % apis.V2, 'leaderless time (median)')
    clean3 = _row(table, 'election', '%s, handover after clean exit'
                  % apis.V3, 'leaderless time (median)')
    killed = _row(table, 'election', '%s, failover after kill -9'
                  % apis.V2, 'leaderless time (median)')
    if clean and killed:
        said.append(
            '**When a leader exits cleanly, a waiting worker leads %s ms '
            'later** (v2; %s ms on v3); when it is killed, once its key '
            'expires: %s s with a %g s ``work_time``.  A process stopped '
            'with SIGTERM exits cleanly only if it handles the signal '
            '(:doc:`guide`, "Handing over on SIGTERM").' % (
                _fmt(clean.ours), _fmt(clean3.ours) if clean3 else '-',
                _fmt(killed.ours / 1e3, 2), failover.WORK_TIME))
    if not said and not plots:
        return []
    title = 'At a glance'
    lines = [title, '-' * len(title), '']
    lines += ['- ' + sentence for sentence in said]
    lines += ['', 'In the plots and tables, "seed" is networking-vpp\'s '
              'original ``etcdutils`` module, from which etcdwatch grew.  '
              'The details, every baseline and the goals each figure was '
              'held to follow the plots.', '']
    for plot in plots:
        lines += ['.. image:: %s' % plot, '']
    return lines


def write_rst(path, machine, cases, measured, table, plots):
    """Write the page; ``cases`` is [(name, module)] in report order."""
    lines = ['.. This file is generated by benchmarks/run.py: do not edit; '
             'run it again.', '', '=' * 11, 'Performance', '=' * 11, '',
             '*Generated by* ``python benchmarks/run.py%s`` *on %s.*' % (
                 ' --quick' if machine['quick'] else '',
                 machine.get('date') or time.strftime('%Y-%m-%d %H:%M')),
             '']
    if machine['quick']:
        lines += ['.. warning:: A ``--quick`` smoke run: few repeats and '
                  'small sizes.  Do not quote these figures.', '']
    lines += _headline_lines(table, [
        plot for plot in plots if plot not in SECTION_PLOTS.values()])
    lines += _INTRO.splitlines() + ['', 'Machine', '-------', '']
    lines += ['- %s: %s' % (label, machine[key])
              for key, label in MACHINE_FIELDS if key in machine]
    lines += ['', 'Goals', '-----', '']
    lines += _goal_lines(table)
    lines += _v3_lines(cases, measured, table)
    for name, module in cases:
        if name in measured:
            lines += _section_lines(name, module, measured, plots)
    lines += _finding_lines(cases, measured)
    lines += [_HISTORY, '']
    with open(path, 'w') as out:
        out.write('\n'.join(lines).rstrip() + '\n')


# -- updating the page in place (``--only``) -------------------------------

_HEADING = re.compile(r'^(?P<title>[^\n]+)\n(?P<line>-+)\n', re.M)


def _sections(text):
    """[(title, start, end)] of the page's sections, in order."""
    found = [m for m in _HEADING.finditer(text)
             if len(m.group('line')) == len(m.group('title'))]
    return [(m.group('title'), m.start(),
             found[number + 1].start() if number + 1 < len(found) else
             len(text)) for number, m in enumerate(found)]


def update_rst(path, machine, cases, measured, table, plots):
    """Put the sections of the measured cases into the page in place.

    Every other section, the opening and the machine of the run that
    wrote the page stay as they are; each measured case's section is
    replaced (or added before "Findings"), says how and when it was
    measured, and its rows of the goals table replace that case's old
    ones.
    """
    with open(path) as source:
        text = source.read()
    for name, module in cases:
        if name not in measured:
            continue
        section = '\n'.join(_section_lines(name, module, measured, plots,
                                           machine)).rstrip() + '\n\n'
        text = _replace_section(text, _CASE_TITLES[name], section)
        case_rows = measured[name]['rows']
        if case_rows:
            text = _replace_goal_rows(text, case_rows)
    with open(path, 'w') as out:
        out.write(text.rstrip() + '\n')


def _replace_section(text, title, section):
    sections = _sections(text)
    for found, start, end in sections:
        if found == title:
            return text[:start] + section + text[end:]
    for found, start, end in sections:
        if found == 'Findings':
            return text[:start] + section + text[start:]
    return text.rstrip() + '\n\n' + section


def _replace_goal_rows(text, rows):
    """The goals table with ``rows``' case's entries replaced by theirs."""
    sections = dict((title, (start, end))
                    for title, start, end in _sections(text))
    if 'Goals' not in sections:
        return text
    start, end = sections['Goals']
    body = text[start:end]
    table_end = body.find('\n\n', body.find('   * - '))
    if table_end < 0:
        return text
    head, entries = body[:table_end].split('\n   * - ', 1)
    entries = ['   * - ' + entry for entry in entries.split('\n   * - ')]
    cases = {row.case for row in rows}
    header, kept = entries[0], [entry for entry in entries[1:]
                                if entry.split('\n')[0][7:] not in cases]
    new = [line for line in _goal_lines(rows) if line.startswith('   ')]
    fresh = '\n'.join(new).split('\n   * - ')[2:]
    kept += ['   * - ' + entry for entry in fresh]
    body = '\n'.join([head, header] + kept) + body[table_end:]
    return text[:start] + body + text[end:]
