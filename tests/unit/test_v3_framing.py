"""Chunked framing (one slice per whole chunk) and JSON lines (b0759e1)."""

import pytest

from etcdwatch.backends import v3proto as proto

BODY = (b'{"result": {"header": {"revision": "5"}}}\n' +
        b'x' * 300 + b'\n' + bytes(range(256)) + b'\r\n\r\n')


def _chunk(data, size_line):
    return size_line + b'\r\n' + data + b'\r\n'


def _wire(trailers=b''):
    """BODY in chunks with every kind of size line, then the end."""
    parts = [BODY[:40], BODY[40:41], BODY[41:341], BODY[341:600],
             BODY[600:]]
    sizes = [b'%x' % len(parts[0]),             # lower case
             b'%X;a=b' % len(parts[1]),         # an extension
             b'%X' % len(parts[2]),             # upper case
             b'0%x ; name="v";c' % len(parts[3]),   # leading 0, spaces
             b'%x' % len(parts[4])]
    return (b''.join(_chunk(p, s) for p, s in zip(parts, sizes)) +
            b'0;end=1\r\n' + trailers + b'\r\n')


def _decode(*pieces):
    decoder = proto.ChunkedDecoder()
    out = b''.join(decoder.feed(p) for p in pieces)
    return out, decoder.done


@pytest.mark.parametrize('trailers', [b'', b'X-Trailer: 1\r\nY: 2\r\n'],
                         ids=['no trailers', 'trailers'])
def test_every_split_decodes_exactly_the_body(trailers):
    wire = _wire(trailers)
    assert _decode(wire) == (BODY, True)
    for split in range(len(wire) + 1):
        assert _decode(wire[:split], wire[split:]) == (BODY, True), split


def test_one_byte_at_a_time():
    wire = _wire(b'T: 1\r\n')
    assert _decode(*[wire[i:i + 1] for i in range(len(wire))]) == (
        BODY, True)


def test_bare_newlines_are_accepted_as_before():
    wire = b'3\nabc\n2;x\nde\n0\n\n'
    for split in range(len(wire) + 1):
        assert _decode(wire[:split], wire[split:]) == (b'abcde', True), split


@pytest.mark.parametrize('size_line', [
    b'5\r\r', b'5\r ;x\r', b'5;a\rb\r', b'5\x0b\r', b'\x0c5\r'])
def test_size_lines_outside_the_fast_pattern_parse_as_before(size_line):
    # Stray CRs and other whitespace: the lenient parse takes over.
    wire = size_line + b'\nhello\r\n0\r\n\r\n'
    for split in range(len(wire) + 1):
        assert _decode(wire[:split], wire[split:]) == (b'hello', True), split


def test_nothing_is_taken_after_the_last_chunk():
    decoder = proto.ChunkedDecoder()
    assert decoder.feed(b'2\r\nab\r\n0\r\n\r\n3\r\nxyz\r\n') == b'ab'
    assert decoder.done
    assert decoder.feed(b'3\r\nxyz\r\n') == b''


@pytest.mark.parametrize('size_line', [
    b'zz', b'', b'0x5', b'-5', b'5 5', b'+5'])
def test_a_bad_size_line_is_a_value_error(size_line):
    with pytest.raises(ValueError, match='bad size'):
        _decode(size_line + b'\r\nhello\r\n')
    # Also when it comes after a good chunk.
    with pytest.raises(ValueError, match='bad size'):
        _decode(b'2\r\nab\r\n' + size_line + b'\r\nhello\r\n')


@pytest.mark.parametrize('split', [None, 3, 5, 6, 7])
def test_a_chunk_that_overruns_its_size_is_a_value_error(split):
    wire = b'3\r\nabcd\r\n0\r\n\r\n'
    pieces = [wire] if split is None else [wire[:split], wire[split:]]
    with pytest.raises(ValueError, match='overruns'):
        _decode(*pieces)


def test_a_size_line_that_never_ends_is_a_value_error():
    decoder = proto.ChunkedDecoder()
    with pytest.raises(ValueError, match='too long'):
        decoder.feed(b'1' * 5000)


# -- JSON lines ---------------------------------------------------------------

@pytest.mark.parametrize('line, value', [
    (b'{"a": [1, 2.5, null, true]}', {'a': [1, 2.5, None, True]}),
    (b'  {"a": 1}', {'a': 1}),
    (b'{"a": 1}  \r', {'a': 1}),
    (b'\t"\xc5\xbc\xc3\xb3\xc5\x82w" ', '\u017c\xf3\u0142w'),
    (b'7', 7),
])
def test_json_takes_a_value_with_any_surrounding_whitespace(line, value):
    assert proto._json(line) == value


@pytest.mark.parametrize('line', [
    b'{"a": 1} x', b'{"a": 1}{"b": 2}', b'{"a": 1}]', b'1 2',
    b'{not json}', b'', b'   ', b'{"a": ', b'nul'])
def test_json_refuses_trailing_data_and_non_json(line):
    with pytest.raises(ValueError):
        proto._json(line)


def test_a_message_buffer_line_with_trailing_data_is_a_value_error():
    buffer = proto.MessageBuffer()
    buffer.feed(b'{"a": 1}\n {"b": 2} \n{"c": 3} junk\n')
    assert buffer.next() == {'a': 1}
    assert buffer.next() == {'b': 2}
    with pytest.raises(ValueError):
        buffer.next()


def test_a_message_buffer_reuses_nothing_of_a_line_taken():
    # Every line taken, the next piece starts a new buffer: no leftovers.
    buffer = proto.MessageBuffer()
    buffer.feed(b'{"a": 1}\n')
    assert buffer.next() == {'a': 1} and buffer.next() is None
    buffer.feed(b'{"b": ')
    assert buffer.next() is None and not buffer.has_line()
    buffer.feed(b'2}\n')
    assert buffer.next() == {'b': 2} and buffer.next() is None
