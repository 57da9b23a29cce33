package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// policyCondition mirrors each SamplingPolicy's conditions on the
// controller's /metrics, as kube-state-metrics does for built-in kinds: 1
// for the status a condition has, 0 for the other two, so that an alert
// can say "policy X not Ready for 10 minutes" without joining the agents'
// metrics. A deleted policy's series go with its finalizer.
var policyCondition = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "connscope_samplingpolicy_condition",
	Help: "A SamplingPolicy's status conditions: 1 for the status each condition (Ready, Progressing, Degraded) has, 0 for the others.",
}, []string{"policy", "condition", "status"})

func init() { metrics.Registry.MustRegister(policyCondition) }

var conditionStatuses = []string{"True", "False", "Unknown"}

// recordConditions sets the gauge from p's status.
func recordConditions(p *samplingv1alpha1.SamplingPolicy) {
	for _, c := range p.Status.Conditions {
		for _, s := range conditionStatuses {
			v := 0.0
			if string(c.Status) == s {
				v = 1
			}
			policyCondition.WithLabelValues(p.Name, c.Type, s).Set(v)
		}
	}
}

// forgetConditions removes the series of a policy that is gone.
func forgetConditions(name string) {
	policyCondition.DeletePartialMatch(prometheus.Labels{"policy": name})
}
