"""tooz's own test suite against etcdwatch's tooz driver, on a real etcd.

The tests shipped in the tooz package (``tooz.tests.test_coordination``
and ``tooz.tests.test_partitioner``) run in a pytest process of their own
with ``TOOZ_TEST_URL=etcdwatch+http://<a new etcd, v2 disabled>``; their
JUnit report is read back and counted.  Passes only with no failure, no
error, and no skip but the one tooz gates on the driver's class:
``test_watch_join_group_disappear`` runs only for tooz's own etcd3gw,
memcached and redis drivers (an ``isinstance`` check), whatever the
driver can do.

tooz's test module imports its ipc, memcached and redis drivers, so their
client libraries (sysv_ipc, pymemcache, redis) must be installed; no
server of theirs is needed.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from etcdwatch.testing.server import EtcdServer

pytestmark = pytest.mark.functional

#: Skips tooz decides from the driver's class, not from what it can do.
CLASS_GATED = {'TestAPI.test_watch_join_group_disappear'}
#: At least this many tests (tooz 9.1 has 98 in the two modules).
MIN_TESTS = 90


def run_tooz_suite(url_template, tmp_path, extra=()):
    """Run tooz's suite against a new etcd; return (counts, results).

    ``results`` maps each test's name to 'passed', 'failed', 'error' or
    'skipped: <message>'.
    """
    report = str(tmp_path / 'tooz-junit.xml')
    with EtcdServer(name='tooz', enable_v2=False) as server:
        env = dict(os.environ,
                   TOOZ_TEST_URL=url_template % (server.host, server.port))
        env.pop('TOOZ_TEST_ETCD3GW', None)
        proc = subprocess.run(
            [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
             '-p', 'no:xdist', '--timeout', '180', '-o', 'addopts=',
             '--junitxml', report, '--pyargs',
             'tooz.tests.test_coordination', 'tooz.tests.test_partitioner',
             *extra],
            env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, universal_newlines=True, timeout=1500)
    print(proc.stdout[-6000:])
    results = {}
    for case in ElementTree.parse(report).getroot().iter('testcase'):
        name = '%s.%s' % (case.get('classname').rsplit('.', 1)[-1],
                          case.get('name'))
        if case.find('failure') is not None:
            results[name] = 'failed'
        elif case.find('error') is not None:
            results[name] = 'error'
        elif case.find('skipped') is not None:
            results[name] = 'skipped: %s' % case.find('skipped').get(
                'message', '')
        else:
            results[name] = 'passed'
    counts = {}
    for outcome in results.values():
        kind = outcome.split(':', 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    print('tooz suite on %s: %r' % (url_template.split(':')[0], counts))
    return counts, results


def test_tooz_suite_passes_on_etcdwatch_driver(tmp_path):
    counts, results = run_tooz_suite('etcdwatch+http://%s:%d', tmp_path)
    assert len(results) >= MIN_TESTS, counts
    bad = {name: outcome for name, outcome in results.items()
           if outcome in ('failed', 'error')}
    assert not bad, bad
    skipped = {name for name, outcome in results.items()
               if outcome.startswith('skipped')}
    assert skipped <= CLASS_GATED, {name: results[name]
                                    for name in skipped - CLASS_GATED}
