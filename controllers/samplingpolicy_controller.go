package controllers

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// The controller's permissions: each verb is one its code (or
// controller-runtime's cache and leader election) uses;
// TestControllerRBACGrantsOnlyWhatItsCodeUses checks the generated roles
// against this list, and TestControllerRunsWithOnlyItsGeneratedRBAC runs
// the controller with nothing more. get is kept wherever list is granted:
// it reads nothing that list does not.
//
// SamplingPolicies (cluster-scoped): list and watch for the cache; patch
// for the finalizer (merge patches; nothing updates, creates or deletes a
// policy); the status only with patch (writeStatus); finalizers/update is
// what the OwnerReferencesPermissionEnforcement admission plugin asks of
// whoever sets blockOwnerDeletion on a child owned by a policy.
//
// +kubebuilder:rbac:groups=sampling.connscope.dev,resources=samplingpolicies,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=sampling.connscope.dev,resources=samplingpolicies/status,verbs=patch
// +kubebuilder:rbac:groups=sampling.connscope.dev,resources=samplingpolicies/finalizers,verbs=update
//
// Events about policies (events.k8s.io, create, and patch for a repeated
// event's series): client-go's events recorder writes a cluster-scoped
// object's events in namespace default, so they cannot go to the
// controller's own namespaces; a Role in default would need a RoleBinding
// there that neither config/rbac nor the chart makes, hence this
// cluster-wide rule.
//
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
//
// The children only in the two namespaces the controller manages: get,
// list and watch (the cache), create and patch (server-side apply), and
// delete of the agent DaemonSet alone (a deleted policy's agents go
// first; the garbage collector removes the rest). Agent pods are only
// read (list, from the API server, on deletion).
//
// +kubebuilder:rbac:groups=apps,namespace=connscope-agents,resources=daemonsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",namespace=connscope-agents,resources=configmaps;serviceaccounts,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",namespace=connscope-agents,resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,namespace=connscope-system,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",namespace=connscope-system,resources=services;serviceaccounts;persistentvolumeclaims,verbs=get;list;watch;create;patch
//
// Nodes (cluster-scoped): get only, from the API server, to tell whether
// a deleted policy's agent pod still has a kubelet to stop it.
//
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get
//
// Leader election (--leader-elect) in connscope-system: its Lease lock
// gets, creates and updates (renews and, on exit, releases) one Lease,
// and records its leadership changes as core events about that Lease.
//
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=connscope-system,resources=leases,verbs=get;create;update
// +kubebuilder:rbac:groups="",namespace=connscope-system,resources=events,verbs=create;patch
//
// Of Secrets it touches only the policies' ingest tokens, and only in
// those two namespaces (namespaced Roles, nothing cluster-wide): get,
// create and update, and no delete (the garbage collector removes them
// with their policy). It reads them with the API reader, never through a
// cache; list and watch serve only a metadata-only watch of connscope's
// Secrets (label app.kubernetes.io/name=connscope, see CacheOptions), so
// that a deleted token is put back at once. list and watch give it no
// Secret it could not already read with get. It cannot be narrowed by
// name: RBAC cannot restrict create, list or watch with resourceNames
// (the object's name is not known when create is authorised), and the
// token Secrets' names (connscope-<policy>-ingest) are per policy, while
// resourceNames takes only exact names, no prefixes. Other Secrets (the
// ClickHouse credentials) reach the classifier's pods from the kubelet,
// never through the controller.
//
// +kubebuilder:rbac:groups="",namespace=connscope-agents,resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",namespace=connscope-system,resources=secrets,verbs=get;list;watch;create;update
//
// The metrics endpoint's authentication and authorisation (--metrics-secure).
//
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// SamplingPolicyReconciler rolls out a SamplingPolicy's agents and
// classifier and reports their state on the policy.
type SamplingPolicyReconciler struct {
	// Client reads from the manager's cache and writes to the API server.
	Client client.Client
	// APIReader reads the API server directly, where a stale cache would
	// do harm (are the agent pods gone?).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Options   Options

	alloc *allocator
	// wake re-queues the policies that wait for a label bit or group
	// when a deleted policy releases its own.
	wake chan event.GenericEvent
}

// NewSamplingPolicyReconciler returns a reconciler for a manager.
func NewSamplingPolicyReconciler(mgr ctrl.Manager, opts Options) *SamplingPolicyReconciler {
	return &SamplingPolicyReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Scheme:    mgr.GetScheme(),
		Recorder:  mgr.GetEventRecorder("connscope-controller"),
		Options:   opts,
	}
}

// SetupWithManager registers the controller: it watches the policies, the
// children it owns (the ingest token Secrets by their metadata only: a
// deleted one is recreated at once, and no token is kept in the cache),
// and the agent pods (to see them go on deletion).
func (r *SamplingPolicyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.alloc == nil {
		r.alloc = newAllocator(r.Options.LabelBits, r.Options.NFLOGGroups)
	}
	r.wake = make(chan event.GenericEvent, 64)
	return ctrl.NewControllerManagedBy(mgr).
		For(&samplingv1alpha1.SamplingPolicy{}).
		Owns(&appsv1.DaemonSet{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(agentPodToPolicy)).
		WatchesRawSource(source.Channel(r.wake, &handler.EnqueueRequestForObject{})).
		Named("samplingpolicy").
		Complete(r)
}

// agentPodToPolicy maps an agent pod to its policy.
func agentPodToPolicy(_ context.Context, o client.Object) []reconcile.Request {
	l := o.GetLabels()
	if l[LabelComponent] != ComponentAgent || l[LabelPolicy] == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: l[LabelPolicy]}}}
}

// Reconcile brings one policy's children to what its spec asks and its
// status to what the children show.
func (r *SamplingPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	var p samplingv1alpha1.SamplingPolicy
	if err := r.Client.Get(ctx, req.NamespacedName, &p); err != nil {
		if apierrors.IsNotFound(err) {
			forgetConditions(req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !p.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &p)
	}
	if !controllerutil.ContainsFinalizer(&p, samplingv1alpha1.Finalizer) {
		patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(&p, samplingv1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, &p, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}

	// status.observedGeneration moves only together with conditions
	// computed for this generation (setConditions sets both): a reconcile
	// that stops before it judges the children leaves both as they were.
	before := p.DeepCopy()
	defer func() {
		if perr := r.writeStatus(ctx, before, &p); perr != nil && err == nil {
			err = perr
		}
	}()

	// Phase 1: the label bit and NFLOG group.
	var all samplingv1alpha1.SamplingPolicyList
	if err := r.Client.List(ctx, &all); err != nil {
		return ctrl.Result{}, fmt.Errorf("list policies: %w", err)
	}
	alloc, err := r.alloc.Assign(&p, all.Items)
	if err != nil {
		var ex *ErrExhausted
		if !errors.As(err, &ex) {
			return ctrl.Result{}, err
		}
		reason := ReasonLabelBitExhausted
		if ex.What != "label bit" {
			reason = ReasonGroupExhausted
		}
		r.degrade(&p, reason, err.Error())
		// Another policy's deletion frees one: look again now and then.
		return ctrl.Result{RequeueAfter: time.Minute}, nil
	}
	if before.Status.LabelBit == nil || *before.Status.LabelBit != alloc.LabelBit ||
		before.Status.NFLOGGroup == nil || *before.Status.NFLOGGroup != alloc.NFLOGGroup {
		r.Recorder.Eventf(&p, nil, corev1.EventTypeNormal, "Allocated", "Allocate",
			"conntrack label bit %d and NFLOG group %d", alloc.LabelBit, alloc.NFLOGGroup)
	}
	p.Status.LabelBit = &alloc.LabelBit
	p.Status.NFLOGGroup = &alloc.NFLOGGroup
	p.Status.IngestEndpoint = AgentSink(r.Options, &p)
	p.Status.ClassifierEndpoint = ClassifierEndpoint(r.Options, p.Name)

	// Phase 2: the children, classifier first so that the agents find
	// their sink.
	if err := checkCredentialsSecret(&p); err != nil {
		r.degrade(&p, ReasonInvalidSettings, err.Error())
		return ctrl.Result{}, nil
	}
	cfg, err := AgentConfig(&p, alloc, r.Options)
	if err != nil {
		r.degrade(&p, ReasonInvalidSettings, "the agent would refuse these settings: "+err.Error())
		return ctrl.Result{}, nil
	}
	cm, hash, err := AgentConfigMap(&p, cfg, r.Options)
	if err != nil {
		r.degrade(&p, ReasonInvalidSettings, err.Error())
		return ctrl.Result{}, nil
	}
	token, err := r.ensureIngestSecrets(ctx, &p)
	if err != nil {
		r.degrade(&p, ReasonApplyFailed, err.Error())
		return ctrl.Result{}, err
	}
	children := []client.Object{ClassifierServiceAccount(&p, r.Options)}
	if pvc := ClassifierVolumeClaim(&p, r.Options); pvc != nil {
		children = append(children, pvc)
	}
	children = append(children,
		ClassifierDeployment(&p, IngestTokenHash(token), r.Options),
		ClassifierService(&p, r.Options),
		AgentServiceAccount(&p, r.Options),
		cm,
		AgentDaemonSet(&p, alloc, hash, r.Options),
	)
	// The DaemonSet and Deployment are kept as the API server returned
	// them from the apply: phase 3 judges them, never the cache, which
	// right after a spec change may still hold the previous objects, whose
	// status shows the previous rollout complete.
	var ds *appsv1.DaemonSet
	var dep *appsv1.Deployment
	for _, obj := range children {
		got, err := r.apply(ctx, obj)
		if err != nil {
			msg := fmt.Sprintf("cannot write %s %s/%s: %v", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetNamespace(), obj.GetName(), err)
			r.degrade(&p, ReasonApplyFailed, msg)
			return ctrl.Result{}, errors.New(msg)
		}
		switch obj.(type) {
		case *appsv1.DaemonSet:
			ds = &appsv1.DaemonSet{}
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, ds)
		case *appsv1.Deployment:
			dep = &appsv1.Deployment{}
			err = runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, dep)
		}
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("read back %s %s/%s: %w", got.GetKind(), got.GetNamespace(), got.GetName(), err)
		}
	}

	// Phase 3: status from the children as just applied.
	if ds != nil {
		p.Status.Nodes = samplingv1alpha1.NodeCounts{
			Desired: ds.Status.DesiredNumberScheduled,
			Ready:   ds.Status.NumberReady,
			Updated: ds.Status.UpdatedNumberScheduled,
		}
	}
	h := childHealth(ds, dep)
	if agentsPending(ds) {
		problems, err := r.agentPodProblems(ctx, &p)
		if err != nil {
			return ctrl.Result{}, err
		}
		h.failingAgents(problems, r.Options.AgentNamespace)
	}
	setConditions(&p.Status, p.Generation, h)
	return ctrl.Result{}, nil
}

// agentPodProblems lists, from the cache, the policy's agent pods that
// cannot run and why (podProblem), ordered by node. A pod's changes
// reach the policy through the Pod watch, so the conditions follow them.
func (r *SamplingPolicyReconciler) agentPodProblems(ctx context.Context, p *samplingv1alpha1.SamplingPolicy) ([]string, error) {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(r.Options.AgentNamespace),
		client.MatchingLabels{LabelPolicy: p.Name, LabelComponent: ComponentAgent}); err != nil {
		return nil, fmt.Errorf("list agent pods: %w", err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int {
		return strings.Compare(a.Spec.NodeName+"/"+a.Name, b.Spec.NodeName+"/"+b.Name)
	})
	var problems []string
	for i := range pods.Items {
		if msg := podProblem(&pods.Items[i]); msg != "" {
			problems = append(problems, msg)
		}
	}
	return problems, nil
}

// degrade marks the policy Degraded (and not Ready) for reason.
func (r *SamplingPolicyReconciler) degrade(p *samplingv1alpha1.SamplingPolicy, reason, msg string) {
	setConditions(&p.Status, p.Generation, health{
		readyReason: reason, readyMsg: msg,
		degraded: true, degrReason: reason, degrMsg: msg,
	})
}

// writeStatus writes the status when it changed, and emits an event for
// each condition that changed its status or reason.
func (r *SamplingPolicyReconciler) writeStatus(ctx context.Context, before, p *samplingv1alpha1.SamplingPolicy) error {
	recordConditions(p) // also when unchanged: a restarted controller starts with no series
	if equality.Semantic.DeepEqual(before.Status, p.Status) {
		return nil
	}
	for _, c := range p.Status.Conditions {
		old := meta.FindStatusCondition(before.Status.Conditions, c.Type)
		if old != nil && old.Status == c.Status && old.Reason == c.Reason {
			continue
		}
		if old == nil && c.Status == metav1.ConditionFalse && c.Type != samplingv1alpha1.ConditionReady {
			continue // a first "not degraded" or "not progressing" says nothing
		}
		typ := corev1.EventTypeNormal
		if (c.Type == samplingv1alpha1.ConditionDegraded && c.Status == metav1.ConditionTrue) ||
			(c.Type == samplingv1alpha1.ConditionReady && c.Status == metav1.ConditionFalse && old != nil && old.Status == metav1.ConditionTrue) {
			typ = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(p, nil, typ, c.Reason, "Reconcile", "%s=%s: %s", c.Type, c.Status, c.Message)
	}
	if err := r.Client.Status().Patch(ctx, p, client.MergeFrom(before)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

// finalize removes the agents first and keeps the policy until their pods
// are gone: each agent removes its iptables rules when it receives
// SIGTERM, within its termination grace period. Then the finalizer goes
// and the garbage collector removes the other children.
//
// An agent pod whose node cannot run that cleanup does not hold the
// policy forever: once the pod's deletion grace period is over and its
// node no longer exists or is not Ready (NotReady or Unknown: no kubelet
// reports), the pod counts as gone (see agentPodsToWaitFor). Such a node
// keeps the policy's rules until it comes back (its kubelet then stops
// the agent, which removes them) or reboots (rules are not persistent);
// an agent that a new policy starts there with the same label bit or
// NFLOG group removes them at its start.
func (r *SamplingPolicyReconciler) finalize(ctx context.Context, p *samplingv1alpha1.SamplingPolicy) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(p, samplingv1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	logger := log.FromContext(ctx)
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: r.Options.AgentNamespace, Name: AgentName(p.Name)}}
	err := r.Client.Delete(ctx, ds, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("delete agent DaemonSet: %w", err)
	}
	if err == nil {
		logger.Info("deleted the agent DaemonSet; waiting for its pods to remove their rules")
	}
	var pods corev1.PodList
	if err := r.APIReader.List(ctx, &pods, client.InNamespace(r.Options.AgentNamespace),
		client.MatchingLabels{LabelPolicy: p.Name, LabelComponent: ComponentAgent}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list agent pods: %w", err)
	}
	waiting, lost, err := r.agentPodsToWaitFor(ctx, pods.Items, time.Now())
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(waiting) > 0 {
		before := p.DeepCopy()
		msg := fmt.Sprintf("waiting for %d agent pod(s) to stop and remove their iptables rules, on node(s) %s",
			len(waiting), strings.Join(podNodes(waiting), ", "))
		setConditions(&p.Status, p.Generation, health{
			readyReason: ReasonDeleting, readyMsg: msg,
			progressing: true, progReason: ReasonDeleting, progMsg: msg,
		})
		if err := r.writeStatus(ctx, before, p); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	if len(lost) > 0 {
		nodes := strings.Join(podNodes(lost), ", ")
		logger.Info("agent pods on lost nodes counted as gone", "nodes", nodes)
		r.Recorder.Eventf(p, nil, corev1.EventTypeWarning, "AgentsOnLostNodes", "Delete",
			"agent pod(s) on node(s) %s not confirmed stopped: the node is gone or not Ready and the pod's grace period is over; "+
				"such a node keeps this policy's iptables rules until it comes back (its agent then removes them) or until "+
				"`connscope agent cleanup --policy %s` runs there", nodes, p.Name)
	}
	r.Recorder.Eventf(p, nil, corev1.EventTypeNormal, "AgentsRemoved", "Delete",
		"every agent has stopped and removed its rules; releasing label bit and NFLOG group")
	r.alloc.Release(p.UID)
	r.wakeWaiting(ctx, p)
	patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(p, samplingv1alpha1.Finalizer)
	if err := r.Client.Patch(ctx, p, patch); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("remove finalizer: %w", err)
	}
	forgetConditions(p.Name)
	return ctrl.Result{}, nil
}

// agentPodsToWaitFor splits a deleted policy's agent pods into those its
// deletion waits for and those on lost nodes. A pod is lost when its
// deletion's grace period is over (its deletionTimestamp has passed) and
// no kubelet can still stop it: it was never scheduled, or its node no
// longer exists, or the node's Ready condition is not True (False or
// Unknown). Every other pod may still run an agent that removes its
// rules when stopped, so the deletion waits for it. Nodes are read from
// the API server, not a cache.
func (r *SamplingPolicyReconciler) agentPodsToWaitFor(ctx context.Context, pods []corev1.Pod, now time.Time) (waiting, lost []corev1.Pod, err error) {
	nodeLost := map[string]bool{}
	for _, pod := range pods {
		if pod.DeletionTimestamp == nil || now.Before(pod.DeletionTimestamp.Time) {
			waiting = append(waiting, pod)
			continue
		}
		name := pod.Spec.NodeName
		gone, seen := nodeLost[name]
		if !seen {
			gone = true
			if name != "" {
				var node corev1.Node
				err := r.APIReader.Get(ctx, client.ObjectKey{Name: name}, &node)
				switch {
				case apierrors.IsNotFound(err):
				case err != nil:
					return nil, nil, fmt.Errorf("read node %s of agent pod %s: %w", name, pod.Name, err)
				default:
					c := nodeCondition(node.Status.Conditions, corev1.NodeReady)
					gone = c == nil || c.Status != corev1.ConditionTrue
				}
			}
			nodeLost[name] = gone
		}
		if gone {
			lost = append(lost, pod)
		} else {
			waiting = append(waiting, pod)
		}
	}
	return waiting, lost, nil
}

func nodeCondition(cs []corev1.NodeCondition, typ corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}

// podNodes names the pods' nodes, sorted, each once ("(not scheduled)"
// for a pod without one), the first 20 and then how many more: a
// condition's message holds at most 32 KiB.
func podNodes(pods []corev1.Pod) []string {
	var nodes []string
	for _, pod := range pods {
		n := pod.Spec.NodeName
		if n == "" {
			n = "(not scheduled)"
		}
		if !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	slices.Sort(nodes)
	const maxNodes = 20
	if len(nodes) > maxNodes {
		nodes = append(nodes[:maxNodes], fmt.Sprintf("and %d more", len(nodes)-maxNodes))
	}
	return nodes
}

// wakeWaiting re-queues every policy that holds no label bit or group
// yet, now that p's are free.
func (r *SamplingPolicyReconciler) wakeWaiting(ctx context.Context, p *samplingv1alpha1.SamplingPolicy) {
	var all samplingv1alpha1.SamplingPolicyList
	if err := r.Client.List(ctx, &all); err != nil {
		return // they look again within a minute anyway
	}
	for i := range all.Items {
		q := &all.Items[i]
		if q.UID == p.UID || (q.Status.LabelBit != nil && q.Status.NFLOGGroup != nil) {
			continue
		}
		select {
		case r.wake <- event.GenericEvent{Object: q}:
		default:
		}
	}
}

// ensureIngestSecrets returns the policy's ingest token, making sure that
// its Secrets exist and hold it and the policy's ingest certificates
// (ingest_tls.go): the ingest Secret in the classifiers' namespace (token,
// serving certificate and key, which the classifier mounts), the one in
// the agents' namespace (token and CA certificate, which the agents
// mount), and the CA Secret in the classifiers' namespace (CA certificate
// and key, which no pod mounts, so that no kubelet may read the CA's
// key). The token is the one already stored (the classifier's copy first:
// the running classifier read it at start), so it survives reconciles and
// controller restarts; a new one is generated only when neither ingest
// Secret holds one. The certificates are those stored while they are
// good, and are issued again when they are missing, do not fit, or are
// about to expire. The Secrets are read from the API server (the cache
// holds only their metadata) and written with create and update (no
// server-side apply: its patch would need the patch verb, and the data
// must never be overwritten by a rebuilt object).
func (r *SamplingPolicyReconciler) ensureIngestSecrets(ctx context.Context, p *samplingv1alpha1.SamplingPolicy) (string, error) {
	type secretRef struct{ ns, name string }
	// The CA Secret first: were a later write to fail, the CA's key that
	// signed what was written is already kept.
	refs := []secretRef{
		{r.Options.ClassifierNamespace, IngestCAName(p.Name)},
		{r.Options.ClassifierNamespace, IngestTokenName(p.Name)},
		{r.Options.AgentNamespace, IngestTokenName(p.Name)},
	}
	existing := make([]*corev1.Secret, len(refs))
	token := ""
	for i, ref := range refs {
		s := &corev1.Secret{}
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ref.ns, Name: ref.name}, s)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("cannot read Secret %s/%s: %w", ref.ns, ref.name, err)
		}
		if !metav1.IsControlledBy(s, p) {
			return "", fmt.Errorf("Secret %s/%s exists and does not belong to this policy: delete it or rename the policy", ref.ns, ref.name)
		}
		existing[i] = s
		if t := string(s.Data[IngestTokenKey]); i > 0 && token == "" && validIngestToken(t) {
			token = t
		}
	}
	if token == "" {
		var err error
		if token, err = NewIngestToken(); err != nil {
			return "", err
		}
	}
	var have ingestPKI
	if s := existing[0]; s != nil {
		have.caCert, have.caKey = s.Data[IngestCACertKey], s.Data[IngestCAKeyKey]
	}
	if s := existing[1]; s != nil {
		have.cert, have.key = s.Data[IngestTLSCertKey], s.Data[IngestTLSKeyKey]
	}
	names := ingestDNSNames(r.Options, p.Name)
	pki, issued, err := ensureIngestPKI(have, names, time.Now())
	if err != nil {
		return "", err
	}
	if issued != "" {
		r.Recorder.Eventf(p, nil, corev1.EventTypeNormal, "IngestCertificateIssued", "Issue",
			"ingest %s issued for %s", issued, names[0])
	}
	data := []map[string][]byte{
		{IngestCACertKey: pki.caCert, IngestCAKeyKey: pki.caKey},
		{IngestTokenKey: []byte(token), IngestTLSCertKey: pki.cert, IngestTLSKeyKey: pki.key},
		{IngestTokenKey: []byte(token), IngestCACertKey: pki.caCert},
	}
	for i, ref := range refs {
		want := IngestSecret(p, ref.ns, ref.name, data[i])
		s := existing[i]
		switch {
		case s == nil:
			if err := r.Client.Create(ctx, want, client.FieldOwner(FieldOwner)); err != nil {
				return "", fmt.Errorf("cannot write Secret %s/%s: %w", ref.ns, ref.name, err)
			}
			r.Recorder.Eventf(p, nil, corev1.EventTypeNormal, "IngestSecretCreated", "Create",
				"ingest Secret %s/%s created", ref.ns, ref.name)
		case !reflect.DeepEqual(s.Data, want.Data):
			if i > 0 && string(s.Data[IngestTokenKey]) != token {
				// Only a copy that differs from the other (or was
				// emptied) gets another token, and never silently.
				r.Recorder.Eventf(p, nil, corev1.EventTypeWarning, "IngestTokenRepaired", "Update",
					"ingest token Secret %s/%s held another token or none; set to the policy's token", ref.ns, ref.name)
			}
			s.Data = want.Data
			if err := r.Client.Update(ctx, s, client.FieldOwner(FieldOwner)); err != nil {
				return "", fmt.Errorf("cannot write Secret %s/%s: %w", ref.ns, ref.name, err)
			}
		}
	}
	return token, nil
}

// validIngestToken reports whether t can be a token file's content: the
// classifier requires one non-empty word.
func validIngestToken(t string) bool {
	return t != "" && !strings.ContainsAny(t, " \t\r\n")
}

// apply writes obj with server-side apply under FieldOwner: the API
// server merges it and changes nothing (no write, no new
// resourceVersion) when the object already is as built. It returns the
// object as the API server holds it after the apply, status included.
func (r *SamplingPolicyReconciler) apply(ctx context.Context, obj client.Object) (*unstructured.Unstructured, error) {
	u, err := ToApplyObject(obj)
	if err != nil {
		return nil, err
	}
	// The client decodes the server's answer into u.
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return nil, err
	}
	return u, nil
}

// ToApplyObject turns a built object into what server-side apply gets:
// without status and without the null fields that typed structs carry
// (creationTimestamp), so that the controller owns only what it sets.
func ToApplyObject(obj client.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("convert %T: %w", obj, err)
	}
	delete(m, "status")
	stripNulls(m)
	return &unstructured.Unstructured{Object: m}, nil
}

func stripNulls(m map[string]any) {
	for k, v := range m {
		switch t := v.(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			stripNulls(t)
			if len(t) == 0 && k == "metadata" {
				delete(m, k)
			}
		case []any:
			for _, e := range t {
				if em, ok := e.(map[string]any); ok {
					stripNulls(em)
				}
			}
		}
	}
}
