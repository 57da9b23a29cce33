package rules

import (
	"fmt"
	"strings"
)

// rule is one "-A <chain> <rulespec>" line read back from iptables.
type rule struct {
	Line    string   // as printed
	Chain   string   // the chain it is in
	Spec    []string // the rulespec, unquoted: what -D needs to delete it
	Target  string   // the -j target, or "" without one
	Comment string   // the --comment value, or ""
}

// parseRule reads a line of iptables -S or iptables-save output. It
// returns ok=false for lines that are not rules (-P, -N, '#' comments).
func parseRule(line string) (rule, bool, error) {
	if !strings.HasPrefix(line, "-A ") {
		return rule{}, false, nil
	}
	words, err := splitWords(line)
	if err != nil {
		return rule{}, false, fmt.Errorf("read rule %q: %w", line, err)
	}
	if len(words) < 2 {
		return rule{}, false, fmt.Errorf("read rule %q: no chain", line)
	}
	r := rule{Line: line, Chain: words[1], Spec: words[2:]}
	for i := 0; i+1 < len(r.Spec); i++ {
		switch r.Spec[i] {
		case "-j", "--jump":
			r.Target = r.Spec[i+1]
		case "--comment":
			if r.Comment == "" {
				r.Comment = r.Spec[i+1]
			}
		}
	}
	return r, true, nil
}

// splitWords splits a line as iptables quotes it: words separated by
// spaces, double-quoted words with '\' escaping the next character.
func splitWords(line string) ([]string, error) {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQuote:
			if i+1 == len(line) {
				return nil, fmt.Errorf("trailing backslash")
			}
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case (c == ' ' || c == '\t') && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// snapshot is the mangle table of one backend and family as read from
// iptables -S or iptables-save: the chains in the order listed, and the
// rules of each chain in order.
type snapshot struct {
	Chains []string
	Rules  map[string][]rule
}

// parseListing reads iptables -t mangle -S output ("-P", "-N", "-A" lines).
func parseListing(lines []string) (snapshot, error) {
	s := snapshot{Rules: map[string][]rule{}}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "-P "), strings.HasPrefix(l, "-N "):
			if f := strings.Fields(l); len(f) >= 2 {
				s.Chains = append(s.Chains, f[1])
			}
		case strings.HasPrefix(l, "-A "):
			r, _, err := parseRule(l)
			if err != nil {
				return s, err
			}
			s.Rules[r.Chain] = append(s.Rules[r.Chain], r)
		}
	}
	return s, nil
}

// parseSave reads the mangle table out of iptables-save output. found is
// false when the output has no mangle table (legacy tables exist only
// once something used them).
func parseSave(out string) (s snapshot, found bool, err error) {
	s = snapshot{Rules: map[string][]rule{}}
	in := false
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "*"+table:
			in, found = true, true
		case strings.HasPrefix(l, "*"):
			in = false
		case !in:
		case l == "COMMIT":
			in = false
		case strings.HasPrefix(l, ":"):
			if f := strings.Fields(l[1:]); len(f) >= 1 {
				s.Chains = append(s.Chains, f[0])
			}
		case strings.HasPrefix(l, "-A "):
			r, _, err := parseRule(l)
			if err != nil {
				return s, found, err
			}
			s.Rules[r.Chain] = append(s.Rules[r.Chain], r)
		}
	}
	return s, found, nil
}

// hasChain reports whether the snapshot lists the chain.
func (s snapshot) hasChain(name string) bool {
	for _, c := range s.Chains {
		if c == name {
			return true
		}
	}
	return false
}
