"""The proxy's splice relay and thread pool over loopback TCP (no root)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

from tunkit.services.proxy_pool import ElasticPool
from tunkit.services.proxy_splice import SpliceRelay


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    return a, b


def test_relay_moves_bytes_both_ways_with_half_close() -> None:
    counts: dict[int, list[int]] = {}
    closed: list[int] = []
    done = threading.Event()

    def on_bytes(flow: int, up: int, down: int) -> None:
        c = counts.setdefault(flow, [0, 0])
        c[0] += up
        c[1] += down

    def on_close(flow: int) -> None:
        closed.append(flow)
        done.set()

    relay = SpliceRelay(on_bytes, on_close)
    relay.start()
    app_peer, app = tcp_pair()  # app_peer plays the application
    upstream, upstream_peer = tcp_pair()  # upstream_peer plays the server
    relay.add(app, upstream, 7)
    up_data = os.urandom(3 << 20)
    down_data = os.urandom(5 << 20)
    received: dict[str, bytes] = {}

    def read_all(sock: socket.socket, key: str) -> None:
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
        received[key] = b"".join(chunks)

    readers = [threading.Thread(target=read_all, args=(upstream_peer, "up")),
               threading.Thread(target=read_all, args=(app_peer, "down"))]
    for t in readers:
        t.start()
    app_peer.sendall(up_data)
    app_peer.shutdown(socket.SHUT_WR)  # half-close: the server still answers
    readers[0].join(10)
    assert hashlib.sha256(received["up"]).digest() == hashlib.sha256(up_data).digest()
    upstream_peer.sendall(down_data)
    upstream_peer.shutdown(socket.SHUT_WR)
    readers[1].join(10)
    assert received["down"] == down_data
    assert done.wait(5)
    assert closed == [7]
    assert counts[7] == [len(up_data), len(down_data)]
    assert len(relay) == 0
    relay.close()
    for s in (app_peer, upstream_peer):
        s.close()


def test_relay_aborts_both_sides_on_reset() -> None:
    closed = threading.Event()
    relay = SpliceRelay(lambda *a: None, lambda flow: closed.set())
    relay.start()
    app_peer, app = tcp_pair()
    upstream, upstream_peer = tcp_pair()
    relay.add(app, upstream, 1)
    upstream_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    upstream_peer.close()  # RST from the server
    assert closed.wait(5)
    app_peer.settimeout(5)
    try:
        data = app_peer.recv(10)
    except ConnectionResetError:
        data = None
    assert data in (None, b"")  # the application sees the end at once, not a hang
    relay.close()
    app_peer.close()


def test_elastic_pool_reuses_threads_and_never_queues() -> None:
    pool = ElasticPool("test")
    idents: set[int] = set()
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocker() -> None:
        started.release()
        release.wait(5)

    for _ in range(20):  # 20 concurrent long tasks: 20 threads, none waits for another
        pool.submit(blocker)
    for _ in range(20):
        assert started.acquire(timeout=5)
    release.set()
    time.sleep(0.2)
    done = threading.Semaphore(0)

    def record() -> None:
        idents.add(threading.get_ident())
        done.release()

    for _ in range(200):
        pool.submit(record)
        assert done.acquire(timeout=5)
    assert len(idents) <= 20  # served by the idle threads, not 200 new ones


def test_relay_short_exchanges_in_copy_mode() -> None:
    """Small requests and responses (no pipe yet), several rounds, then a close from the app."""
    counts = [0, 0]
    done = threading.Event()

    def on_bytes(flow: int, up: int, down: int) -> None:
        counts[0] += up
        counts[1] += down

    relay = SpliceRelay(on_bytes, lambda flow: done.set())
    relay.start()
    app_peer, app = tcp_pair()
    upstream, upstream_peer = tcp_pair()
    for s in (app_peer, upstream_peer):
        s.settimeout(5)
    relay.add(app, upstream, 1)
    for i in range(3):
        request = b"GET /%d HTTP/1.1\r\n\r\n" % i
        app_peer.sendall(request)
        got = b""
        while len(got) < len(request):
            got += upstream_peer.recv(4096)
        assert got == request
        response = b"HTTP/1.1 200 OK\r\n\r\n" + bytes([i]) * (100 + i)
        upstream_peer.sendall(response)
        got = b""
        while len(got) < len(response):
            got += app_peer.recv(4096)
        assert got == response
    app_peer.shutdown(socket.SHUT_WR)
    assert upstream_peer.recv(10) == b""  # the half-close went through
    upstream_peer.close()
    assert app_peer.recv(10) == b""
    assert done.wait(5)
    assert counts == [sum(len(b"GET /%d HTTP/1.1\r\n\r\n" % i) for i in range(3)),
                      sum(19 + 100 + i for i in range(3))]
    relay.close()
    app_peer.close()
