package rules

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

const (
	// table is the only table connscope writes to.
	table = "mangle"
	// hookChain is the built-in chain that jumps to the policy chains.
	hookChain = "PREROUTING"
	// chainPrefix starts the name of every chain connscope creates.
	chainPrefix = "CONNSCOPE-"
	// commentPrefix starts the comment of every rule connscope writes.
	commentPrefix = "connscope "
	// maxChainLen is iptables' limit ("must be under 29 chars").
	maxChainLen = 28
)

// ChainName is the policy's chain: CONNSCOPE-<name id>-<parameter id>, 27
// characters. The name id (8 base32 characters of SHA-256 over the name)
// is shared by every chain the policy name ever had, which is how
// CleanupStale finds chains of an earlier run; the parameter id also
// hashes the label bit and the NFLOG group, so a policy whose bit or group
// changed gets a chain of its own and the two never mix.
func ChainName(p Policy) string {
	return namePrefix(p.Name) + shortID(fmt.Sprintf("%s\x00bit=%d\x00group=%d", p.Name, p.LabelBit, p.NFLOGGroup))
}

// namePrefix is the part of the chain name that depends on the policy
// name only.
func namePrefix(name string) string {
	return chainPrefix + shortID(name) + "-"
}

func shortID(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:8]
}

// policyComment starts the comment of every rule written for the named
// policy. The colon ends the name, so "web" never matches "web2".
func policyComment(name string) string {
	return commentPrefix + "policy " + name + ":"
}

// RuleSet is what one policy installs in one address family: one jump from
// mangle PREROUTING to Chain, and the rules of Chain in order. Each rule is
// a rulespec, the arguments that follow "-A <chain>".
type RuleSet struct {
	Family Family
	Chain  string
	Jump   []string
	Rules  [][]string
}

// Rules renders what the policy installs in family f. The arguments are
// written in the form iptables -S prints them back (--syn spelled out as
// the tcp-flags match, the probability as the kernel's fixed point), so
// that the rules read back compare equal as text. The policy must be
// valid.
func Rules(p Policy, f Family) RuleSet {
	chain := ChainName(p)
	c := policyComment(p.Name)
	rs := RuleSet{
		Family: f,
		Chain:  chain,
		// Only the first PacketCap packets of a connection (in the
		// original direction, the one connbytes counts) can be labelled
		// or logged, so only they jump: the bulk of an established
		// connection passes PREROUTING after one cheap test and never
		// traverses the chain. A SYN that opens a connection is its
		// first packet (conntrack counts it before mangle PREROUTING
		// runs), so labelling still sees every new connection. Packets
		// without conntrack accounting (connections opened before
		// accounting was on) never jump, as they were never logged.
		Jump: []string{"-p", "tcp",
			"-m", "connbytes", "--connbytes", "0:" + strconv.Itoa(p.PacketCap),
			"--connbytes-mode", "packets", "--connbytes-dir", "original",
			"-m", "comment", "--comment", c + " sample new TCP connections",
			"-j", chain},
	}

	for _, cidr := range p.ExcludeCIDRs {
		if prefixFamily(cidr) != f {
			continue
		}
		rs.Rules = append(rs.Rules, []string{"-s", cidr.Masked().String(),
			"-m", "comment", "--comment", c + " never sample excluded clients",
			"-j", "RETURN"})
	}

	label := strconv.Itoa(p.LabelBit)
	ifaces := p.Interfaces
	if len(ifaces) == 0 {
		ifaces = []string{""}
	}
	for _, iface := range ifaces {
		var r []string
		if iface != "" {
			r = append(r, "-i", iface)
		}
		r = append(r, "-p", "tcp")
		if len(p.Ports) > 0 {
			ports := slices.Clone(p.Ports)
			slices.Sort(ports)
			s := make([]string, len(ports))
			for i, port := range ports {
				s[i] = strconv.Itoa(int(port))
			}
			r = append(r, "-m", "multiport", "--dports", strings.Join(s, ","))
		}
		r = append(r,
			"-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN",
			"-m", "conntrack", "--ctstate", "NEW",
			"-m", "statistic", "--mode", "random", "--probability", probabilityText(p.Probability),
			"-m", "connlabel", "--label", label, "--set",
			"-m", "comment", "--comment", c+" label a sample of new TCP connections")
		rs.Rules = append(rs.Rules, r)
	}

	rs.Rules = append(rs.Rules, []string{
		"-m", "connlabel", "--label", label,
		"-m", "conntrack", "--ctdir", "ORIGINAL",
		"-m", "connbytes", "!", "--connbytes", strconv.Itoa(p.PacketCap + 1),
		"--connbytes-mode", "packets", "--connbytes-dir", "original",
		"-m", "comment", "--comment", fmt.Sprintf("%s log the first %d client packets of sampled connections", c, p.PacketCap),
		"-j", "NFLOG", "--nflog-group", strconv.Itoa(int(p.NFLOGGroup)),
		"--nflog-size", strconv.Itoa(int(p.CopyRange))})
	return rs
}

// probabilityText is the probability as libxt_statistic prints it: the
// kernel's 31-bit fixed point with 11 decimals. Parsing it back gives the
// same fixed point.
func probabilityText(p float64) string {
	return strconv.FormatFloat(float64(probabilityFixed(p))/(1<<31), 'f', 11, 64)
}

// ruleLine is a rule as iptables -S and iptables-save print it:
// "-A <chain> <rulespec>", with the values iptables quotes in quotes.
func ruleLine(chain string, spec []string) string {
	var b strings.Builder
	b.WriteString("-A ")
	b.WriteString(chain)
	for i, a := range spec {
		b.WriteByte(' ')
		if i > 0 && (spec[i-1] == "--comment" || spec[i-1] == "--label") {
			b.WriteString(quote(a))
			continue
		}
		b.WriteString(a)
	}
	return b.String()
}

// quote quotes a value as iptables does: in double quotes, with '"' and '\'
// escaped by a backslash.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// Lines are the chain's rules as iptables -S prints them.
func (rs RuleSet) Lines() []string {
	lines := make([]string, len(rs.Rules))
	for i, r := range rs.Rules {
		lines[i] = ruleLine(rs.Chain, r)
	}
	return lines
}

// JumpLine is the jump as iptables -S prints it.
func (rs RuleSet) JumpLine() string { return ruleLine(hookChain, rs.Jump) }

// Restore renders the rule set in iptables-restore format (for a dry run or
// a review): the chain declared, then the jump and the chain's rules.
func (rs RuleSet) Restore() string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n%s\n", table, rs.Chain, rs.JumpLine())
	for _, l := range rs.Lines() {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
