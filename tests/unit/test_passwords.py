"""etcdwatch.passwords: a password from a file or the environment."""

import pytest

from etcdwatch import passwords


def test_the_first_line_without_its_ending(tmp_path):
    path = tmp_path / 'pw'
    path.write_bytes(b's3cret\r\nsecond line\n')
    assert passwords.read_file(str(path)) == 's3cret'


@pytest.mark.parametrize('content,reason', [
    (b'', 'its first line is empty'),
    (b'\nhunter2\n', 'its first line is empty'),
    (b'\xffhunter2\n', 'unicodedecodeerror'),
])
def test_no_password_says_why_and_never_shows_the_file(tmp_path, content,
                                                       reason):
    path = tmp_path / 'pw'
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        passwords.read_file(str(path))
    assert str(info.value) == reason
    assert 'hunter2' not in repr(info.value)
    # No chained exception to show more than the reason.
    assert info.value.__cause__ is None and (
        info.value.__context__ is None or info.value.__suppress_context__)


def test_an_unreadable_file_gives_the_system_reason(tmp_path):
    with pytest.raises(ValueError, match='^no such file or directory$'):
        passwords.read_file(str(tmp_path / 'missing'))


def test_the_environment_variable(monkeypatch):
    monkeypatch.setenv(passwords.ENV_PASSWORD, 's3cret')
    assert passwords.from_environment() == 's3cret'
    monkeypatch.setenv(passwords.ENV_PASSWORD, '')
    assert passwords.from_environment() is None
    monkeypatch.delenv(passwords.ENV_PASSWORD)
    assert passwords.from_environment() is None
