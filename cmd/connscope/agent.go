package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/connscope/connscope/agent"
	"github.com/connscope/connscope/agent/rules"
)

func newAgentCommand() *cobra.Command {
	cfg := agent.DefaultConfig()
	var logJSON bool
	cmd := &cobra.Command{
		Use:   "agent [flags]",
		Short: "Sample new TCP connections on this node and ship their first packets' headers",
		Long: `agent installs one sampling policy's iptables rules (mangle table, a chain of
its own), reads the packets they log from an NFLOG group, and ships their
IP and TCP headers (never payload) to the classifier (grpc://, grpcs://) or to
a pcapng file (file:///...) that 'connscope classify' reads. It keeps the
rules in place, restoring them within --resync when someone removes them,
and removes them on SIGTERM or SIGINT.

Settings come from flags, from a YAML or JSON file (--config; keys as
packetCap, nflogGroup, ...), or both; flags override the file. Every
setting is checked before anything is changed on the node.

The rules only label and log: they never accept, drop or change a packet.
Their connbytes match turns on conntrack accounting in the network
namespace for good.`,
		Example: `  connscope agent --probability 0.0001 --label-bit 3 --nflog-group 5 \
      --sink grpc://connscope-classifier.connscope-system:9443 --ports 80,443
  connscope agent --config /etc/connscope/agent.yaml --metrics-addr ""
  connscope agent cleanup`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cfg.Resolve(cmd.Flags())
			if err != nil {
				return err
			}
			a, err := agent.New(c, agent.Options{Logger: newLogger(cmd, logJSON)})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	cfg.AddFlags(cmd.Flags())
	cmd.Flags().BoolVar(&logJSON, "log-json", false, "log JSON lines instead of text")
	cmd.AddCommand(newAgentCleanupCommand())
	return cmd
}

func newAgentCleanupCommand() *cobra.Command {
	var backend, policy string
	cmd := &cobra.Command{
		Use:   "cleanup [--backend all|nft|legacy] [--policy NAME]",
		Short: "Remove every iptables rule and chain connscope installed, of every policy or of one",
		Long: `cleanup removes from the mangle table everything of connscope: the jumps from
PREROUTING to CONNSCOPE- chains (and any rule with a "connscope " comment),
then the CONNSCOPE- chains, for IPv4 and IPv6, in both iptables backends
(or only the one --backend names). With --policy NAME it removes only that
policy's chains and jumps (those whose rule comments say "connscope policy
NAME:"), e.g. what a killed agent left. It reads each backend first and
runs iptables only where something of connscope is found. It prints what it
removed and exits 0, also when nothing was there.

Stop the agents first: a running agent puts its rules back within its
resync period.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := rules.Options{}
			switch strings.ToLower(backend) {
			case "all", "auto", "":
			case string(rules.BackendNFT), string(rules.BackendLegacy):
				// CleanupAll skips a backend whose programs are missing:
				// hide the other backend's.
				skip := "-legacy"
				if strings.ToLower(backend) == string(rules.BackendLegacy) {
					skip = "-nft"
				}
				opts.LookPath = func(name string) (string, error) {
					if strings.Contains(name, skip) {
						return "", fmt.Errorf("%s: left alone (--backend %s)", name, backend)
					}
					return exec.LookPath(name)
				}
			default:
				return fmt.Errorf("--backend %q: use all, nft or legacy", backend)
			}
			var removed []string
			var err error
			if policy != "" {
				removed, err = rules.CleanupPolicy(opts, policy)
			} else {
				removed, err = rules.CleanupAll(opts)
			}
			out := cmd.OutOrStdout()
			for _, r := range removed {
				fmt.Fprintln(out, r)
			}
			if err != nil {
				return fmt.Errorf("cleanup: %w", err)
			}
			if len(removed) == 0 && policy != "" {
				fmt.Fprintf(out, "nothing of connscope policy %q found\n", policy)
			} else if len(removed) == 0 {
				fmt.Fprintln(out, "nothing of connscope found")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&backend, "backend", "all", "iptables backend to clean: all, nft or legacy")
	cmd.Flags().StringVar(&policy, "policy", "", "remove only this policy's rules (default: every policy's)")
	return cmd
}
