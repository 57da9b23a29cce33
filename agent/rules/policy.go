package rules

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Family is an IP address family: IPv4 rules go to iptables, IPv6 rules to
// ip6tables.
type Family int

// The address families a Policy can cover.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// allFamilies lists the families in the order they are worked on.
var allFamilies = []Family{IPv4, IPv6}

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("Family(%d)", int(f))
}

// Limits of a Policy, exported so that the API types can state the same
// bounds in their validation markers.
const (
	// MaxNameLen keeps every comment under iptables' 255-character limit.
	MaxNameLen = 150
	// MaxPacketCap is the most packets logged per sampled connection.
	MaxPacketCap = 64
	// MaxLabelBit is the highest conntrack label bit (the kernel has 128).
	MaxLabelBit = 127
	// MinCopyRange and MaxCopyRange bound the bytes NFLOG copies per packet:
	// at least an IPv6 header and a bare TCP header, at most enough for every
	// header with options. Payload is never needed.
	MinCopyRange = 60
	MaxCopyRange = 512
	// MaxPorts is what one multiport match holds.
	MaxPorts = 15
	// MaxInterfaces and MaxExcludeCIDRs keep the chain short: every TCP
	// packet that reaches it walks the exclusions, every SYN the interfaces.
	MaxInterfaces   = 16
	MaxExcludeCIDRs = 64
)

// Policy says which new TCP connections to sample and how many of their
// first client packets to log. It is what one agent installs; two policies
// on one node need different names, label bits and NFLOG groups.
type Policy struct {
	// Name of the policy, used in chain names (hashed) and rule comments.
	// Lower-case letters, digits, '-' and '.', as a Kubernetes object name,
	// at most MaxNameLen characters.
	Name string
	// Probability that a new TCP connection is sampled, in (0, 1]. The kernel
	// keeps it as a 31-bit fraction (steps of 2^-31), so values below 2^-32,
	// which round to 0, are refused.
	Probability float64
	// PacketCap is how many packets of each sampled connection, counted in
	// the client's direction from the SYN on, are logged: 1 to MaxPacketCap.
	PacketCap int
	// LabelBit is the conntrack label bit that marks a sampled connection:
	// 0 to MaxLabelBit, one no other software on the node uses.
	LabelBit int
	// NFLOGGroup is the nfnetlink_log group the packets are logged to.
	NFLOGGroup uint16
	// CopyRange is how many bytes of each packet NFLOG copies (headers only,
	// e.g. 128): MinCopyRange to MaxCopyRange.
	CopyRange uint16
	// Ports are the server (destination) ports to sample; empty means all.
	Ports []uint16
	// ExcludeCIDRs are client (source) networks never sampled.
	ExcludeCIDRs []netip.Prefix
	// Interfaces are the input interfaces on which SYNs are sampled; empty
	// means all. A trailing '+' matches every name with that prefix.
	Interfaces []string
	// Families are the address families to sample: IPv4, IPv6 or both.
	Families []Family
}

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)
	interfaceRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]+\+?$`)
)

// Validate reports every problem of the policy at once, each in a sentence
// that names the field, so that nothing reaches netfilter half-checked.
func (p Policy) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}

	switch {
	case p.Name == "":
		bad("name is empty: set a policy name such as \"default\"")
	case len(p.Name) > MaxNameLen:
		bad("name %q is %d characters long: at most %d fit in iptables comments", p.Name, len(p.Name), MaxNameLen)
	case !nameRE.MatchString(p.Name):
		bad("name %q: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", p.Name)
	}

	switch {
	case math.IsNaN(p.Probability) || p.Probability <= 0 || p.Probability > 1:
		bad("probability %v: must be in (0, 1], e.g. 0.0001 to sample one connection in 10,000", p.Probability)
	case probabilityFixed(p.Probability) == 0:
		bad("probability %v is below 2^-32 and rounds to 0 in the kernel's 31-bit fixed point (the least it draws is 2^-31): it would never sample", p.Probability)
	}

	if p.PacketCap < 1 || p.PacketCap > MaxPacketCap {
		bad("packetCap %d: must be 1-%d packets per connection (the seed logs 10)", p.PacketCap, MaxPacketCap)
	}
	if p.LabelBit < 0 || p.LabelBit > MaxLabelBit {
		bad("labelBit %d: conntrack labels have bits 0-%d", p.LabelBit, MaxLabelBit)
	}
	if p.CopyRange < MinCopyRange || p.CopyRange > MaxCopyRange {
		bad("copyRange %d: must be %d-%d bytes, enough for the IP and TCP headers (128 is a good choice); payload is never needed",
			p.CopyRange, MinCopyRange, MaxCopyRange)
	}

	if len(p.Ports) > MaxPorts {
		bad("ports: %d given, at most %d fit in one multiport match", len(p.Ports), MaxPorts)
	}
	seenPort := map[uint16]bool{}
	for _, port := range p.Ports {
		switch {
		case port == 0:
			bad("ports: 0 is not a server port")
		case seenPort[port]:
			bad("ports: %d is listed twice", port)
		}
		seenPort[port] = true
	}

	if len(p.Families) == 0 {
		bad("families is empty: list IPv4, IPv6 or both")
	}
	seenFamily := map[Family]bool{}
	for _, f := range p.Families {
		switch {
		case f != IPv4 && f != IPv6:
			bad("families: %v is neither IPv4 nor IPv6", f)
		case seenFamily[f]:
			bad("families: %v is listed twice", f)
		}
		seenFamily[f] = true
	}

	if len(p.ExcludeCIDRs) > MaxExcludeCIDRs {
		bad("excludeCIDRs: %d given, at most %d", len(p.ExcludeCIDRs), MaxExcludeCIDRs)
	}
	seenCIDR := map[netip.Prefix]bool{}
	for _, c := range p.ExcludeCIDRs {
		switch {
		case !c.IsValid():
			bad("excludeCIDRs: %q is not a valid prefix", c.String())
		case c.Addr().Is4In6():
			bad("excludeCIDRs: %s is an IPv4-mapped IPv6 prefix: write it as an IPv4 prefix", c)
		case c.Addr().Zone() != "":
			bad("excludeCIDRs: %s has a zone, which iptables cannot match", c)
		case !seenFamily[prefixFamily(c)] && len(p.Families) > 0:
			bad("excludeCIDRs: %s is %v but the policy covers only %s", c, prefixFamily(c), familyList(p.Families))
		case seenCIDR[c.Masked()]:
			bad("excludeCIDRs: %s is listed twice", c.Masked())
		}
		if c.IsValid() {
			seenCIDR[c.Masked()] = true
		}
	}

	if len(p.Interfaces) > MaxInterfaces {
		bad("interfaces: %d given, at most %d", len(p.Interfaces), MaxInterfaces)
	}
	seenIf := map[string]bool{}
	for _, name := range p.Interfaces {
		switch {
		case name == "" || len(name) > 15:
			bad("interfaces: %q: interface names are 1-15 characters", name)
		case !interfaceRE.MatchString(name) || name == "." || name == "..":
			bad("interfaces: %q: use letters, digits and _.@- with an optional trailing '+' wildcard", name)
		case seenIf[name]:
			bad("interfaces: %q is listed twice", name)
		}
		seenIf[name] = true
	}

	if len(errs) == 0 {
		return nil
	}
	return &ValidationError{Policy: p.Name, Problems: errs}
}

// ValidationError lists every problem Validate found.
type ValidationError struct {
	Policy   string
	Problems []error
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return fmt.Sprintf("invalid sampling policy %q: %s", e.Policy, strings.Join(msgs, "; "))
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (e *ValidationError) Unwrap() []error { return e.Problems }

// ErrInvalidPolicy is matched by errors.Is for every ValidationError.
var ErrInvalidPolicy = errors.New("invalid sampling policy")

// Is makes errors.Is(err, ErrInvalidPolicy) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidPolicy }

// probabilityFixed is the kernel's fixed-point form of a probability, as
// libxt_statistic computes it: lround(2^31 * p).
func probabilityFixed(p float64) uint32 {
	return uint32(math.Round(p * (1 << 31)))
}

func prefixFamily(c netip.Prefix) Family {
	if c.Addr().Is4() {
		return IPv4
	}
	return IPv6
}

func familyList(fs []Family) string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.String()
	}
	return strings.Join(names, " and ")
}

// hasFamily reports whether the policy covers f.
func (p Policy) hasFamily(f Family) bool { return slices.Contains(p.Families, f) }
