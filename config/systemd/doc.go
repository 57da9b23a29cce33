// Package systemd holds the tests of connscope's systemd unit for a Linux
// server without Kubernetes (connscope.service, which runs `connscope
// standalone` with the sampling settings of standalone.yaml). It has no
// code of its own.
//
// The tests check the unit with systemd-analyze (verify, and the offline
// security exposure), and run its ExecStart and ExecStopPost lines, with
// the unit's capability bounding set and no_new_privs applied by setpriv,
// in network namespaces they create, against real traffic. The rest of
// the unit's sandbox (ProtectSystem, the system call filter, ...) needs
// systemd as PID 1, which this machine's test environment does not have:
// those directives are checked by systemd-analyze only.
package systemd
