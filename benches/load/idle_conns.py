#!/usr/bin/env python3
"""Idle keep-alive connection memory of a proxy (used by run.sh MODE=memory).

Opens N client connections to the proxy, sends one `GET /` on each and reads the whole
response, so every connection ends up idle in keep-alive state inside the proxy. It reads
the proxy's RSS (VmRSS from /proc/<pid>/status, summed over the given pids) before, while
the connections are open, and after closing them (once after SETTLE seconds and again after
RELEASE_WAIT more seconds, so allocators that return memory lazily get their chance).
During that wait it sends a trickle of requests (TRICKLE per second, each on a new
connection): jemalloc without its background thread only purges freed pages when the
process allocates, so a fully idle process would keep them however long one waited, and a
real proxy is never fully idle. Repeats for CYCLES cycles: a second cycle that costs nothing new shows
the memory is reused, one that grows again shows it is not.

With --silent the connections send nothing at all (the memory of a connection before its
first request); with --tls they are TLS connections (handshake done, certificate not checked).
The connections come from several loopback source addresses (PER_SOURCE each), and it exits
at once when the open-file limit cannot hold them all.

Prints one JSON object per cycle on stdout; diagnostics go to stderr.
"""

import argparse
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time

BATCH = 100  # connections opened before their responses are read (bounded accept backlog)
# Idle connections per loopback source address. One source address reaches one proxy port
# from ~28,000 ephemeral ports (net.ipv4.ip_local_port_range), and a closed connection
# keeps its port in TIME_WAIT for a minute: 20,000 connections, cycle after cycle, would run
# out of ports on a kernel that does not reuse them. 127.0.0.0/8 is all loopback.
PER_SOURCE = 10_000
# Linux's IP_BIND_ADDRESS_NO_PORT: bind() picks only the address, connect() the port (from
# the whole four-tuple), so each source address gets all its ephemeral ports per destination.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def fd_count(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None  # not ours to look at
    return n


def read_response(sock, deadline):
    """Reads one HTTP/1.1 response with a Content-Length body; returns the status or None."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            return None
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        if time.monotonic() > deadline:
            return None
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return status


def still_open(sock):
    """True when the proxy has not closed this idle connection (no EOF, no reset)."""
    # Non-blocking for real: with a Python timeout set, recv would first wait for data.
    # A TLS socket is asked through its raw socket: the peer's close_notify or FIN shows there.
    sock.setblocking(False)
    if isinstance(sock, ssl.SSLSocket):
        sock = socket.socket(fileno=os.dup(sock.fileno()))
        sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def extra_headers(headers):
    """`Name: value` lines from --header (e.g. the bearer token of a protected contender)."""
    return "".join(f"{h}\r\n" for h in headers)


def tls_context():
    """One context for every connection (each would otherwise build its own)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def connect(host, port, tls_ctx, source=None):
    """A connection (TLS handshake done when tls_ctx is given), from `source` if given."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(10)
        if source is not None:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
        s.connect((host, port))
        if tls_ctx is not None:
            s = tls_ctx.wrap_socket(s, server_hostname="localhost")
    except BaseException:
        s.close()
        raise
    return s


def source_address(host, i):
    """The loopback source address of the i-th idle connection (None: the kernel's choice)."""
    if not host.startswith("127."):
        return None
    k = i // PER_SOURCE
    return f"127.0.{k // 254}.{1 + k % 254}"


def open_idle(host, port, n, timeout, headers=(), silent=False, tls_ctx=None):
    socks, ok, failed = [], 0, 0
    request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: idle-conns\r\n"
               f"{extra_headers(headers)}\r\n").encode()
    deadline = time.monotonic() + timeout
    for start in range(0, n, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, n)):
            try:
                s = connect(host, port, tls_ctx, source_address(host, i))
                if not silent:
                    s.sendall(request)
                batch.append(s)
            except OSError as e:
                failed += 1
                print(f"connect/send failed: {e}", file=sys.stderr)
        for s in batch:
            if silent:
                ok += 1
                socks.append(s)
                continue
            try:
                status = read_response(s, deadline)
            except OSError as e:
                status = None
                print(f"read failed: {e}", file=sys.stderr)
            if status == 200:
                ok += 1
            else:
                failed += 1
            socks.append(s)
        if time.monotonic() > deadline:
            print("gave up: opening the connections took too long", file=sys.stderr)
            break
    return socks, ok, failed


def trickle(host, port, seconds, rate, headers=(), tls_ctx=None):
    """One request per 1/rate seconds on a fresh connection, for `seconds`."""
    request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
               f"{extra_headers(headers)}\r\n").encode()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if rate > 0:
            try:
                with connect(host, port, tls_ctx) as s:
                    s.sendall(request)
                    read_response(s, time.monotonic() + 5)
            except OSError as e:
                print(f"trickle request failed: {e}", file=sys.stderr)
            time.sleep(1 / rate)
        else:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, action="append", required=True,
                   help="process whose RSS is measured (repeat to sum several)")
    p.add_argument("-n", "--connections", type=int, default=2000)
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--release-wait", type=float, default=20.0)
    p.add_argument("--trickle", type=float, default=10.0,
                   help="requests per second during the release wait (0 = none)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--header", action="append", default=[],
                   help="extra request header, `Name: value` (repeatable)")
    p.add_argument("--silent", action="store_true",
                   help="send nothing on the connections (memory before a first request)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (no verification)")
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.connections + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"idle_conns.py: {a.connections} connections need {want} open files, "
                     f"but the hard limit is {hard} (run.sh raises it where it can)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tls_ctx = tls_context() if a.tls else None

    for cycle in range(1, a.cycles + 1):
        time.sleep(0.5)
        before = rss_kib(a.pid)
        fds_before = fd_count(a.pid)
        t0 = time.monotonic()
        socks, ok, failed = open_idle(a.host, a.port, a.connections, a.timeout, a.header,
                                      a.silent, tls_ctx)
        open_s = time.monotonic() - t0
        time.sleep(a.settle)
        during = rss_kib(a.pid)
        fds_during = fd_count(a.pid)
        alive = sum(1 for s in socks if still_open(s))
        for s in socks:
            s.close()
        time.sleep(a.settle)
        after = rss_kib(a.pid)
        trickle(a.host, a.port, a.release_wait, a.trickle, a.header, tls_ctx)
        after_wait = rss_kib(a.pid)
        grown = during - before
        print(json.dumps({
            "cycle": cycle,
            "connections": a.connections,
            "ok": ok,
            "failed": failed,
            "alive_at_close": alive,
            "open_seconds": round(open_s, 2),
            "rss_before_kib": before,
            "rss_open_kib": during,
            "rss_after_kib": after,
            "rss_after_wait_kib": after_wait,
            "kib_per_conn": round(grown / ok, 3) if ok else None,
            "retained_kib": after_wait - before,
            "retained_share": round((after_wait - before) / grown, 3) if grown > 0 else None,
            "fds_before": fds_before,
            "fds_open": fds_during,
            "silent": a.silent,
            "tls": a.tls,
        }), flush=True)


if __name__ == "__main__":
    main()
