"""etcdwatch.codecs: JSON and signed codecs, EtcdWriter, codecs in watchers."""

import logging

import etcd
import pytest

from etcdwatch import codecs
from etcdwatch.codecs import EtcdWriter
from etcdwatch.codecs import JsonCodec
from etcdwatch.codecs import SignedCodec
from etcdwatch import EtcdChangeWatcher
from etcdwatch.testing import FakeEtcdClient
from tests.helpers import Runner
from tests.helpers import wait_until

P = '/app'
SECRET = 'codec-secret-Qx7'


@pytest.fixture
def client():
    return FakeEtcdClient()


# -- JsonCodec ----------------------------------------------------------------

@pytest.mark.parametrize('value', [
    None, True, 0, -1.5, 'text', 'caf\u00e9 \u20ac', [], {},
    {'port': {'id': 'p1', 'fixed_ips': [{'ip': '10.0.0.1'}], 'up': True}},
])
def test_json_round_trip(value):
    codec = JsonCodec()
    text = codec.encode(value)
    assert isinstance(text, str) and text.isascii()
    assert codec.decode(text) == value


def test_json_is_deterministic_and_compact():
    codec = JsonCodec()
    a = codec.encode({'b': 1, 'a': [1, 2]})
    b = codec.encode(dict([('a', [1, 2]), ('b', 1)]))
    assert a == b == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize('value', [float('nan'), float('inf'),
                                   {'x': float('-inf')}])
def test_json_refuses_nan(value):
    with pytest.raises(ValueError):
        JsonCodec().encode(value)


def test_json_refuses_objects_it_cannot_store():
    with pytest.raises(TypeError):
        JsonCodec().encode(object())


@pytest.mark.parametrize('text', ['', 'not json', '{"a": 1', 'NaN',
                                  '[Infinity]', '{} {}', None, b'{}'])
def test_json_decode_refuses(text):
    with pytest.raises(ValueError):
        JsonCodec().decode(text)


# -- SignedCodec --------------------------------------------------------------

def test_signed_round_trip_and_format():
    codec = SignedCodec(JsonCodec(), SECRET)
    text = codec.encode({'a': 1})
    assert text.startswith('hmac-sha256:') and text.endswith(':{"a":1}')
    assert codec.decode(text) == {'a': 1}
    assert SignedCodec(JsonCodec(), SECRET.encode()).decode(text) == {'a': 1}


def test_signed_refuses_forgeries():
    codec = SignedCodec(JsonCodec(), SECRET)
    text = codec.encode({'admin': False})
    forged = text.replace('false', 'true')
    other = SignedCodec(JsonCodec(), 'another secret').encode({'a': 1})
    for bad in [forged, other, '{"a":1}', 'hmac-sha256:', 'hmac-sha256:00:1',
                'hmac-sha512:' + text[len('hmac-sha256:'):], None]:
        with pytest.raises(ValueError):
            codec.decode(bad)


def test_signed_codec_checks_its_arguments():
    with pytest.raises(ValueError, match='inner'):
        SignedCodec(object(), SECRET)
    with pytest.raises(ValueError, match='secret'):
        SignedCodec(JsonCodec(), '')
    with pytest.raises(ValueError, match='digest'):
        SignedCodec(JsonCodec(), SECRET, digest='nope')


def test_signed_repr_hides_the_secret():
    text = repr(SignedCodec(JsonCodec(), SECRET))
    assert SECRET not in text and 'secret=***' in text


def test_check_codec():
    codec = JsonCodec()
    assert codecs.check_codec(codec) is codec
    with pytest.raises(ValueError, match='codec.*decode'):
        codecs.check_codec(type('EncodeOnly', (), {'encode': str})())


# -- EtcdWriter ---------------------------------------------------------------

def test_writer_stores_json_and_reads_values(client):
    writer = EtcdWriter(client)
    result = writer.write(P + '/ports/p1', {'mac': 'fa:16:3e:00:00:01'})
    assert result.value == '{"mac":"fa:16:3e:00:00:01"}'
    assert client.read(P + '/ports/p1').value == result.value
    read = writer.read(P + '/ports/p1')
    assert read.value == {'mac': 'fa:16:3e:00:00:01'}
    assert read.key == P + '/ports/p1'
    assert read.modifiedIndex == result.modifiedIndex
    assert read.raw.value == result.value


def test_writer_reads_a_tree(client):
    writer = EtcdWriter(client)
    writer.write(P + '/a', [1])
    writer.write(P + '/d/b', {'b': 2})
    client.write(P + '/d/bad', 'not json')
    tree = writer.read(P, recursive=True)
    assert tree.dir and tree.value is None
    leaves = {leaf.key: leaf for leaf in tree.leaves}
    assert leaves[P + '/a'].value == [1]
    assert leaves[P + '/d/b'].value == {'b': 2}
    # One bad value spoils only itself, and says which key it is.
    with pytest.raises(ValueError, match=P + '/d/bad') as info:
        leaves[P + '/d/bad'].value
    assert isinstance(info.value.__cause__, ValueError)
    children = {c.key for c in writer.read(P).children}
    assert children == {P + '/a', P + '/d'}


def test_writer_passes_options_and_etcd_errors(client):
    writer = EtcdWriter(client)
    writer.write(P + '/t', 1, ttl=30)
    assert client.read(P + '/t').ttl is not None
    with pytest.raises(etcd.EtcdAlreadyExist):
        writer.write(P + '/t', 2, prevExist=False)
    with pytest.raises(etcd.EtcdKeyNotFound):
        writer.read(P + '/missing')
    writer.delete(P + '/t')
    with pytest.raises(etcd.EtcdKeyNotFound):
        writer.delete(P + '/t')


def test_compare_and_swap_on_values_is_encoded(client):
    writer = EtcdWriter(client)
    writer.write(P + '/cas', {'n': 1, 'who': 'a'})
    writer.write(P + '/cas', {'n': 2, 'who': 'b'},
                 prevValue={'who': 'a', 'n': 1})
    assert writer.read(P + '/cas').value == {'n': 2, 'who': 'b'}
    with pytest.raises(etcd.EtcdCompareFailed):
        writer.write(P + '/cas', {'n': 3}, prevValue={'n': 1, 'who': 'a'})
    with pytest.raises(etcd.EtcdCompareFailed):
        writer.delete(P + '/cas', prevValue={'n': 1, 'who': 'a'})
    writer.delete(P + '/cas', prevValue={'n': 2, 'who': 'b'})
    writer.write(P + '/null', None)
    writer.write(P + '/null', 0, prevValue=None)
    assert writer.read(P + '/null').value == 0


@pytest.mark.parametrize('key', ['/a?b', '/a#b', '/a%2Fb', '/a b', 'a',
                                 '/', '/_hidden', '/a/../b', None])
def test_writer_refuses_bad_keys_before_any_request(client, key):
    writer = EtcdWriter(client)
    before = dict(client.calls)
    for call in (lambda: writer.write(key, 1), lambda: writer.read(key),
                 lambda: writer.delete(key)):
        with pytest.raises(ValueError, match='^key'):
            call()
    assert client.calls == before


def test_writer_checks_its_codec(client):
    with pytest.raises(ValueError, match='codec'):
        EtcdWriter(client, codec=object())

    class Bytes(object):
        def encode(self, value):
            return b'x'

        def decode(self, text):
            return text
    with pytest.raises(TypeError, match='not str'):
        EtcdWriter(client, codec=Bytes()).write(P + '/x', 1)
    assert P + '/x' not in client


def test_writer_with_a_signed_codec(client):
    codec = SignedCodec(JsonCodec(), SECRET)
    writer = EtcdWriter(client, codec)
    writer.write(P + '/s', {'a': 1})
    assert writer.read(P + '/s').value == {'a': 1}
    assert EtcdWriter(client).read(P + '/s').raw.value.startswith('hmac-')


# -- codecs in watchers -------------------------------------------------------

class Recorder(EtcdChangeWatcher):
    """Records added/removed and unparsable values."""

    def __init__(self, *args, **kwargs):
        self.added_values = []
        self.removed_keys = []
        self.refused = []
        super(Recorder, self).__init__(*args, **kwargs)

    def added(self, short_key, value):
        self.added_values.append((short_key, value))

    def removed(self, short_key):
        self.removed_keys.append(short_key)

    def value_unparsable(self, key, value, error):
        self.refused.append((key, value, type(error).__name__))


def test_change_watcher_gets_parsed_values_and_goes_on_past_bad_ones(
        client, caplog):
    writer = EtcdWriter(client, JsonCodec())
    writer.write(P + '/p1', {'up': True})
    client.write(P + '/junk', '{oops')
    w = Recorder(client, 'json', P, heartbeat=0.2, codec=JsonCodec())
    assert w.added_values == [('p1', {'up': True})]
    assert w.refused == [(P + '/junk', '{oops', 'JSONDecodeError')]
    assert P + '/junk' in caplog.text       # logged, naming the key
    with Runner(w):
        writer.write(P + '/p2', [1, 2])
        client.write(P + '/p1', 'garbage')        # a good key turns bad
        writer.write(P + '/p3', {'n': 3})         # the watcher goes on
        writer.write(P + '/junk', {'fixed': True})
        wait_until(lambda: len(w.added_values) == 4, timeout=30)
        wait_until(lambda: w.removed_keys == ['p1'], timeout=30)
    assert w.added_values[1:] == [('p2', [1, 2]), ('p3', {'n': 3}),
                                  ('junk', {'fixed': True})]
    assert w.refused[1] == (P + '/p1', 'garbage', 'JSONDecodeError')
    assert w.stats()['unparsable'] == 2
    assert w.implemented_state == {P + '/p2': [1, 2], P + '/p3': {'n': 3},
                                   P + '/junk': {'fixed': True}}


def test_change_watcher_with_a_signed_codec_refuses_forgeries(
        client, caplog):
    caplog.set_level(logging.DEBUG)
    codec = SignedCodec(JsonCodec(), SECRET)
    writer = EtcdWriter(client, codec)
    w = Recorder(client, 'signed', P, heartbeat=0.2, codec=codec)
    with Runner(w):
        writer.write(P + '/ok', {'a': 1})
        client.write(P + '/forged', '{"a": 2}')
        EtcdWriter(client, SignedCodec(JsonCodec(), 'wrong')).write(
            P + '/wrong', {'a': 3})
        writer.write(P + '/after', {'a': 4})
        wait_until(lambda: len(w.added_values) == 2, timeout=30)
        wait_until(lambda: len(w.refused) == 2, timeout=30)
    assert w.added_values == [('ok', {'a': 1}), ('after', {'a': 4})]
    assert [r[0] for r in w.refused] == [P + '/forged', P + '/wrong']
    assert SECRET not in caplog.text
