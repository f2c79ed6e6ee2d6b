"""docs/guide.rst's list of names a subclass must leave alone is whole.

Every public name of the recipes' classes and instances must be listed
there (as a hook, a setting, or etcdwatch's own), and every name listed
must exist, so the list follows the code.
"""

import os
import re

from etcdwatch import EtcdChangeWatcher
from etcdwatch import EtcdElection
from etcdwatch import EtcdWatcher
from etcdwatch.testing import FakeEtcdClient

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'docs', 'guide.rst')
TITLE = 'Names in a subclass'
# Identifiers the section names that are not the recipes' own.
OTHERS = {'TypeError', 'EtcdWatcher', 'EtcdChangeWatcher', 'EtcdElection',
          'myapp_ports'}


def _section():
    with open(GUIDE) as f:
        text = f.read()
    start = text.index(TITLE + '\n' + '=' * len(TITLE))
    end = re.search(r'\n[^\n]+\n=+\n', text[start + len(TITLE) * 2 + 2:])
    return text[start:start + len(TITLE) * 2 + 2 + end.start()]


def _listed():
    names = set()
    for literal in re.findall(r'``([^`]+)``', _section()):
        literal = literal.strip()
        if literal.startswith('self.'):
            literal = literal[len('self.'):].split(' ')[0]
        if re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', literal):
            names.add(literal)
    return names


class _Watcher(EtcdWatcher):
    def do_all_work(self):
        pass


def _public_names():
    client = FakeEtcdClient()
    objects = [
        _Watcher(client, 'w', '/w'),
        _Watcher(client, 'e', '/w', election_path='/el',
                 wait_until_elected=True),
        EtcdChangeWatcher(client, 'c', '/c'),
        EtcdElection(client, 'e', '/el', work_time=5),
    ]
    names = set()
    for obj in objects:
        names |= {n for n in dir(type(obj)) if not n.startswith('_')}
        names |= {n for n in vars(obj) if not n.startswith('_')}
    return names


def test_every_public_name_is_listed():
    missing = _public_names() - _listed()
    assert missing == set(), (
        'docs/guide.rst, "%s", does not list %s' % (TITLE, sorted(missing)))


def test_every_listed_name_exists():
    stale = _listed() - _public_names() - OTHERS
    assert stale == set(), (
        'docs/guide.rst, "%s", lists names the recipes do not have: %s'
        % (TITLE, sorted(stale)))
