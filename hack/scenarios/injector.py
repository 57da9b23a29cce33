#!/usr/bin/env python3
"""An on-path RST injector for the traffic scenarios (classifier/scenarios).

Usage: injector.py CONFIG.json

Runs in the router namespace. It sniffs the client-side interface for the
first data packet (TCP payload, PSH set) of each new flow towards a configured
server port, and sends forged resets to the server from the server-side
interface, as a censoring middlebox does. The forged packets go out as
Ethernet frames (a raw packet socket), so the router's own netfilter rules do not see
them.

The resets carry the sequence number the server expects next (rcv_nxt): the
data packet's seq + payload length when the router forwarded the data packet,
or its seq when the router dropped it ("seq": "data" in the config). Resets
with that exact sequence number are in the server's window, so the server's
conntrack accepts them and the NFLOG rule sees them (architecture.md).

Like real middleboxes, the forged packets have their own TTL (hop limit) and
IPv4 ID, far from the client's.

CONFIG: {"sniff": IFACE, "send": IFACE, "src_mac": MAC, "dst_mac": MAC,
         "ttl": 50, "ports": {"PORT": {"seq": "next"|"data",
                                        "resets": [["R"|"RA", ACK], ...]}}}
ACK is "data" (copy the data packet's ack number), "data+N", or a number.
Prints "ready" on stdout once sniffing, and one line per injection.
"""
import json
import sys

from scapy.all import IP, TCP, AsyncSniffer, Ether, IPv6, conf

conf.verb = 0


def ack_value(spec, pkt_ack):
    if isinstance(spec, int):
        return spec
    if spec == "data":
        return pkt_ack
    if spec.startswith("data+"):
        return (pkt_ack + int(spec[5:])) % 2**32
    raise ValueError("bad ack spec %r" % spec)


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    ports = {int(p): v for p, v in cfg["ports"].items()}
    done = set()
    out = conf.L2socket(iface=cfg["send"])  # one socket for every injection

    def handle(pkt):
        ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
        if ip is None or TCP not in pkt:
            return
        tcp = pkt[TCP]
        spec = ports.get(tcp.dport)
        payload = len(tcp.payload)
        if spec is None or payload == 0 or not tcp.flags.P:
            return
        flow = (ip.src, tcp.sport, ip.dst, tcp.dport)
        if flow in done:  # retransmission of the data packet
            return
        done.add(flow)
        seq = tcp.seq + payload if spec["seq"] == "next" else tcp.seq
        frames = []
        for i, (flags, ack) in enumerate(spec["resets"]):
            if IP in pkt:
                l3 = IP(src=ip.src, dst=ip.dst, ttl=cfg["ttl"], id=(ip.id + 20000 + 7 * i) % 65536 or 1)
            else:
                l3 = IPv6(src=ip.src, dst=ip.dst, hlim=cfg["ttl"])
            l4 = TCP(sport=tcp.sport, dport=tcp.dport, flags=flags, seq=seq % 2**32,
                     ack=ack_value(ack, tcp.ack), window=0)
            frames.append(Ether(src=cfg["src_mac"], dst=cfg["dst_mac"]) / l3 / l4)
        for frame in frames:
            out.send(frame)
        print("injected %d into %s:%d > %s:%d" % (len(frames), ip.src, tcp.sport, ip.dst, tcp.dport), flush=True)

    # Only the configured ports reach Python: scapy is slow, and a reset that
    # comes seconds late is not what a middlebox does.
    bpf = "tcp and (%s)" % " or ".join("dst port %d" % p for p in ports)
    sniffer = AsyncSniffer(iface=cfg["sniff"], filter=bpf, prn=handle, store=False,
                           started_callback=lambda: print("ready", flush=True))
    sniffer.start()
    sniffer.join()


if __name__ == "__main__":
    main()
