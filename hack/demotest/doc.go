// Package demotest tests `make demo` (hack/demo.sh) end to end. It has no
// code of its own besides this comment: TestDemo (root, Linux, the tools
// of hack/setup-scenarios.sh) runs the demo with DEMO_EXIT_AFTER_SUMMARY=1
// and checks its Radar-style summary and that it left nothing behind: no
// namespace, no process, no change to the machine's netfilter rules.
package demotest
