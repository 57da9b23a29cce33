package controllers

import (
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

// ErrExhausted is returned when every label bit or NFLOG group of the
// controller's ranges is held by another policy.
type ErrExhausted struct {
	What  string // "label bit" or "NFLOG group"
	Range Range
}

func (e *ErrExhausted) Error() string {
	return fmt.Sprintf("every %s of %s is held by another SamplingPolicy: delete a policy or widen the controller's range", e.What, e.Range)
}

// allocator hands out label bits and NFLOG groups, one of each per policy,
// never the same to two policies.
//
// The truth is the policies' status (labelBit, nflogGroup), so that a
// restarted controller gives every policy what it had. Because the cache
// may not yet show a status just written, the allocator also remembers
// what it handed out in this process, and that wins over a policy's
// status. When two policies' status claim the same value (say, after a
// restore from backup), the older policy keeps it and the other gets
// another.
type allocator struct {
	bits, groups Range

	mu    sync.Mutex
	given map[types.UID]Allocation
}

func newAllocator(bits, groups Range) *allocator {
	return &allocator{bits: bits, groups: groups, given: map[types.UID]Allocation{}}
}

// holding is what a policy holds: what this process gave it, else its
// status.
func (a *allocator) holding(p *samplingv1alpha1.SamplingPolicy) (bit, group *int32) {
	if g, ok := a.given[p.UID]; ok {
		return &g.LabelBit, &g.NFLOGGroup
	}
	return p.Status.LabelBit, p.Status.NFLOGGroup
}

// older orders policies by creation, then name: the older keeps a
// disputed value.
func older(a, b *samplingv1alpha1.SamplingPolicy) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// Assign returns p's label bit and NFLOG group, keeping what it holds when
// it may, else the lowest free values. all lists every policy (p may be in
// it). A policy being deleted keeps its values until it is released: its
// agents still run.
func (a *allocator) Assign(p *samplingv1alpha1.SamplingPolicy, all []samplingv1alpha1.SamplingPolicy) (Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()

	bitsTaken := map[int32]*samplingv1alpha1.SamplingPolicy{}
	groupsTaken := map[int32]*samplingv1alpha1.SamplingPolicy{}
	for i := range all {
		q := &all[i]
		if q.UID == p.UID {
			continue
		}
		bit, group := a.holding(q)
		if bit != nil {
			if o, ok := bitsTaken[*bit]; !ok || older(q, o) {
				bitsTaken[*bit] = q
			}
		}
		if group != nil {
			if o, ok := groupsTaken[*group]; !ok || older(q, o) {
				groupsTaken[*group] = q
			}
		}
	}
	myBit, myGroup := a.holding(p)
	bit, err := pick(myBit, a.bits, bitsTaken, p, "label bit")
	if err != nil {
		return Allocation{}, err
	}
	group, err := pick(myGroup, a.groups, groupsTaken, p, "NFLOG group")
	if err != nil {
		return Allocation{}, err
	}
	got := Allocation{LabelBit: bit, NFLOGGroup: group}
	a.given[p.UID] = got
	return got, nil
}

// pick keeps held when it is in range and no older policy holds it, else
// returns the lowest free value.
func pick(held *int32, r Range, taken map[int32]*samplingv1alpha1.SamplingPolicy, p *samplingv1alpha1.SamplingPolicy, what string) (int32, error) {
	if held != nil && r.Contains(*held) {
		if o, ok := taken[*held]; !ok || older(p, o) {
			return *held, nil
		}
	}
	for v := r.Min; v <= r.Max; v++ {
		if _, ok := taken[v]; !ok {
			return v, nil
		}
	}
	return 0, &ErrExhausted{What: what, Range: r}
}

// Release forgets what a policy was given, once its agents are gone.
func (a *allocator) Release(uid types.UID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.given, uid)
}
