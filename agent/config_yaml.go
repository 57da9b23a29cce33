package agent

// The agent's configuration file in YAML.
//
// No YAML module is available to this project (only what go.mod already
// requires may be used), and the agent's configuration is flat: a mapping
// of setting names to scalars and lists of scalars. So the file is read
// with the small subset of YAML such a file needs, and anything beyond it
// is refused with the line number rather than misread:
//
//	# comments, on their own line or after a value
//	---                          # optional document start (and ... at the end)
//	policy: web                  # plain scalars
//	sink: "grpc://classifier:9443"   # double-quoted (Go/JSON escapes)
//	nodeName: 'node-1'           # single-quoted ('' is a quote)
//	ports: [80, 443]             # flow sequences of scalars
//	ipFamilies:                  # block sequences of scalars
//	  - IPv4
//	  - IPv6
//	excludeCIDRs: []
//
// Nested mappings, anchors and aliases, tags, block scalars (| and >),
// multi-line scalars and several documents are refused. A JSON document is
// also accepted (ParseConfig reads it with encoding/json), which is what
// the controller writes into the ConfigMap.
//
// Each value is converted to JSON by the type of the Config field its key
// names (a plain 0.5 is a number for probability, the text "web" a string
// for policy), so that one strict JSON decoding checks both formats.

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// fieldTypes maps each JSON key of Config to its field's type; fileKeys
// are the keys in the order of the fields.
var fieldTypes, fileKeys = func() (map[string]reflect.Type, []string) {
	m := map[string]reflect.Type{}
	var keys []string
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			m[name] = f.Type
			keys = append(keys, name)
		}
	}
	return m, keys
}()

// unknownKey explains a key that is not a setting: a near miss in letter
// case is named, and the valid keys are listed.
func unknownKey(key string) string {
	for _, k := range fileKeys {
		if strings.EqualFold(k, key) {
			return fmt.Sprintf("unknown key %q: did you mean %s? (keys are case-sensitive)", key, k)
		}
	}
	return fmt.Sprintf("unknown key %q: the keys are %s (README, `connscope agent`)", key, strings.Join(fileKeys, ", "))
}

var durationType = reflect.TypeFor[Duration]()

// yamlScalar is one scalar as written: its text, whether it was quoted.
type yamlScalar struct {
	text   string
	quoted bool
	line   int
}

func (s yamlScalar) isNull() bool {
	if s.quoted {
		return false
	}
	switch s.text {
	case "", "~", "null", "Null", "NULL":
		return true
	}
	return false
}

// yamlToJSON reads the flat YAML subset described above and writes the
// equivalent JSON object.
func yamlToJSON(b []byte) ([]byte, error) {
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	out := map[string]json.RawMessage{}
	seen := map[string]int{}
	started, ended := false, false
	for i := 0; i < len(lines); i++ {
		n := i + 1
		raw := lines[i]
		if strings.HasPrefix(strings.TrimLeft(raw, " "), "\t") || strings.HasPrefix(raw, "\t") {
			return nil, fmt.Errorf("line %d: tabs cannot indent YAML; use spaces", n)
		}
		line := stripComment(raw)
		if strings.TrimSpace(line) == "" {
			continue
		}
		switch strings.TrimRight(line, " ") {
		case "---":
			if started || len(out) > 0 {
				return nil, fmt.Errorf("line %d: a second YAML document: the file must hold one", n)
			}
			started = true
			continue
		case "...":
			ended = true
			continue
		}
		if ended {
			return nil, fmt.Errorf("line %d: text after the end of the document (...)", n)
		}
		if line[0] == ' ' {
			return nil, fmt.Errorf("line %d: unexpected indentation: nested mappings are not supported, only key: value lines and lists", n)
		}
		key, rest, ok := strings.Cut(line, ":")
		if !ok || (rest != "" && rest[0] != ' ') {
			return nil, fmt.Errorf("line %d: expected key: value", n)
		}
		key = strings.TrimSpace(key)
		if !isPlainKey(key) {
			return nil, fmt.Errorf("line %d: key %q: keys are plain words such as packetCap", n, key)
		}
		typ, known := fieldTypes[key]
		if !known {
			return nil, fmt.Errorf("line %d: %s", n, unknownKey(key))
		}
		if first, dup := seen[key]; dup {
			return nil, fmt.Errorf("line %d: key %s given twice (first on line %d)", n, key, first)
		}
		seen[key] = n
		rest = strings.TrimSpace(rest)

		var value []byte
		var err error
		switch {
		case rest == "":
			// A block sequence may follow, at any indentation.
			var items []yamlScalar
			for i+1 < len(lines) {
				next := stripComment(lines[i+1])
				t := strings.TrimLeft(next, " ")
				if t == "" {
					i++
					continue
				}
				if t != "-" && !strings.HasPrefix(t, "- ") {
					break
				}
				i++
				s, err := parseScalar(strings.TrimSpace(strings.TrimPrefix(t, "-")), i+1)
				if err != nil {
					return nil, err
				}
				items = append(items, s)
			}
			if items == nil {
				value, err = scalarJSON(key, typ, yamlScalar{line: n})
			} else {
				value, err = listJSON(key, typ, items, n)
			}
		case rest[0] == '[':
			items, perr := parseFlowSeq(rest, n)
			if perr != nil {
				return nil, perr
			}
			value, err = listJSON(key, typ, items, n)
		default:
			s, perr := parseScalar(rest, n)
			if perr != nil {
				return nil, perr
			}
			if typ.Kind() == reflect.Slice && !s.isNull() {
				value, err = listJSON(key, typ, []yamlScalar{s}, n) // a one-item list written as a scalar
			} else {
				value, err = scalarJSON(key, typ, s)
			}
		}
		if err != nil {
			return nil, err
		}
		out[key] = value
	}
	return json.Marshal(out)
}

func isPlainKey(k string) bool {
	if k == "" {
		return false
	}
	for _, ch := range k {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-') {
			return false
		}
	}
	return true
}

// stripComment cuts a comment: '#' at the start or after a space, outside
// quotes.
func stripComment(line string) string {
	var quote byte
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quote == '"' && ch == '\\':
			i++
		case quote != 0:
			if ch == quote {
				quote = 0
			}
		case ch == '"' || ch == '\'':
			if i == 0 || line[i-1] == ' ' || line[i-1] == '[' || line[i-1] == ',' || line[i-1] == ':' || line[i-1] == '-' {
				quote = ch
			}
		case ch == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return strings.TrimRight(line[:i], " \t")
		}
	}
	return strings.TrimRight(line, " \t")
}

// parseScalar reads one plain or quoted scalar, the whole of s.
func parseScalar(s string, line int) (yamlScalar, error) {
	if s == "" {
		return yamlScalar{line: line}, nil
	}
	switch s[0] {
	case '"':
		end := closingQuote(s, '"')
		if end < 0 {
			return yamlScalar{}, fmt.Errorf("line %d: unterminated double-quoted string (multi-line strings are not supported)", line)
		}
		if rest := strings.TrimSpace(s[end+1:]); rest != "" {
			return yamlScalar{}, fmt.Errorf("line %d: unexpected %q after the quoted string", line, rest)
		}
		text, err := strconv.Unquote(s[:end+1])
		if err != nil {
			return yamlScalar{}, fmt.Errorf("line %d: bad escape in %s", line, s[:end+1])
		}
		return yamlScalar{text: text, quoted: true, line: line}, nil
	case '\'':
		end := closingQuote(s, '\'')
		if end < 0 {
			return yamlScalar{}, fmt.Errorf("line %d: unterminated single-quoted string (multi-line strings are not supported)", line)
		}
		if rest := strings.TrimSpace(s[end+1:]); rest != "" {
			return yamlScalar{}, fmt.Errorf("line %d: unexpected %q after the quoted string", line, rest)
		}
		return yamlScalar{text: strings.ReplaceAll(s[1:end], "''", "'"), quoted: true, line: line}, nil
	case '&', '*', '!', '|', '>', '%', '@', '`', '{', '[', ']', '}':
		return yamlScalar{}, fmt.Errorf("line %d: %q: anchors, aliases, tags, block scalars and nested collections are not supported; write a plain or quoted value", line, s)
	}
	if strings.Contains(s, ": ") {
		return yamlScalar{}, fmt.Errorf("line %d: %q: nested mappings are not supported; quote the value if it holds \": \"", line, s)
	}
	return yamlScalar{text: s, line: line}, nil
}

// closingQuote returns the index of the quote that ends the string that
// s starts, or -1.
func closingQuote(s string, q byte) int {
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case s[i] == q:
			if q == '\'' && i+1 < len(s) && s[i+1] == '\'' {
				i++ // '' inside single quotes
				continue
			}
			return i
		}
	}
	return -1
}

// parseFlowSeq reads [a, "b", 'c'] whole.
func parseFlowSeq(s string, line int) ([]yamlScalar, error) {
	if !strings.HasSuffix(s, "]") {
		return nil, fmt.Errorf("line %d: a [ list must close with ] on the same line", line)
	}
	body := strings.TrimSpace(s[1 : len(s)-1])
	items := []yamlScalar{}
	for body != "" {
		var item string
		switch body[0] {
		case '"', '\'':
			end := closingQuote(body, body[0])
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated quoted string in list", line)
			}
			item, body = body[:end+1], strings.TrimSpace(body[end+1:])
			if body != "" {
				if body[0] != ',' {
					return nil, fmt.Errorf("line %d: expected , after %s", line, item)
				}
				body = strings.TrimSpace(body[1:])
			}
		default:
			i := strings.IndexByte(body, ',')
			if i < 0 {
				item, body = strings.TrimSpace(body), ""
			} else {
				item, body = strings.TrimSpace(body[:i]), strings.TrimSpace(body[i+1:])
			}
			if item == "" {
				return nil, fmt.Errorf("line %d: empty item in list", line)
			}
		}
		sc, err := parseScalar(item, line)
		if err != nil {
			return nil, err
		}
		items = append(items, sc)
	}
	return items, nil
}

func listJSON(key string, typ reflect.Type, items []yamlScalar, line int) ([]byte, error) {
	if typ.Kind() != reflect.Slice {
		return nil, fmt.Errorf("line %d: %s takes one value, not a list", line, key)
	}
	vals := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		v, err := scalarJSON(key, typ.Elem(), it)
		if err != nil {
			return nil, err
		}
		vals = append(vals, v)
	}
	return json.Marshal(vals)
}

// scalarJSON writes a scalar as the JSON value the field's type reads.
func scalarJSON(key string, typ reflect.Type, s yamlScalar) ([]byte, error) {
	if s.isNull() {
		return []byte("null"), nil
	}
	if typ == durationType {
		if _, err := time.ParseDuration(s.text); err != nil {
			return nil, fmt.Errorf("line %d: %s: %q is not a duration such as 10s or 1m30s", s.line, key, s.text)
		}
		return json.Marshal(s.text)
	}
	switch typ.Kind() {
	case reflect.String:
		return json.Marshal(s.text)
	case reflect.Int, reflect.Int64, reflect.Float64:
		if s.quoted {
			return nil, fmt.Errorf("line %d: %s is a number; write it without quotes", s.line, key)
		}
		if typ.Kind() == reflect.Float64 {
			f, err := strconv.ParseFloat(s.text, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %q is not a number", s.line, key, s.text)
			}
			return json.Marshal(f)
		}
		v, err := strconv.ParseInt(s.text, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %q is not a whole number", s.line, key, s.text)
		}
		return json.Marshal(v)
	case reflect.Slice:
		return nil, fmt.Errorf("line %d: %s takes a list", s.line, key)
	}
	return nil, fmt.Errorf("line %d: %s: unsupported setting type %s", s.line, key, typ)
}
