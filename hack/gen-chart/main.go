// Command gen-chart writes the generated files of charts/connscope from
// their sources, so that the chart never drifts from the operator:
//
//   - files/crds/*.yaml: copies of config/crd/bases/*.yaml (controller-gen's
//     CRDs, from api/);
//   - files/rbac/role.yaml and files/rbac/metrics_reader_role.yaml: copies
//     of config/rbac's (the role is controller-gen's, from the
//     +kubebuilder:rbac markers in controllers/);
//   - README.md: the chart's README with the table of values written from
//     the comments above each key in values.yaml (a key without a comment
//     is refused, so every value is documented).
//
// With --check it writes nothing and fails, naming each file, when any of
// them differs from what it would write (make verify-generated). Run it
// from the repository's root (hack/gen-chart.sh does). It does not render
// or test the chart: charts/connscope_test.go does.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

const chart = "charts/connscope"

func main() {
	check := flag.Bool("check", false, "write nothing; fail if a generated file is stale")
	flag.Parse()
	files, err := Generate(".")
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen-chart:", err)
		os.Exit(1)
	}
	stale, err := Apply(".", files, *check)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen-chart:", err)
		os.Exit(1)
	}
	if *check {
		if len(stale) > 0 {
			fmt.Fprintf(os.Stderr, "gen-chart: generated chart files are stale; run hack/gen-chart.sh and commit:\n  %s\n", strings.Join(stale, "\n  "))
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "gen-chart: generated chart files are up to date")
	}
}

// Generate returns every generated file (path relative to root → content).
func Generate(root string) (map[string][]byte, error) {
	out := map[string][]byte{}
	crds, err := filepath.Glob(filepath.Join(root, "config/crd/bases/*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(crds) == 0 {
		return nil, errors.New("config/crd/bases holds no CRD: run make manifests")
	}
	for _, src := range crds {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		out[filepath.Join(chart, "files/crds", filepath.Base(src))] = b
	}
	for _, name := range []string{"role.yaml", "metrics_reader_role.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "config/rbac", name))
		if err != nil {
			return nil, err
		}
		out[filepath.Join(chart, "files/rbac", name)] = b
	}
	values, err := os.ReadFile(filepath.Join(root, chart, "values.yaml"))
	if err != nil {
		return nil, err
	}
	table, err := ValuesTable(values)
	if err != nil {
		return nil, fmt.Errorf("%s/values.yaml: %w", chart, err)
	}
	out[filepath.Join(chart, "README.md")] = []byte(readmeHead + table + readmeTail)
	return out, nil
}

// Apply writes files (or, with check, only compares them) and removes
// files in the generated folders that Generate did not produce. It returns
// the paths that differed.
func Apply(root string, files map[string][]byte, check bool) ([]string, error) {
	var stale []string
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(root, p)
		cur, err := os.ReadFile(full)
		if err == nil && bytes.Equal(cur, files[p]) {
			continue
		}
		stale = append(stale, p)
		if check {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(full, files[p], 0o644); err != nil {
			return nil, err
		}
	}
	for _, dir := range []string{"files/crds", "files/rbac"} {
		entries, err := os.ReadDir(filepath.Join(root, chart, dir))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, e := range entries {
			p := filepath.Join(chart, dir, e.Name())
			if _, ok := files[p]; ok {
				continue
			}
			stale = append(stale, p+" (not generated any more)")
			if !check {
				if err := os.Remove(filepath.Join(root, p)); err != nil {
					return nil, err
				}
			}
		}
	}
	return stale, nil
}

// ValuesTable renders the Markdown table of values: one row per documented
// key (dotted path, default, the comment above it). A mapping without a
// comment of its own is a section: its keys are listed instead.
func ValuesTable(values []byte) (string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(values, &doc); err != nil {
		return "", err
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return "", errors.New("not a mapping")
	}
	var b strings.Builder
	b.WriteString("| Key | Default | Description |\n|---|---|---|\n")
	if err := rows(&b, "", doc.Content[0]); err != nil {
		return "", err
	}
	return b.String(), nil
}

func rows(b *strings.Builder, prefix string, m *yaml.Node) error {
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		comment := cleanComment(k.HeadComment)
		if comment == "" {
			if v.Kind == yaml.MappingNode && len(v.Content) > 0 {
				if err := rows(b, path, v); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("line %d: %s has no comment; write one above it (it becomes the README's description)", k.Line, path)
		}
		def, err := defaultOf(v)
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", k.Line, path, err)
		}
		fmt.Fprintf(b, "| `%s` | `%s` | %s |\n", path, strings.ReplaceAll(def, "|", `\|`), strings.ReplaceAll(comment, "|", `\|`))
	}
	return nil
}

// cleanComment joins a head comment's lines into one sentence.
func cleanComment(c string) string {
	var parts []string
	for _, line := range strings.Split(c, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		if line != "" {
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, " ")
}

func defaultOf(v *yaml.Node) (string, error) {
	if v.Kind == yaml.ScalarNode {
		if v.Tag == "!!str" && v.Value == "" {
			return `""`, nil
		}
		if v.Tag == "!!str" && v.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			return `"` + v.Value + `"`, nil
		}
		return v.Value, nil
	}
	var x any
	if err := v.Decode(&x); err != nil {
		return "", err
	}
	j, err := json.Marshal(x)
	if err != nil {
		return "", err
	}
	return string(j), nil
}

const readmeHead = `<!-- Generated by hack/gen-chart.sh from values.yaml: edit the comments there. -->
# connscope Helm chart

Installs connscope's operator: the ` + "`SamplingPolicy`" + ` CRD (generated from the Go
types; kept on uninstall unless ` + "`crds.keep=false`" + `), the controller Deployment,
its RBAC (the role generated from the controller's markers), and the
namespaces ` + "`connscope-system`" + ` (pod security ` + "`restricted`" + `: the controller and the
classifiers) and ` + "`connscope-agents`" + ` (` + "`privileged`" + `: the node agents). Optionally a
ServiceMonitor and PodMonitors, a PrometheusRule with alerts, and a Grafana
dashboard ConfigMap. Nothing is sampled until you create a SamplingPolicy.

` + "```sh" + `
helm install connscope charts/connscope --namespace default
kubectl apply -f config/samples/sampling_v1alpha1_samplingpolicy.yaml
kubectl get samplingpolicies -o wide
` + "```" + `

The chart's objects live in the two namespaces it creates, whatever the
release's namespace (which only holds helm's release record): do not pass
` + "`--create-namespace`" + ` with ` + "`--namespace connscope-system`" + `, or helm cannot create that
namespace with its labels. ` + "`values.schema.json`" + ` rejects unknown keys, so a typo
fails at install time. The repository's README covers kustomize, Argo CD,
Flux, health, the dashboard and the security model.

## Values

`

const readmeTail = `
Before ` + "`helm uninstall`" + `, delete the SamplingPolicies (` + "`kubectl delete samplingpolicies --all`" + `)
so that the controller removes the agents and their iptables rules.
`
