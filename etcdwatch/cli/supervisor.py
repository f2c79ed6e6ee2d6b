"""``etcdwatch elect``'s supervisor: COMMAND runs only while elected."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from etcdwatch.cli.client import reason
from etcdwatch.cli.common import Events
from etcdwatch.cli.common import EXIT_OK
from etcdwatch.cli.common import LOG
from etcdwatch.cli.common import Signals
from etcdwatch import election
from etcdwatch import exceptions


def _exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; ``signal 40`` for one without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return 'signal %d' % signum


def how_it_ended(returncode: int) -> str:
    """``exited with status 7``, ``was killed by SIGKILL (status 137)``."""
    if returncode < 0:
        return 'was killed by %s (status %d)' % (
            signal_name(-returncode), _exit_status(returncode))
    return 'exited with status %d' % returncode


def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A preexec_fn making the kernel SIGKILL the child if we die.

    So that COMMAND cannot outlive an ``elect`` that was SIGKILLed (and
    run on while another host leads).  Linux only; the parent is the
    spawning *thread*, so the child must be spawned by the main thread.
    """
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(1, sigkill)    # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class Supervisor(object):
    """Runs COMMAND while this process leads ``name`` (``etcdwatch elect``).

    One main loop owns the child; the election's thread, a campaign
    thread and the child's waiter only post events to it.
    """

    def __init__(self, client: Any, name: str, election_path: str,
                 command: List[str], ttl: float, recovery_time: float,
                 grace: float) -> None:
        self.command = command
        self.grace = grace
        self.events: Events = queue.SimpleQueue()
        self.elector = election.EtcdElection(
            client, name, election_path, work_time=ttl,
            recovery_time=recovery_time,
            on_lost=lambda term: self.events.put(('lost', term)))
        self.check_in_every = ttl / 4.0
        self.child: Optional['subprocess.Popen[bytes]'] = None
        self.term: Optional[election.Term] = None
        self._campaigner: Optional[threading.Thread] = None
        self._kill_at: Optional[float] = None
        self._losing = False
        self._exiting = False
        self._preexec = _parent_death_signal()
        # Who leads while we wait, as last told.
        self._leader: Optional[str] = None
        self._done = threading.Event()

    def run(self) -> int:
        """Campaign, run COMMAND while elected; return the exit status."""
        with Signals(self.events):
            # Once signals are ours: a signal after this line is handled.
            LOG.info('campaigning for %s as %s', self.elector.master_key,
                     self.elector.thread_id)
            threading.Thread(target=self._look_at_leader,
                             name='etcdwatch-leader', daemon=True).start()
            try:
                self._campaign()
                while True:
                    status = self._step()
                    if status is not None:
                        return status
            finally:
                if self.child is not None and self.child.poll() is None:
                    self.child.kill()
                    self.child.wait()
                self._done.set()
                self.elector.resign()

    def _step(self) -> Optional[int]:
        timeout = self.check_in_every
        if self._kill_at is not None:
            timeout = max(0.0, min(timeout, self._kill_at - time.monotonic()))
        try:
            kind, arg = self.events.get(timeout=timeout)
        except queue.Empty:
            kind, arg = 'tick', None
        self._tick()
        return getattr(self, '_on_' + kind)(arg)

    def _tick(self) -> None:
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            LOG.warning('COMMAND still runs %ss after SIGTERM: SIGKILL',
                        self.grace)
            self._kill_at = None
            self._signal_child(signal.SIGKILL)
        if self.child is not None and not (self._losing or self._exiting):
            try:
                self.elector.check_in()
            except exceptions.EtcdElectionLost:
                self._lose(self.term)

    def _on_tick(self, _arg: None) -> None:
        return None

    def _on_elected(self, term: Optional[election.Term]) -> Optional[int]:
        self._campaigner = None
        if (self._exiting or self.child is not None or term is None or
                term.lost.is_set()):
            # Lost already: its 'lost' event follows.
            if term is None and not self._exiting:
                self._campaign()
            return None
        self.term = term
        self._leader = None
        env = dict(os.environ,
                   ETCDWATCH_ELECTION=self.elector.name,
                   ETCDWATCH_LEADER_ID=self.elector.thread_id,
                   ETCDWATCH_FENCING_TOKEN=str(term.fencing_token))
        try:
            child = subprocess.Popen(self.command, env=env,
                                     preexec_fn=self._preexec)
        except OSError as e:
            LOG.error('cannot run %s: %s', self.command[0],
                      e.strerror or e)
            return 127 if isinstance(e, FileNotFoundError) else 126
        self.child = child
        LOG.info('elected (term %s, id %s): started %s (pid %d)',
                 term.fencing_token, self.elector.thread_id,
                 self.command[0], child.pid)
        threading.Thread(target=self._wait_child, args=(child,),
                         name='etcdwatch-child', daemon=True).start()
        return None

    def _wait_child(self, child: 'subprocess.Popen[bytes]') -> None:
        self.events.put(('exited', (child, child.wait())))

    def _on_lost(self, term: Optional[election.Term]) -> None:
        if term is not None and term is self.term:
            self._lose(term)
        return None

    def _lose(self, term: Optional[election.Term]) -> None:
        if self._losing or term is None or term is not self.term:
            return
        self._losing = True
        if self.child is not None and self.child.poll() is None:
            LOG.warning('lost leadership (term %s): stopping %s (SIGTERM, '
                        'SIGKILL after %ss)', term.fencing_token,
                        self.command[0], self.grace)
            self._signal_child(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.grace
        else:
            self.elector.resign()
        # Else the key (if it is still ours: the term may have ended on a
        # lease deadline while etcd was out of reach) is released when
        # COMMAND has exited, not before.  Nothing renews it meanwhile, so
        # it can still expire while COMMAND runs out its grace: keep
        # --grace short against --ttl.

    def _on_exited(self, arg: Tuple['subprocess.Popen[bytes]', int]
                   ) -> Optional[int]:
        child, returncode = arg
        if child is not self.child:
            return None
        self.child = None
        self.term = None
        self._kill_at = None
        status = _exit_status(returncode)
        if self._exiting:
            return status
        if self._losing:
            self._losing = False
            LOG.info('%s %s; campaigning again', self.command[0],
                     how_it_ended(returncode))
            self.elector.resign()
            self._campaign()
            return None
        LOG.info('%s %s; resigning', self.command[0],
                 how_it_ended(returncode))
        return status

    def _on_signal(self, signum: int) -> Optional[int]:
        if self._exiting:
            return None
        self._exiting = True
        if self.child is None:
            return EXIT_OK
        LOG.info('%s: passing it on to %s', signal_name(signum),
                 self.command[0])
        self._signal_child(signum)
        if self._kill_at is None:
            self._kill_at = time.monotonic() + self.grace
        return None

    def _on_failed(self, exc: BaseException) -> None:
        LOG.error('campaign failed: %s; retrying', reason(exc))
        self._campaigner = None
        time.sleep(self.elector.recovery_time)
        if not self._exiting:
            self._campaign()
        return None

    def _on_leader(self, leader: Optional[str]) -> None:
        if (self.child is not None or self._exiting or leader is None or
                leader == self.elector.thread_id or leader == self._leader):
            return None
        self._leader = leader
        LOG.info('waiting: %s leads %s', leader, self.elector.name)
        return None

    def _look_at_leader(self) -> None:
        # Reads the key every recovery_time while we do not lead, so that
        # a waiting follower says who leads (the campaign does not tell).
        while not self._done.is_set():
            if self.child is None:
                try:
                    self.events.put(('leader', self.elector.leader()))
                except Exception:
                    # Only news: the campaign reports outages.
                    LOG.debug('could not read the leader', exc_info=True)
            self._done.wait(self.elector.recovery_time)

    def _signal_child(self, signum: int) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    def _campaign(self) -> None:
        if self._campaigner is not None and self._campaigner.is_alive():
            return

        def campaign() -> None:
            try:
                self.elector.wait_until_elected()
            except Exception as e:
                self.events.put(('failed', e))
                return
            self.events.put(('elected', self.elector.term))

        self._campaigner = threading.Thread(
            target=campaign, name='etcdwatch-campaign', daemon=True)
        self._campaigner.start()
