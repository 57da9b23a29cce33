// Package systemd holds the tests of connscope's systemd unit for a Linux
// server without Kubernetes (connscope.service, which runs `connscope
// standalone` with the sampling settings of standalone.yaml). It has no
// code of its own.
//
// The tests check the unit with systemd-analyze (verify, and the offline
// security exposure), read the example settings with the agent's own
// reader, and boot systemd as PID 1 in a systemd-nspawn container of this
// machine's /usr, with a network namespace of its own, to run the unit
// with its whole sandbox against real connections on the container's
// loopback (testdata/check.sh does that inside and writes what it sees;
// the Go test judges).
package systemd
