package nflog

import (
	"bufio"
	"strings"
	"testing"
)

func TestParseBound(t *testing.T) {
	// As the kernel prints it: group, peer port id, queue length, copy
	// mode, copy range, flush timeout, reference count.
	in := "    5 1234567     0 2   128    100  1\n   43     99     3 2  65535      1  1\n"
	got, err := parseBound(bufio.NewScanner(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[5] || !got[43] {
		t.Errorf("got %v, want groups 5 and 43", got)
	}
	if _, err := parseBound(bufio.NewScanner(strings.NewReader("x 1 2\n"))); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("a bad line: err %v, want one naming line 1", err)
	}
}
