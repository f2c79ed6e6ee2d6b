"""A model-based convergence check for EtcdChangeWatcher.

``run_model(driver, prefix, seed, steps)`` draws a random, replayable
sequence of operations from ``seed``: writes, creates, compare-and-swaps,
deletes, prefix (directory) deletes, TTL keys that expire, history loss,
watcher pauses and restarts, and callback failures.  ``driver`` (see
tests/drivers.py) makes the changes through etcd's v2 or v3 API, or on a
FakeEtcdClient, and gives the recipes its client.  The watcher is driven
by hand (``do_watch()`` calls, no thread) so that a "pause" is simply not
pumping it.  At every quiescent point it checks the invariant:

* what the application was told adds up to exactly what etcd holds;
* ``etcd_data`` and ``implemented_state`` equal etcd's state;
* no notification was redundant: never an 'add' of a key the watcher had
  reported, a 'change' to the value it had reported, or a 'delete' of a key
  it had not reported.

Any failure message names the seed, so ``run_model(..., seed=N)`` replays
it.
"""

import random
import time

from etcdwatch import EtcdChangeWatcher

KEYS = ['a', 'b', 'c', 'd/x', 'd/y', 'd/e/z', 'f/g']
VALUES = ['1', '2', '3', '{"json": true}', 'x' * 50]


class App(object):
    """The application: state it holds, kept across watcher restarts."""

    def __init__(self):
        self.state = {}
        self.fail_every = 0
        self.calls = 0
        self.violations = []


class Checking(object):
    """What the model's watchers share: the app, and the checks."""

    CALLBACK_RETRY_MIN = 0.001
    CALLBACK_RETRY_MAX = 0.002
    DANGER_PAUSE = 0.01

    def __init__(self, app, *args, **kwargs):
        self.app = app
        self.told = {}
        super(Checking, self).__init__(*args, **kwargs)

    def init_resync_start(self):
        return list(self.app.state)

    def key_change(self, action, key, value):
        app = self.app
        app.calls += 1
        if app.fail_every and app.calls % app.fail_every == 0:
            raise RuntimeError('injected callback failure')
        # Each notification must be news to this watcher instance.  A
        # violation is recorded, not raised: the watcher would take an
        # exception for a callback failure and retry it.
        if action == 'add' and key in self.told:
            app.violations.append('add of reported key %s' % key)
        elif action == 'change' and key not in self.told:
            app.violations.append('change of unreported key %s' % key)
        elif action == 'change' and self.told[key] == value:
            app.violations.append('no-op change of %s' % key)
        elif action == 'delete' and key not in self.told:
            app.violations.append('delete of unreported key %s' % key)
        super(Checking, self).key_change(action, key, value)
        if action == 'delete':
            del self.told[key]
        else:
            self.told[key] = value

    def added(self, short_key, value):
        self.app.state[short_key] = value

    def removed(self, short_key):
        self.app.state.pop(short_key, None)


class ModelWatcher(Checking, EtcdChangeWatcher):
    """The threaded change watcher under test."""


class Model(object):
    """The model of a change watcher's life, and its invariant.

    ``aio_client`` (an AsyncEtcd3Client on the driver's etcd) puts an
    AsyncEtcdChangeWatcher under test instead, pumped on an event loop of
    the model's own.
    """

    def __init__(self, driver, prefix, seed, clock=None, history_loss=None,
                 aio_client=None):
        self.aio_client = aio_client
        self.loop = None
        if aio_client is not None:
            import asyncio
            self.loop = asyncio.new_event_loop()
        self.driver = driver
        self.prefix = prefix
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock
        self.history_loss = history_loss
        self.app = App()
        self.watcher = self._new_watcher()
        self.log = []

    def _new_watcher(self):
        if self.aio_client is not None:
            from etcdwatch import aio

            class AsyncModelWatcher(Checking, aio.AsyncEtcdChangeWatcher):
                pass
            return AsyncModelWatcher(self.app, self.aio_client, 'model',
                                     self.prefix, heartbeat=0.01)
        return ModelWatcher(self.app, self.driver.client, 'model',
                            self.prefix, heartbeat=0.01)

    def close(self):
        if self.loop is not None:
            self.loop.run_until_complete(self.watcher.aclose())
            self.loop.run_until_complete(self.aio_client.aclose())
            self.loop.close()

    def _key(self):
        return '%s/%s' % (self.prefix, self.rng.choice(KEYS))

    # -- operations -------------------------------------------------------
    # A refused create or compare-and-swap is part of the game; the
    # driver returns False for it.

    def op_write(self):
        self.driver.put(self._key(), self.rng.choice(VALUES))

    def op_create(self):
        self.driver.create(self._key(), self.rng.choice(VALUES))

    def op_cas(self):
        key = self._key()
        current = self.driver.get(key)
        if current is not None:
            self.driver.cas(key, current, self.rng.choice(VALUES))

    def op_delete(self):
        self.driver.delete(self._key())

    def op_delete_dir(self):
        self.driver.delete_prefix(self.prefix + '/d')

    def op_ttl(self):
        self.driver.put(self._key(), self.rng.choice(VALUES), ttl=1)

    def op_time_passes(self):
        if self.clock is not None:
            self.clock.advance(self.rng.choice([0.5, 1.5, 3]))

    def op_lose_history(self):
        if self.history_loss is not None:
            self.history_loss()

    def op_pump(self):
        for _ in range(self.rng.randint(1, 5)):
            self._pump_once()

    def op_restart(self):
        # The old watcher is dropped mid-stream; the app keeps its state.
        self.watcher.stop()
        if self.loop is not None:
            self.loop.run_until_complete(self.watcher.aclose())
        self.watcher = self._new_watcher()

    def op_toggle_failures(self):
        self.app.fail_every = self.rng.choice([0, 0, 2, 3, 5])

    OPS = [('op_write', 6), ('op_create', 2), ('op_cas', 2),
           ('op_delete', 3), ('op_delete_dir', 1), ('op_ttl', 2),
           ('op_time_passes', 2), ('op_lose_history', 1), ('op_pump', 6),
           ('op_restart', 1), ('op_toggle_failures', 1)]

    # -- running ----------------------------------------------------------

    def _pump_once(self):
        try:
            if self.loop is not None:
                self.loop.run_until_complete(self.watcher.do_watch())
            else:
                self.watcher.do_watch()
        except Exception:
            # watch_forever would log this and pause; the model just goes
            # on (the fake raises nothing here unless told to).
            pass

    def step(self):
        names = [name for name, weight in self.OPS for _ in range(weight)]
        name = self.rng.choice(names)
        self.log.append(name)
        getattr(self, name)()

    def settle(self, timeout=30.0):
        """Stop failures, pump until the invariant holds (or fail)."""
        self.app.fail_every = 0
        deadline = time.monotonic() + timeout
        while True:
            self._pump_once()
            truth = self.driver.state(self.prefix)
            short_truth = {self.watcher.make_short_key(k): v
                           for k, v in truth.items()}
            w = self.watcher
            if self.app.violations:
                raise AssertionError('seed %s: %s after %s'
                                     % (self.seed, self.app.violations,
                                        self.log[-15:]))
            if (not w.stats()['pending'] and w.etcd_data == truth and
                    w.implemented_state == truth and
                    self.app.state == short_truth):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    'seed %s: no convergence after %s\netcd: %r\n'
                    'etcd_data: %r\nimplemented: %r\napp: %r'
                    % (self.seed, self.log[-15:], truth, w.etcd_data,
                       w.implemented_state, self.app.state))


def run_model(driver, prefix, seed, steps, clock=None, history_loss=None,
              settle_every=10):
    model = Model(driver, prefix, seed, clock=clock,
                  history_loss=history_loss)
    try:
        for i in range(steps):
            model.step()
            if (i + 1) % settle_every == 0:
                model.settle()
        model.settle()
    except AssertionError as e:
        if 'seed %s' % seed in str(e):
            raise
        raise AssertionError('seed %s, after %s: %s'
                             % (seed, model.log[-15:], e)) from e
    return model
