package main

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/connscope/connscope/internal/version"
)

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "connscope",
		Short: "Sample the first packets of TCP connections and classify how they ended",
		Long: `connscope classifies TCP connections that end early in resets or timeouts,
by the stage where they ended, tags and signatures (Cloudflare Radar's method).`,
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newClassifyCommand())
	root.AddCommand(newAgentCommand())
	root.AddCommand(newControllerCommand())
	root.AddCommand(newClassifierCommand())
	root.AddCommand(newStandaloneCommand())
	return root
}

// newLogger returns the logger of a long-running command: text lines on
// the command's standard error, or JSON lines with --log-json.
func newLogger(cmd *cobra.Command, json bool) *slog.Logger {
	if json {
		return slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
}
