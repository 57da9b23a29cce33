package rules

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
)

// validPolicy is a policy that passes Validate, for tests to vary.
func validPolicy() Policy {
	return Policy{
		Name:        "web",
		Probability: 0.0001,
		PacketCap:   10,
		LabelBit:    3,
		NFLOGGroup:  5,
		CopyRange:   128,
		Families:    []Family{IPv4, IPv6},
	}
}

func TestValidateAcceptsGoodPolicies(t *testing.T) {
	for name, mod := range map[string]func(*Policy){
		"minimal":              func(*Policy) {},
		"probability one":      func(p *Policy) { p.Probability = 1 },
		"smallest probability": func(p *Policy) { p.Probability = 1.0 / (1 << 31) },
		"bounds": func(p *Policy) {
			p.PacketCap, p.LabelBit, p.CopyRange, p.NFLOGGroup = MaxPacketCap, MaxLabelBit, MaxCopyRange, 65535
		},
		"every filter": func(p *Policy) {
			p.Ports = []uint16{443, 80}
			p.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
			p.Interfaces = []string{"eth0", "veth+", "br-1.100", "wg@x"}
		},
		"ipv6 only":      func(p *Policy) { p.Families = []Family{IPv6} },
		"dotted name":    func(p *Policy) { p.Name = "team-a.web-1" },
		"longest name":   func(p *Policy) { p.Name = strings.Repeat("a", MaxNameLen) },
		"fifteen ports":  func(p *Policy) { p.Ports = []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} },
		"host exclusion": func(p *Policy) { p.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")} },
	} {
		t.Run(name, func(t *testing.T) {
			p := validPolicy()
			mod(&p)
			if err := p.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestValidateExplainsEachProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Policy)
		want string
	}{
		{"empty name", func(p *Policy) { p.Name = "" }, "name is empty"},
		{"upper-case name", func(p *Policy) { p.Name = "Web" }, `name "Web": use lower-case letters`},
		{"name with space", func(p *Policy) { p.Name = "a b" }, `name "a b"`},
		{"name with quote", func(p *Policy) { p.Name = `a"b` }, `use lower-case letters`},
		{"name with colon", func(p *Policy) { p.Name = "a:b" }, `use lower-case letters`},
		{"name ending in dash", func(p *Policy) { p.Name = "web-" }, `use lower-case letters`},
		{"long name", func(p *Policy) { p.Name = strings.Repeat("a", MaxNameLen+1) }, "at most 150 fit in iptables comments"},
		{"zero probability", func(p *Policy) { p.Probability = 0 }, "probability 0: must be in (0, 1]"},
		{"negative probability", func(p *Policy) { p.Probability = -0.5 }, "must be in (0, 1]"},
		{"probability above one", func(p *Policy) { p.Probability = 1.5 }, "must be in (0, 1]"},
		{"NaN probability", func(p *Policy) { p.Probability = math.NaN() }, "must be in (0, 1]"},
		{"probability below resolution", func(p *Policy) { p.Probability = 1e-10 }, "rounds to 0 in the kernel's 31-bit fixed point"},
		{"zero packet cap", func(p *Policy) { p.PacketCap = 0 }, "packetCap 0: must be 1-64"},
		{"large packet cap", func(p *Policy) { p.PacketCap = 65 }, "packetCap 65"},
		{"negative label bit", func(p *Policy) { p.LabelBit = -1 }, "labelBit -1: conntrack labels have bits 0-127"},
		{"label bit 128", func(p *Policy) { p.LabelBit = 128 }, "labelBit 128"},
		{"zero copy range", func(p *Policy) { p.CopyRange = 0 }, "copyRange 0: must be 60-512 bytes"},
		{"huge copy range", func(p *Policy) { p.CopyRange = 65535 }, "copyRange 65535"},
		{"port zero", func(p *Policy) { p.Ports = []uint16{0} }, "ports: 0 is not a server port"},
		{"port twice", func(p *Policy) { p.Ports = []uint16{80, 80} }, "ports: 80 is listed twice"},
		{"sixteen ports", func(p *Policy) { p.Ports = []uint16{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16} }, "at most 15 fit in one multiport match"},
		{"no family", func(p *Policy) { p.Families = nil }, "families is empty"},
		{"bad family", func(p *Policy) { p.Families = []Family{5} }, "Family(5) is neither IPv4 nor IPv6"},
		{"family twice", func(p *Policy) { p.Families = []Family{IPv4, IPv4} }, "IPv4 is listed twice"},
		{"invalid prefix", func(p *Policy) { p.ExcludeCIDRs = []netip.Prefix{{}} }, "is not a valid prefix"},
		{"mapped prefix", func(p *Policy) { p.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} }, "IPv4-mapped"},
		{"prefix of an uncovered family", func(p *Policy) {
			p.Families = []Family{IPv4}
			p.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::/8")}
		}, "fd00::/8 is IPv6 but the policy covers only IPv4"},
		{"prefix twice", func(p *Policy) {
			p.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/8")}
		}, "10.0.0.0/8 is listed twice"},
		{"empty interface", func(p *Policy) { p.Interfaces = []string{""} }, "interface names are 1-15 characters"},
		{"long interface", func(p *Policy) { p.Interfaces = []string{"abcdefghijklmnop"} }, "1-15 characters"},
		{"interface with slash", func(p *Policy) { p.Interfaces = []string{"eth/0"} }, "optional trailing '+' wildcard"},
		{"interface with inner plus", func(p *Policy) { p.Interfaces = []string{"e+th"} }, "optional trailing '+' wildcard"},
		{"interface twice", func(p *Policy) { p.Interfaces = []string{"lo", "lo"} }, `"lo" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := validPolicy()
			tc.mod(&p)
			err := p.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("errors.Is(%v, ErrInvalidPolicy) = false", err)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	err := Policy{Name: "x", CopyRange: 128}.Validate()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	// probability, packet cap, families
	if len(ve.Problems) != 3 {
		t.Errorf("got %d problems, want 3: %v", len(ve.Problems), err)
	}
}

func TestNewManagerRefusesInvalidPolicyBeforeRunningIptables(t *testing.T) {
	ran := false
	_, err := NewManager(Policy{Name: "bad"}, Options{LookPath: func(string) (string, error) {
		ran = true
		return "", errors.New("must not be called")
	}})
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("got %v, want ErrInvalidPolicy", err)
	}
	if ran {
		t.Error("NewManager looked for iptables before validating the policy")
	}
}
