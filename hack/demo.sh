#!/usr/bin/env bash
# demo.sh (make demo): connscope live, on this machine, in about a minute.
#
# It installs what it needs (hack/setup-scenarios.sh; socat for serving), builds
# connscope, and makes three network namespaces of its own, client --
# router -- server (veth pairs, private addresses, nothing on the machine's
# own interfaces). In the server it runs `connscope standalone` at
# probability 1 and the servers; from the client it drives real traffic:
# curl over HTTP and HTTPS, clients aborting with SO_LINGER 0, hping3 SYN
# probes, an nmap SYN scan, a router that blackholes a flow after a
# forbidden Host header, and an RST injector in the router
# (hack/scenarios/). After the idle timeout it prints the classifier's
# Radar-style summary and a short table, then serves the dashboard on
# http://127.0.0.1:${DEMO_PORT:-8080}/ until Ctrl-C.
#
# Environment: DEMO_EXIT_AFTER_SUMMARY=1 exits after the summary (tests);
# DEMO_SUMMARY_FILE, when set, receives the summary's JSON; DEMO_PORT is
# the machine's loopback port for the dashboard (8080); CONNSCOPE a built
# binary to use instead of building bin/connscope.
#
# On Kubernetes (hack/cluster/demo.sh and the end-to-end test):
# DEMO_SERVER_NETNS names an existing network namespace (a node's, where a
# connscope agent samples the interface s0) to use as the server instead of
# making one; connscope standalone is then not started, DEMO_CLASSIFIER_URL
# (http://HOST:PORT, reachable from that namespace) is the classifier whose
# API and dashboard are shown, and the demo waits for the agent's rules in
# that namespace. The demo adds the interface s0 and the servers there and
# removes them on exit; the namespace stays.
#
# It removes what it made on every exit (also Ctrl-C and failure): the
# processes it started, by PID, then the namespaces (their rules go with
# them), then its temporary folder. It never changes the machine's own
# netfilter rules or routes; traffic goes only between its namespaces.
# Every process it starts carries CONNSCOPE_DEMO_ID in its environment.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (network namespaces, iptables); run: sudo make demo" >&2
	exit 1
fi
port=${DEMO_PORT:-8080}
py=/usr/bin/python3 # Debian's, which has scapy

say() { printf '\n== %s\n' "$*"; }

say "installing the tools (hack/setup-scenarios.sh)"
bash hack/setup-scenarios.sh

bin=${CONNSCOPE:-}
if [ -z "${DEMO_SERVER_NETNS:-}" ]; then
	if [ -z "$bin" ]; then
		say "building bin/connscope"
		${GO:-go} build -o bin/connscope ./cmd/connscope
		bin=bin/connscope
	fi
	bin=$(realpath "$bin")
fi

export CONNSCOPE_DEMO_ID=${CONNSCOPE_DEMO_ID:-$$-$RANDOM}
id=$(printf '%s' "$CONNSCOPE_DEMO_ID" | tr -c 'a-zA-Z0-9\n' '-' | tail -c 12)
client=csdemo-$id-client router=csdemo-$id-router server=csdemo-$id-server
external=${DEMO_SERVER_NETNS:-}
api=http://127.0.0.1:8080
if [ -n "$external" ]; then
	server=$external
	api=${DEMO_CLASSIFIER_URL:?DEMO_CLASSIFIER_URL (http://HOST:PORT of the classifier) goes with DEMO_SERVER_NETNS}
	[ -e "/run/netns/$server" ] || { echo "demo: DEMO_SERVER_NETNS $server: no such network namespace" >&2; exit 1; }
fi
work=$(mktemp -d /tmp/connscope-demo.XXXXXX)
pids=()
cs_pid=

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	# connscope first, with SIGTERM: it removes its rules and commits.
	if [ -n "$cs_pid" ] && kill -0 "$cs_pid" 2>/dev/null; then
		kill -TERM "$cs_pid"
		for _ in $(seq 100); do kill -0 "$cs_pid" 2>/dev/null || break; sleep 0.1; done
	fi
	{
		for p in "${pids[@]}"; do
			# socat forks a child per connection: those first.
			for c in $(pgrep -P "$p"); do kill -KILL "$c"; done
			kill -KILL "$p"
		done
		for p in "${pids[@]}"; do wait "$p"; done
	} 2>/dev/null
	# The server's s0 goes with its peer in the router.
	for ns in "$client" "$router" "$server"; do
		[ "$ns" = "$external" ] || ip netns del "$ns" 2>/dev/null
	done
	rm -rf "$work"
	[ "$rc" -eq 0 ] || echo "demo: stopped (exit $rc); everything it made is removed" >&2
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NS NAME ARGS...: runs ARGS in namespace NS in the background,
# output in $work/NAME.log, and remembers its PID (ip netns exec execs ARGS).
start() {
	local ns=$1 name=$2
	shift 2
	ip netns exec "$ns" "$@" >"$work/$name.log" 2>&1 &
	pids+=($!)
}
in_ns() { ip netns exec "$@"; }
wait_log() { # FILE TEXT SECONDS
	for _ in $(seq $(($3 * 10))); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	echo "demo: '$2' did not appear in $1:" >&2
	cat "$1" >&2
	return 1
}

say "namespaces $client, $router, $server"
for ns in "$client" "$router" "$server"; do
	[ "$ns" = "$external" ] && continue
	ip netns add "$ns"
	in_ns "$ns" ip link set lo up
done
# Addresses and MACs as the scenario tests use (classifier/scenarios).
cMAC=02:c5:00:00:01:01 rcMAC=02:c5:00:00:01:02 rsMAC=02:c5:00:00:02:01 sMAC=02:c5:00:00:02:02
cIP=10.231.1.10 rcIP=10.231.1.1 rsIP=10.231.2.1 sIP=10.231.2.10
in_ns "$client" ip link add c0 address $cMAC type veth peer name rc0 address $rcMAC netns "$router"
in_ns "$server" ip link add s0 address $sMAC type veth peer name rs0 address $rsMAC netns "$router"
while read -r ns dev addr; do
	in_ns "$ns" ip addr add "$addr/24" dev "$dev"
	in_ns "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null
	in_ns "$ns" ip link set "$dev" up
done <<EOF
$client c0 $cIP
$router rc0 $rcIP
$router rs0 $rsIP
$server s0 $sIP
EOF
in_ns "$client" ip route add default via $rcIP
in_ns "$server" ip route add default via $rsIP
in_ns "$client" ip neigh replace $rcIP lladdr $rcMAC dev c0 nud permanent
in_ns "$router" ip neigh replace $cIP lladdr $cMAC dev rc0 nud permanent
in_ns "$router" ip neigh replace $sIP lladdr $sMAC dev rs0 nud permanent
in_ns "$server" ip neigh replace $rsIP lladdr $rsMAC dev s0 nud permanent
in_ns "$router" sysctl -q -w net.ipv4.ip_forward=1

# The router's middleboxes (filter FORWARD): port 8040 drops a flow from
# the packet carrying the forbidden Host on; port 8050 forwards the first
# request and drops the flow after it, and the injector resets it.
in_ns "$router" iptables -A FORWARD -m connmark --mark 2 -j DROP
in_ns "$router" iptables -A FORWARD -p tcp --dport 8040 -m string --algo bm --string "Host: blocked.example" -j CONNMARK --set-mark 1
in_ns "$router" iptables -A FORWARD -p tcp --dport 8050 -m string --algo bm --string "GET " -j CONNMARK --set-mark 2
in_ns "$router" iptables -A FORWARD -m connmark --mark 1 -j DROP
cat >"$work/injector.json" <<EOF
{"sniff": "rc0", "send": "rs0", "src_mac": "$rsMAC", "dst_mac": "$sMAC", "ttl": 50,
 "ports": {"8050": {"seq": "next", "resets": [["R", "data"]]}}}
EOF

if [ -n "$external" ]; then
	say "servers in $server; connscope's agent samples s0 there"
else
	say "servers and connscope standalone (probability 1) in $server"
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
	-subj /CN=connscope-demo -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
start "$server" http $py hack/scenarios/server.py 80 8013:5 8040 8050
start "$server" https openssl s_server -quiet -www -accept 443 -cert "$work/cert.pem" -key "$work/key.pem"
start "$router" injector $py hack/scenarios/injector.py "$work/injector.json"
if [ -z "$external" ]; then
	start "$server" connscope "$bin" standalone --probability 1 --label-bit 7 --nflog-group 17 \
		--ip-families IPv4 --interfaces s0 --store "sqlite://$work/connscope.db" --http-addr 127.0.0.1:8080 \
		--node-name demo-server
	cs_pid=${pids[-1]}
fi
wait_log "$work/http.log" ready 10
wait_log "$work/injector.log" ready 20
if [ -z "$external" ]; then
	wait_log "$work/connscope.log" "rules installed" 30
	grep -E 'standalone running|rules installed' "$work/connscope.log" | sed 's/^/  /'
else
	# The agent's rules for s0 (iptables-save of whichever backend holds them).
	for i in $(seq 60); do
		in_ns "$server" sh -c 'iptables-nft-save -t mangle; iptables-legacy-save -t mangle' 2>/dev/null >"$work/rules.txt"
		grep -q -- '-i s0 .*connscope' "$work/rules.txt" && break
		[ "$i" -lt 60 ] || { echo "demo: no connscope rule for s0 in $server after 30s" >&2; exit 1; }
		sleep 0.5
	done
	grep -- '-i s0 .*connscope' "$work/rules.txt" | sed 's/^/  /'
fi

say "traffic from $client"
c() { in_ns "$client" "$@"; }
echo "  curl: 12 HTTP and 6 HTTPS requests that end normally"
for i in $(seq 12); do c curl -sS -o /dev/null --max-time 5 "http://$sIP/"; done
for i in $(seq 6); do c curl -sS -k -o /dev/null --max-time 5 "https://$sIP/"; done
echo "  SO_LINGER aborts: after the handshake, after a response, before a slow response"
for n in 0 0 1 1; do c $py hack/scenarios/linger_client.py $sIP 80 $n; done
c $py hack/scenarios/linger_client.py $sIP 8013 -1
c $py hack/scenarios/linger_client.py $sIP 8013 -1
echo "  hping3: 4 SYN probes"
for sp in 41000 41001 41002 41003; do c hping3 -q -S -c 1 -s $sp -p 80 $sIP >/dev/null 2>&1 || true; done
echo "  nmap -sS: 12 ports"
c nmap -sS -Pn -n --max-retries 0 -e c0 -p 21-25,80,443,3306,5432,6379,8080,9200 $sIP >/dev/null
echo "  the router blackholes 3 requests with Host: blocked.example"
for i in 1 2 3; do c curl -sS -o /dev/null --max-time 2 -H "Host: blocked.example" "http://$sIP:8040/" 2>/dev/null || true; done
echo "  the injector resets 3 requests"
for i in 1 2 3; do c curl -sS -o /dev/null --max-time 2 "http://$sIP:8050/" 2>/dev/null || true; done
grep -c injected "$work/injector.log" | sed 's/^/  injected: /'

say "waiting for the idle timeout (3s) and the classifier's commit"
summary_url="$api/radar/tcp_resets_timeouts/summary?dateRange=1d"
# Done once the count has held still for a second, 5 s on at the earliest.
prev= cur=
for i in $(seq 30); do
	sleep 1
	cur=$(in_ns "$server" curl -sS --max-time 5 "$summary_url" || true)
	n=$(printf '%s' "$cur" | $py -c 'import json,sys; print(json.load(sys.stdin)["result"]["connections"]["classified"])' 2>/dev/null || echo 0)
	if [ "$n" != 0 ] && [ "$n" = "$prev" ] && [ "$i" -ge 5 ]; then break; fi
	prev=$n
done

say "Radar-style summary: GET $summary_url (from $server)"
printf '%s' "$cur" | $py -m json.tool --no-ensure-ascii
[ -z "${DEMO_SUMMARY_FILE:-}" ] || printf '%s' "$cur" >"$DEMO_SUMMARY_FILE"
printf '%s' "$cur" | $py -c '
import json, sys
r = json.load(sys.stdin)["result"]
c = r["connections"]
print("\n%-14s %8s %6s" % ("stage", "share %", "conns"))
for st in ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"):
    print("%-14s %8s %6d" % (st, r["summary_0"][st], c["by_stage"].get(st, 0)))
print("%-14s %8s %6d   (excluded: %d)" % ("classified", "", c["classified"], c["excluded"]))
for title, key in (("tags", "tags"), ("signatures", "signatures")):
    items = sorted(((k, v) for k, v in (r.get(key) or {}).items() if v), key=lambda kv: -kv[1])
    print("\n%s: %s" % (title, ", ".join("%s %d" % kv for kv in items) or "none"))
'

if [ "${DEMO_EXIT_AFTER_SUMMARY:-0}" = 1 ]; then
	say "DEMO_EXIT_AFTER_SUMMARY=1: stopping"
	exit 0
fi

if ! command -v socat >/dev/null; then
	say "installing socat, for the dashboard's port"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends socat >/dev/null ||
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends socat >/dev/null; }
fi
# The dashboard: the machine's loopback port, through a Unix socket in the
# demo's folder, into the server namespace's loopback (no address of the
# machine besides 127.0.0.1 is used).
start "$server" proxy-in socat "UNIX-LISTEN:$work/dashboard.sock,fork,mode=600" "TCP:${api#http://}"
for _ in $(seq 50); do [ -S "$work/dashboard.sock" ] && break; sleep 0.1; done
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$work/dashboard.sock" >"$work/proxy-out.log" 2>&1 &
pids+=($!)
sleep 0.3
if ! kill -0 "${pids[-1]}" 2>/dev/null; then
	echo "demo: could not listen on 127.0.0.1:$port ($(cat "$work/proxy-out.log")); set DEMO_PORT to a free port" >&2
	exit 1
fi
say "dashboard: http://127.0.0.1:$port/  (Ctrl-C stops the demo and removes everything)"
wait "${pids[-1]}"
