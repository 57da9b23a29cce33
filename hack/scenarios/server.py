#!/usr/bin/env python3
"""HTTP/1.1 keep-alive server for the traffic scenarios (classifier/scenarios).

Usage: server.py PORT[:DELAY]...

Listens on every PORT on all IPv4 and IPv6 addresses (one dual-stack socket
per port) and answers every GET with a small response written in ONE send(),
so that a response is one TCP segment and a client acknowledges it with at
most one ACK. With :DELAY, the response on that port comes DELAY seconds
after the request (a slow server: a client can abort before it). Connections
stay open until the client closes them. Prints "ready" on stdout once every
port is listening.
"""
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"connscope scenario\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % len(BODY)) + BODY


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise

    def do_GET(self):
        time.sleep(self.server.delay)
        self.wfile.write(RESPONSE)  # one write: one segment

    def log_message(self, fmt, *args):
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request, client_address):
        pass  # resets and timeouts are what the scenarios are about


def main():
    servers = []
    for arg in sys.argv[1:]:
        port, _, delay = arg.partition(":")
        server = DualStackServer(("::", int(port)), Handler)
        server.delay = float(delay or 0)
        servers.append(server)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
