"""Validation of user input (core issue, item j)."""

import pytest

from etcdwatch import keys


@pytest.mark.parametrize('value,expected', [
    ('/a', '/a'), ('/a/b/', '/a/b'), ('/a-b_c.d/e+f', '/a-b_c.d/e+f'),
    ('/a:b@c', '/a:b@c'),
])
def test_good_paths(value, expected):
    assert keys.check_path('watch_path', value) == expected


@pytest.mark.parametrize('value', [
    '/a?b', '/a#b', '/a%2Fb', '/a b', '/a\tb', '/a\nb', '/caf\u00e9',
    '/a//b', '/a/../b', '/a/./b', 'a/b', '', '/', '//', '/_hidden', '/a\\b',
    None, 5, b'/a',
])
def test_bad_paths_name_the_argument(value):
    with pytest.raises(ValueError, match='^election_path'):
        keys.check_path('election_path', value)


def test_root_only_when_allowed():
    assert keys.check_path('p', '/', allow_root=True) == '/'


@pytest.mark.parametrize('value', ['', 'a/b', 'a?b', '..', 'a b', None])
def test_bad_names(value):
    with pytest.raises(ValueError, match='^name'):
        keys.check_name('name', value)


@pytest.mark.parametrize('value', [0, -1, float('nan'), float('inf'), '5',
                                   None, True])
def test_bad_durations(value):
    with pytest.raises(ValueError, match='^heartbeat'):
        keys.check_duration('heartbeat', value)


@pytest.mark.parametrize('value', [0.1, 1, 60, 2.5])
def test_good_durations(value):
    assert keys.check_duration('heartbeat', value) == value
