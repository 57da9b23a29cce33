package rules_test

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/connscope/connscope/agent/rules"
)

// An agent installs its policy's rules, keeps them for as long as it runs,
// and takes them out on a clean shutdown.
func ExampleManager() {
	log := slog.Default()
	m, err := rules.NewManager(rules.Policy{
		Name:         "default",
		Probability:  0.0001,
		PacketCap:    10,
		LabelBit:     3,
		NFLOGGroup:   5,
		CopyRange:    128,
		Ports:        []uint16{80, 443},
		ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		Families:     []rules.Family{rules.IPv4, rules.IPv6},
	}, rules.Options{Backend: rules.BackendAuto, Logger: log})
	if err != nil {
		log.Error("cannot sample", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Ensure at once, remove an earlier run's leftovers, re-Ensure every 10s.
	if err := m.Run(ctx, 10*time.Second); err != nil {
		log.Error("cannot sample", "err", err)
	}
	// Run has returned, so nothing puts the rules back.
	if err := m.Remove(); err != nil {
		log.Error("could not remove every rule", "err", err)
	}
}
