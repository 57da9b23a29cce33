#!/usr/bin/env python3
"""A client that aborts its connection with SO_LINGER 0 (the kernel sends RST+ACK).

Usage: linger_client.py HOST PORT REQUESTS

Connects to HOST:PORT, sends REQUESTS HTTP/1.1 GET requests one after the
other (each one segment), reads each response completely, then closes with
SO_LINGER {on, 0}, which aborts the connection with an RST+ACK instead of a FIN.
REQUESTS 0 aborts right after the handshake; REQUESTS -1 sends one request
and aborts at once, without waiting for the response.

Whether the kernel acknowledges a response before the next request or the
abort depends on delayed-ACK timing. After reading each response the client
sets TCP_QUICKACK, which sends a pending ACK at once, so every response (one
segment from hack/scenarios/server.py) is acknowledged by exactly one pure
ACK.
"""
import socket
import struct
import sys


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("server closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("server closed before the response body")
        body += chunk


def main():
    host, port, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if requests < 0:
        s.sendall(b"GET / HTTP/1.1\r\nHost: scenario\r\n\r\n")
    for _ in range(requests):
        s.sendall(b"GET / HTTP/1.1\r\nHost: scenario\r\n\r\n")
        read_response(s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    s.close()  # SO_LINGER 0: abort with RST+ACK


if __name__ == "__main__":
    main()
