"""The concurrency handlers and how the default is picked."""

import subprocess
import sys
import textwrap

import pytest

from etcdwatch import handlers


@pytest.mark.parametrize('name', ['threading', 'eventlet'])
def test_primitives(name):
    h = handlers.get_handler(name)
    assert h.name == name
    ev = h.event()
    assert not ev.wait(0.01)
    results = []

    def work(x):
        with h.lock():
            with h.rlock():
                results.append(x)
        ev.set()
    task = h.spawn(work, 7)
    assert ev.wait(5)
    assert task.join(5) and not task.is_alive()
    assert results == [7]
    cond = h.condition()
    with cond:
        assert cond.wait(0.01) is False
    h.sleep(0)


def test_get_handler_rejects_unknown_names():
    with pytest.raises(ValueError, match='handler'):
        handlers.get_handler('gevent')


def test_instance_passes_through():
    h = handlers.get_handler('threading')
    assert handlers.get_handler(h) is h


def _run(code):
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_default_is_threading_and_eventlet_is_not_imported():
    assert _run('''
        import sys
        from etcdwatch import handlers
        import etcdwatch, etcdwatch.watcher, etcdwatch.election
        print(handlers.default_handler().name, 'eventlet' in sys.modules)
    ''') == 'threading False'


def test_default_is_eventlet_once_patched():
    assert _run('''
        import eventlet
        eventlet.monkey_patch()
        from etcdwatch import handlers
        print(handlers.default_handler().name)
    ''') == 'eventlet'


def test_imported_but_unpatched_eventlet_keeps_threads():
    assert _run('''
        import eventlet
        from etcdwatch import handlers
        print(handlers.default_handler().name)
    ''') == 'threading'


def test_watcher_and_election_on_green_threads():
    """A monkey-patched process: watcher, election and fake all green."""
    assert _run('''
        import eventlet
        eventlet.monkey_patch()
        import time
        from etcdwatch import EtcdChangeWatcher, EtcdElection
        from etcdwatch.testing import FakeEtcdClient

        client = FakeEtcdClient()
        seen = []

        class W(EtcdChangeWatcher):
            def added(self, k, v):
                seen.append((k, v))

        w = W(client, 'w', '/p', heartbeat=0.2)
        assert w._handler.name == 'eventlet'
        gt = eventlet.spawn(w.watch_forever)
        a = EtcdElection(client, 'e', '/el', work_time=1)
        b = EtcdElection(client, 'e', '/el', work_time=1)
        a.wait_until_elected()
        won = eventlet.spawn(b.wait_until_elected)
        for i in range(5):
            client.write('/p/k%d' % i, str(i))
            eventlet.sleep(0.01)
        deadline = time.monotonic() + 10
        while len(seen) < 5 and time.monotonic() < deadline:
            eventlet.sleep(0.01)
        a.resign()
        won.wait()
        w.stop()
        gt.wait()
        print(len(seen), b.is_elected)
    ''') == '5 True'
