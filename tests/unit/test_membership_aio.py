"""AsyncEtcdMembership on the in-memory v3 etcd (no server, no network)."""

import asyncio
import time

import pytest

from etcdwatch import aio
from etcdwatch.aio.membership import AsyncEtcdMembership
from etcdwatch.testing import FakeEtcd3Server

KEY = '/group/m1'


@pytest.fixture
def fake():
    return FakeEtcd3Server()


def client_of(fake):
    return aio.AsyncEtcd3Client([fake.base_url.split('//')[1]],
                                transport=fake.async_httpx_transport())


def value_of(fake):
    found = fake.client().get(KEY)
    return found[0].decode() if found else None


async def until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


def test_bad_arguments_are_refused_with_no_io(fake):
    with pytest.raises(ValueError, match='member_id'):
        AsyncEtcdMembership(object(), '/group', 'a/b', 'v', 3)
    with pytest.raises(ValueError, match='ttl'):
        AsyncEtcdMembership(object(), '/group', 'm1', 'v', 0)
    with pytest.raises(TypeError, match='etcd_client'):
        AsyncEtcdMembership(object(), '/group', 'm1', 'v', 3)
    with pytest.raises(ValueError, match='max_silence'):
        AsyncEtcdMembership(object(), '/group', 'm1', 'v', 3,
                            max_silence=-1)
    assert value_of(fake) is None


@pytest.mark.asyncio
async def test_registers_keeps_alive_comes_back_updates_and_leaves(fake):
    async with client_of(fake) as client:
        member = AsyncEtcdMembership(client, '/group', 'm1', 'v1', 3)
        assert value_of(fake) is None            # no I/O yet
        async with member:
            assert member.is_registered and value_of(fake) == 'v1'
            await until(lambda: member.stats()['renewals'] >= 2)
            fake.client().delete(KEY)
            # Created again by the next round, within ttl / 3.
            await until(lambda: value_of(fake) == 'v1', timeout=5)
            await until(lambda: member.stats()['keys_lost'] == 1)
            assert await member.update('v2')
            assert value_of(fake) == 'v2' and member.value == 'v2'
        assert value_of(fake) is None
        assert await member.aclose() is False    # idempotent
        with pytest.raises(RuntimeError, match='aclose'):
            await member.update('v3')
        assert value_of(fake) is None


@pytest.mark.asyncio
async def test_max_silence_lets_the_key_lapse_and_show_life_restores(fake):
    async with client_of(fake) as client:
        member = AsyncEtcdMembership(client, '/group', 'm1', 'v1', 3,
                                     max_silence=0.5)
        async with member:
            assert await member.show_life()
            await until(lambda: member.stats()['silent'], timeout=5)
            # The lease runs out on the fake's clock; a silent member's
            # keepalive does not create the key again.
            fake.clock.advance(10)
            assert value_of(fake) is None
            await until(lambda: not member.is_registered, timeout=5)
            assert await member.show_life()
            assert value_of(fake) == 'v1'
            assert not member.stats()['silent']
