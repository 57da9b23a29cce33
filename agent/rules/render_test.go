package rules

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/connscope/connscope/internal/golden"
)

// fullPolicy uses every option.
func fullPolicy() Policy {
	p := validPolicy()
	p.Ports = []uint16{443, 80}
	p.ExcludeCIDRs = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("192.0.2.7/32"),
	}
	p.Interfaces = []string{"eth0", "veth+"}
	return p
}

func TestRulesRenderTheSeedRulesWithFilters(t *testing.T) {
	var b strings.Builder
	for _, tc := range []struct {
		name string
		p    Policy
	}{
		{"minimal", validPolicy()},
		{"full", fullPolicy()},
	} {
		for _, f := range tc.p.Families {
			b.WriteString("# " + tc.name + " " + f.String() + "\n")
			b.WriteString(Rules(tc.p, f).Restore())
		}
	}
	golden.Check(t, "render", b.String())
}

func TestChainNameIsShortStableAndPerParameters(t *testing.T) {
	p := validPolicy()
	name := ChainName(p)
	if len(name) > maxChainLen {
		t.Errorf("%s is %d characters, iptables allows %d", name, len(name), maxChainLen)
	}
	if name != "CONNSCOPE-JNPFP5XL-3VHNCQUJ" {
		t.Errorf("ChainName changed to %s: a new name leaves every installed chain stale", name)
	}
	long := p
	long.Name = strings.Repeat("x", MaxNameLen)
	if n := ChainName(long); len(n) != len(name) {
		t.Errorf("long name gives %s", n)
	}
	for what, mod := range map[string]func(*Policy){
		"label bit":   func(p *Policy) { p.LabelBit++ },
		"NFLOG group": func(p *Policy) { p.NFLOGGroup++ },
	} {
		q := p
		mod(&q)
		if ChainName(q) == name {
			t.Errorf("changing the %s keeps chain %s", what, name)
		}
		if !strings.HasPrefix(ChainName(q), namePrefix(p.Name)) {
			t.Errorf("changing the %s changes the name part: %s", what, ChainName(q))
		}
	}
	q := p
	q.Probability, q.PacketCap, q.Ports = 0.5, 3, []uint16{22}
	if ChainName(q) != name {
		t.Error("the chain name depends on parameters other than name, bit and group")
	}
	q = p
	q.Name = "web2"
	if strings.HasPrefix(ChainName(q), namePrefix(p.Name)) {
		t.Error("policies web and web2 share a name part")
	}
}

func TestProbabilityTextRoundTrips(t *testing.T) {
	for _, p := range []float64{1, 0.5, 0.0001, 1e-9, 0.123456789, 1.0 / (1 << 31)} {
		txt := probabilityText(p)
		back, err := strconv.ParseFloat(txt, 64)
		if err != nil {
			t.Fatal(err)
		}
		if probabilityFixed(back) != probabilityFixed(p) {
			t.Errorf("%v prints as %s, which parses to fixed point %d, not %d", p, txt, probabilityFixed(back), probabilityFixed(p))
		}
	}
	if got := probabilityText(1); got != "1.00000000000" {
		t.Errorf("probabilityText(1) = %s", got)
	}
}
