"""A service installed without eventlet (the [eventlet] extra) works.

Each test runs in a fresh interpreter in which ``import eventlet`` fails,
as it does when eventlet is not installed.
"""

import subprocess
import sys
import textwrap

NO_EVENTLET = '''
import sys
sys.modules['eventlet'] = None     # import eventlet raises ImportError
'''


def _run(code):
    proc = subprocess.run(
        [sys.executable, '-W', 'error::DeprecationWarning:eventlet',
         '-c', NO_EVENTLET + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_recipes_run_on_threads_without_eventlet():
    proc = _run('''
        import etcd3gw
        import etcdwatch
        from etcdwatch import handlers
        from etcdwatch.testing import FakeEtcdClient

        class W(etcdwatch.EtcdWatcher):
            def do_all_work(self):
                pass

        client = FakeEtcdClient()
        client.write('/p/k', 'v')
        w = W(client, 'w', '/p')
        e = etcdwatch.EtcdElection(client, 'e', '/el', work_time=5)
        with e.leadership():
            pass
        assert w.etcd_data == {'/p/k': 'v'}
        assert handlers.default_handler().name == 'threading'
        assert w._handler.name == 'threading'
        print('ok')
    ''')
    assert proc.stdout.strip() == 'ok'
    assert 'Eventlet is deprecated' not in proc.stderr


def test_asking_for_eventlet_without_it_names_the_extra():
    proc = _run('''
        from etcdwatch import handlers
        try:
            handlers.get_handler('eventlet')
        except ImportError as e:
            print(e.name, '|', e)
        else:
            raise AssertionError('no ImportError')
    ''')
    name, _, message = proc.stdout.partition(' | ')
    assert name == 'eventlet'
    assert "'.[eventlet]'" in message
