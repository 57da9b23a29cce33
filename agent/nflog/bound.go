package nflog

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// boundPath lists the bound groups of the calling thread's network
// namespace (the kernel's nfnetlink_log seq file: one line per group, the
// group number first).
const boundPath = "/proc/net/netfilter/nfnetlink_log"

// BoundGroups returns the NFLOG groups that a socket has bound in the
// calling thread's network namespace. With nfnetlink_log not loaded there
// is no such file, and no group is bound.
func BoundGroups() (map[uint16]bool, error) {
	f, err := os.Open(boundPath)
	if errors.Is(err, fs.ErrNotExist) {
		return map[uint16]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseBound(bufio.NewScanner(f))
}

func parseBound(sc *bufio.Scanner) (map[uint16]bool, error) {
	out := map[uint16]bool{}
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		g, err := strconv.ParseUint(fields[0], 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %q is not a group number", boundPath, line, fields[0])
		}
		out[uint16(g)] = true
	}
	return out, sc.Err()
}
