#!/bin/sh
# check.sh UNIT API runs inside the systemd-nspawn container of
# config/systemd's tests, where systemd is PID 1 and UNIT (connscope or
# connscope-agent) runs as its unit file says, and a connscope classifier
# serves the Radar API at API (host:port). It writes what it sees to /out
# for the test to judge; the test, not this script, decides what passes.
set -u
unit=$1
api=$2
out=/out
log() { echo "check: $(date +%T.%N | cut -c1-12) $*"; }

# wait_journal TEXT N SECONDS: until UNIT's journal holds N lines
# with TEXT.
wait_journal() {
	i=0
	while [ $i -lt $(($3 * 5)) ]; do
		[ "$(journalctl -u "$unit" --no-pager | grep -c "$1")" -ge "$2" ] && return 0
		sleep 0.2
		i=$((i + 1))
	done
	log "fewer than $2 lines '$1' in $unit's journal after $3 s"
	return 1
}

wait_journal "rules installed" 1 30
log "$unit running"
systemctl show "$unit" -p MainPID -p ActiveState -p SubState >$out/show.txt
journalctl -u "$unit" --no-pager >$out/journal-started.txt
pid=$(systemctl show "$unit" -p MainPID --value)
cat /proc/"$pid"/status >$out/status.txt
cat /proc/"$pid"/mountinfo >$out/mountinfo.txt
ss -Hltnp >$out/listeners.txt
iptables-nft-save -t mangle >$out/rules-running.txt 2>/dev/null

# Real connections on the container's loopback, to the sampled ports:
# three that close with FIN (no_match), three SYNs to 443, where nothing
# listens (post_syn: the client sends nothing after its SYN).
python3 -m http.server 80 --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
i=0
while [ $i -lt 50 ] && ! curl -s -m 1 -o /dev/null http://127.0.0.1/; do sleep 0.1; i=$((i + 1)); done
for n in 1 2; do curl -s -m 3 -o /dev/null http://127.0.0.1/; done
for n in 1 2 3; do curl -s -m 3 -o /dev/null http://127.0.0.1:443/; done
kill "$server"
log "connections made"
# The classifier finishes a connection after --hold of silence (10 s).
i=0
while [ $i -lt 60 ]; do
	curl -s -m 3 "http://$api/radar/tcp_resets_timeouts/summary?dateRange=1d" >$out/summary.json
	grep -q -e '"post_syn":"0.000"' -e '"no_match":"0.000"' $out/summary.json || break
	sleep 1
	i=$((i + 1))
done

log "summary read"
# systemctl stop: SIGTERM, the rules removed.
systemctl stop "$unit"
systemctl show "$unit" -p ActiveState -p Result >$out/stopped.txt
iptables-nft-save -t mangle >$out/rules-stopped.txt 2>/dev/null
journalctl -u "$unit" --no-pager >$out/journal-stopped.txt

log "stopped"
# A crash: SIGKILL leaves the rules, ExecStopPost removes them; stop
# before Restart= brings it back.
systemctl start "$unit"
wait_journal "rules installed" 2 30
iptables-nft-save -t mangle >$out/rules-before-kill.txt 2>/dev/null
before=$(journalctl -u "$unit" --no-pager | grep -c "deleted chain")
systemctl kill --signal=SIGKILL "$unit"
wait_journal "deleted chain" $((before + 1)) 30
iptables-nft-save -t mangle >$out/rules-killed.txt 2>/dev/null
systemctl stop "$unit"
journalctl -u "$unit" --no-pager >$out/journal-killed.txt
log done
touch $out/done
