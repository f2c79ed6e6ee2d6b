"""A throw-away TCP proxy on loopback that can misbehave on demand.

``ChaosProxy(upstream_host, upstream_port)`` listens on a free loopback
port and pipes connections to etcd.  ``set_mode()`` switches what new
requests get, and cuts every connection open at the time:

* ``'pass'``: the real etcd answers;
* ``'garbage'``: a 200 response whose body is not JSON;
* ``'close'``: half a response, then the connection closes.
"""

import socket
import threading

GARBAGE = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n'
           b'X-Etcd-Index: 7\r\nContent-Length: 17\r\n\r\n{"action": "get",')
HALF = b'HTTP/1.1 200 OK\r\nContent-Type: application/js'


class ChaosProxy(object):
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.mode = 'pass'
        self.requests = {'pass': 0, 'garbage': 0, 'close': 0}
        self._lock = threading.Lock()
        self._open = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode):
        assert mode in self.requests
        with self._lock:
            self.mode = mode
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)

    def close(self):
        self._closed = True
        _close(self._listener)
        self.set_mode('pass')

    def _accept(self):
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,),
                             daemon=True).start()

    def _serve(self, conn):
        with self._lock:
            mode = self.mode
            self.requests[mode] += 1
            self._open.add(conn)
        try:
            if mode == 'pass':
                self._pipe(conn)
                return
            conn.recv(65536)
            conn.sendall(GARBAGE if mode == 'garbage' else HALF)
        except OSError:
            pass
        finally:
            _close(conn)

    def _pipe(self, conn):
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.add(upstream)
        t = threading.Thread(target=_copy, args=(upstream, conn),
                             daemon=True)
        t.start()
        _copy(conn, upstream)
        t.join(5)


def _copy(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src)
        _close(dst)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
