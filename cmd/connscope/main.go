// Command connscope is the single binary of connscope. Its subcommands are
// the operator's controller, the node agent, the classifier service, the
// standalone sampler, and classify, which runs the classification engine on
// capture files.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "connscope:", err)
		os.Exit(1)
	}
}
