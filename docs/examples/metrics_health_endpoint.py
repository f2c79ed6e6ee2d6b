"""A liveness endpoint, and /metrics, on the standard library's HTTP server.

GET /healthz answers 200 "ok" while etcdwatch.metrics.health() finds no
problem, else 503 with one line per problem; GET /metrics serves the
Prometheus metrics (docs/metrics.rst).
"""

import http.server
import threading
import time
import urllib.error
import urllib.request

import prometheus_client

import etcdwatch
from etcdwatch import metrics
from etcdwatch.testing import FakeEtcdClient


class HealthHandler(http.server.BaseHTTPRequestHandler):
    """/healthz and /metrics; runs on the server's threads."""

    def do_GET(self):
        if self.path == '/healthz':
            health = metrics.health(max_silence=self.server.max_silence,
                                    max_lag=1000)
            status = 200 if health.ok else 503
            body = (str(health) + '\n').encode()
            content_type = 'text/plain; charset=utf-8'
        elif self.path == '/metrics':
            status = 200
            body = prometheus_client.generate_latest()
            content_type = prometheus_client.CONTENT_TYPE_LATEST
        else:
            status, body, content_type = 404, b'not found\n', 'text/plain'
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass                        # no line per probe on stderr


def serve(port=8080, max_silence=30.0):
    """Serve /healthz and /metrics on a thread of their own."""
    server = http.server.ThreadingHTTPServer(('127.0.0.1', port),
                                             HealthHandler)
    server.max_silence = max_silence
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(url, status, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        answer = get(url)
        if answer[0] == status:
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


class Ports(etcdwatch.EtcdChangeWatcher):
    def added(self, key, value):
        pass

    def removed(self, key):
        pass


client = FakeEtcdClient()          # an etcd.Client or etcd3gw client in life
metrics.register()
# Port 0: any free port, for this example.  max_silence is 1 s here, to
# show a failure quickly; give a service 30 s or more.
server = serve(port=0, max_silence=1.0)
url = 'http://127.0.0.1:%d' % server.server_address[1]

with Ports(client, 'ports', '/ports', heartbeat=1):
    print(wait_for(url + '/healthz', 200))          # (200, 'ok\n')
    status, text = get(url + '/metrics')
    assert 'etcdwatch_watcher_synced{kind="Ports"' in text, text
    with client.outage():                           # etcd goes away
        status, text = wait_for(url + '/healthz', 503)
        print(status, text.strip())
        assert text.startswith('watcher ports (/ports): etcd unreachable '
                               'for '), text
    print(wait_for(url + '/healthz', 200))          # back
server.shutdown()
