// Package systemd holds the tests of connscope's systemd units for a Linux
// server without Kubernetes: connscope.service runs `connscope standalone`
// (agent and classifier in one process) with the settings of
// standalone.yaml; connscope-agent.service runs `connscope agent`, shipping
// to a classifier elsewhere, with the settings of agent.yaml. It has no
// code of its own.
//
// The tests check the units with systemd-analyze (verify, and the offline
// security exposure), read the example settings with the agent's own
// reader, and boot systemd as PID 1 in a systemd-nspawn container of this
// machine's /usr, with a network namespace of its own, to run each unit
// with its whole sandbox against real connections on the container's
// loopback (testdata/check.sh does that inside and writes what it sees;
// the Go test judges).
package systemd
