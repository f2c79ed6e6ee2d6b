"""OutageLog: one warning per outage, reminders, and the end of it."""

import logging

from etcdwatch.outage import OutageLog
from etcdwatch.testing import FakeClock

LOG = logging.getLogger('etcdwatch.test_outage')


def lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_an_outage_is_logged_when_it_starts_while_it_lasts_and_ends(
        caplog):
    clock = FakeClock()
    log = OutageLog(LOG, 'w: watching /p', remind_every=60,
                    clock=clock.time)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        log.succeeded()                         # no outage: says nothing
        assert not caplog.records and not log.in_outage
        for _ in range(100):                    # 200 s of retries
            log.failed(ConnectionError('refused'), retry_in=2)
            clock.advance(2)
        assert log.in_outage and log.failures == 100
        log.succeeded()
    warnings = lines(caplog, logging.WARNING)
    assert warnings[0] == ('w: watching /p: etcd unavailable (refused); '
                           'retrying every 2s')
    # Reminders at 60, 120 and 180 s.
    assert [w.split(' after ')[1].split('s ')[0] for w in warnings[1:]] == [
        '60', '120', '180']
    assert lines(caplog, logging.INFO) == [
        'w: watching /p: etcd available again after 200.0s (100 failed '
        'attempts)']
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 100 and all(r.exc_info for r in debug)
    assert not log.in_outage and log.failures == 0


def test_a_second_outage_starts_afresh(caplog):
    clock = FakeClock()
    log = OutageLog(LOG, 'x', clock=clock.time)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(2):
            log.failed(OSError('down'), retry_in=1)
            clock.advance(5)
            log.succeeded()
    assert len(lines(caplog, logging.WARNING)) == 2
    assert lines(caplog, logging.INFO) == [
        'x: etcd available again after 5.0s (1 failed attempts)'] * 2
