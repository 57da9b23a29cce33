package main

import (
	"crypto/tls"
	goflag "flag"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/connscope/connscope/agent/rules"
	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
	"github.com/connscope/connscope/controllers"
)

func newControllerCommand() *cobra.Command {
	opts := controllers.DefaultOptions()
	var (
		metricsAddr, probeAddr, leaderNS string
		labelBits, nflogGroups           string
		leaderElect, metricsSecure       bool
		zapOpts                          = zap.Options{}
	)
	cmd := &cobra.Command{
		Use:   "controller [flags]",
		Short: "Run the SamplingPolicy controller (the operator) in a cluster",
		Long: `controller watches SamplingPolicy objects (sampling.connscope.dev/v1alpha1) and,
for each, runs the node agents as a DaemonSet in --agent-namespace (which must
allow privileged pods: the agents use the host's network and NET_ADMIN) and the
classifier as a Deployment and Service in --classifier-namespace. It gives each
policy a conntrack label bit from --label-bits and an NFLOG group from
--nflog-groups that no other policy holds, and reports the rollout in the
policy's status (Ready, Progressing, Degraded).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if opts.AgentNamespace == opts.ClassifierNamespace {
				return fmt.Errorf("--agent-namespace and --classifier-namespace are both %q: they must differ (the agents' namespace allows privileged pods and gets no key; the classifiers' holds the ingest keys)", opts.AgentNamespace)
			}
			if opts.LabelBits, err = controllers.ParseRange(labelBits, 0, rules.MaxLabelBit); err != nil {
				return fmt.Errorf("--label-bits %w", err)
			}
			if opts.NFLOGGroups, err = controllers.ParseRange(nflogGroups, 0, 65535); err != nil {
				return fmt.Errorf("--nflog-groups %w", err)
			}
			if top := int(opts.AgentMetricsPort) + opts.NFLOGGroups.Size() - 1; opts.AgentMetricsPort < 1 || top > 65535 {
				return fmt.Errorf("--agent-metrics-port %d: the agents use ports %d-%d, which must lie within 1-65535", opts.AgentMetricsPort, opts.AgentMetricsPort, top)
			}
			if leaderNS == "" {
				leaderNS = opts.ClassifierNamespace
			}
			ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
			return runController(cmd, opts, metricsAddr, metricsSecure, probeAddr, leaderElect, leaderNS)
		},
	}
	f := cmd.Flags()
	f.StringVar(&metricsAddr, "metrics-bind-address", ":8443", `address of /metrics; "0" turns it off`)
	f.BoolVar(&metricsSecure, "metrics-secure", true, "serve /metrics over HTTPS to callers authorised by TokenReview and SubjectAccessReview")
	f.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	f.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas acts")
	f.StringVar(&leaderNS, "leader-election-namespace", "", "namespace of the leader election Lease (default: --classifier-namespace)")
	f.StringVar(&opts.AgentNamespace, "agent-namespace", opts.AgentNamespace, "namespace of the agents (privileged pod security)")
	f.StringVar(&opts.ClassifierNamespace, "classifier-namespace", opts.ClassifierNamespace, "namespace of the classifiers (restricted pod security)")
	f.StringVar(&opts.Image, "image", opts.Image, "connscope image of agents and classifiers unless a policy overrides it")
	f.StringVar(&labelBits, "label-bits", opts.LabelBits.String(), "conntrack label bits given to policies, FIRST-LAST, unused by other software on the nodes")
	f.StringVar(&nflogGroups, "nflog-groups", opts.NFLOGGroups.String(), "NFLOG groups given to policies, FIRST-LAST, unused by other readers on the nodes")
	gofs := goflag.NewFlagSet("zap", goflag.ContinueOnError)
	zapOpts.BindFlags(gofs)
	f.AddGoFlagSet(gofs)
	f.Int32Var(&opts.AgentMetricsPort, "agent-metrics-port", opts.AgentMetricsPort, "host port of the first policy's agents' /metrics; the next policies use the following ports")
	return cmd
}

func runController(cmd *cobra.Command, opts controllers.Options, metricsAddr string, metricsSecure bool, probeAddr string, leaderElect bool, leaderNS string) error {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := samplingv1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	metricsOpts := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: metricsSecure,
		// HTTP/2 is off, as kubebuilder scaffolds it (CVE-2023-44487).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("no cluster to talk to: %w (set KUBECONFIG or run in a pod)", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "connscope-controller.sampling.connscope.dev",
		LeaderElectionNamespace: leaderNS,
		// The process exits right after it loses the lease, so a new
		// leader need not wait for the lease to expire.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(opts),
	})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}
	if err := controllers.NewSamplingPolicyReconciler(mgr, opts).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("SamplingPolicy controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}
