"""Give a candidacy a deadline, cancel it, observe the leader.

docs/election.rst, "Deadlines, cancelling, and who leads".
"""

import threading
import time

from etcdwatch import EtcdElection
from etcdwatch.testing import FakeEtcdClient

client = FakeEtcdClient()
seen = []
follower = EtcdElection(client, 'janitor', '/elections', work_time=10)
observer = follower.observe(seen.append)     # never campaigns

leader = EtcdElection(client, 'janitor', '/elections', work_time=10)
assert leader.wait_until_elected(timeout=5) is True

# A deadline: False if not elected by then, and the candidate withdraws.
assert follower.wait_until_elected(timeout=0.2) is False

# cancel() from another thread, e.g. a SIGTERM handler's: the pending
# campaign returns False (at once on v3; within its wait on v2).
result = []
campaign = threading.Thread(
    target=lambda: result.append(follower.wait_until_elected()))
campaign.start()
follower.cancel()
campaign.join(10)
assert result == [False]

leader.resign()
# No candidate is left: nobody leads, and the follower never took over.
deadline = time.monotonic() + 10
while seen[-1:] != [None]:
    assert time.monotonic() < deadline, seen
    time.sleep(0.01)
observer.stop()
observer.join(10)
assert seen[-2:] == [leader.thread_id, None], seen
print(len(seen), 'leaders seen; the last:', seen[-1])
