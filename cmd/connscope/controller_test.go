package main

import (
	"strings"
	"testing"
)

// Bad controller flags are refused, naming the flag, before it looks for a
// cluster.
func TestControllerBadFlagsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent-namespace=connscope", "--classifier-namespace=connscope"}, "--agent-namespace and --classifier-namespace are both"},
		{[]string{"--label-bits=200-300"}, "--label-bits"},
		{[]string{"--nflog-groups=5-2"}, "--nflog-groups"},
		{[]string{"--agent-metrics-port=65535", "--nflog-groups=1-2"}, "--agent-metrics-port"},
	} {
		_, _, err := runCLI(t, append([]string{"controller"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
