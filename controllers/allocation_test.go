package controllers

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	samplingv1alpha1 "github.com/connscope/connscope/api/v1alpha1"
)

func pol(name string, age int, bit, group *int32) samplingv1alpha1.SamplingPolicy {
	return samplingv1alpha1.SamplingPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, UID: types.UID("uid-" + name),
			CreationTimestamp: metav1.NewTime(time.Unix(1_700_000_000, 0).Add(-time.Duration(age) * time.Hour)),
		},
		Status: samplingv1alpha1.SamplingPolicyStatus{LabelBit: bit, NFLOGGroup: group},
	}
}

func TestAllocatorGivesLowestFreeAndKeepsWhatAPolicyHolds(t *testing.T) {
	a := newAllocator(Range{16, 19}, Range{1000, 1003})
	all := []samplingv1alpha1.SamplingPolicy{
		pol("old", 3, ptr.To[int32](16), ptr.To[int32](1002)),
		pol("mid", 2, ptr.To[int32](18), ptr.To[int32](1000)),
		pol("new", 1, nil, nil),
	}
	for _, tc := range []struct {
		i    int
		want Allocation
	}{
		{0, Allocation{16, 1002}}, // held: kept (as after a restart)
		{1, Allocation{18, 1000}},
		{2, Allocation{17, 1001}}, // lowest free of each
	} {
		got, err := a.Assign(&all[tc.i], all)
		if err != nil || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v", all[tc.i].Name, got, err, tc.want)
		}
	}
	// What this process gave "new" counts before its status shows it.
	late := pol("late", 0, nil, nil)
	got, _ := a.Assign(&late, append(all, late))
	if got != (Allocation{19, 1003}) {
		t.Errorf("late: %+v", got)
	}
}

func TestAllocatorDisputeGoesToTheOlderPolicy(t *testing.T) {
	a := newAllocator(Range{16, 19}, Range{1000, 1003})
	// Both claim bit 16 and group 1000 in status (a restored backup).
	all := []samplingv1alpha1.SamplingPolicy{
		pol("younger", 1, ptr.To[int32](16), ptr.To[int32](1000)),
		pol("elder", 5, ptr.To[int32](16), ptr.To[int32](1000)),
	}
	y, _ := a.Assign(&all[0], all)
	e, _ := a.Assign(&all[1], all)
	if e != (Allocation{16, 1000}) || y == e || y.LabelBit == 16 || y.NFLOGGroup == 1000 {
		t.Errorf("elder %+v, younger %+v", e, y)
	}
}

func TestAllocatorMovesAValueOutsideTheRange(t *testing.T) {
	a := newAllocator(Range{16, 17}, Range{1000, 1001})
	all := []samplingv1alpha1.SamplingPolicy{pol("p", 1, ptr.To[int32](3), ptr.To[int32](5))}
	got, err := a.Assign(&all[0], all)
	if err != nil || got != (Allocation{16, 1000}) {
		t.Errorf("got %+v, %v", got, err)
	}
}

func TestAllocatorExhaustedAndReleased(t *testing.T) {
	a := newAllocator(Range{16, 16}, Range{1000, 1001})
	first, second := pol("first", 2, nil, nil), pol("second", 1, nil, nil)
	all := []samplingv1alpha1.SamplingPolicy{first, second}
	if _, err := a.Assign(&all[0], all); err != nil {
		t.Fatal(err)
	}
	_, err := a.Assign(&all[1], all)
	var ex *ErrExhausted
	if !errors.As(err, &ex) || ex.What != "label bit" {
		t.Fatalf("got %v, want the label bits exhausted", err)
	}
	if want := "every label bit of 16-16 is held by another SamplingPolicy: delete a policy or widen the controller's range"; err.Error() != want {
		t.Errorf("message %q", err.Error())
	}
	// first is deleted and released: second gets its values.
	a.Release(first.UID)
	got, err := a.Assign(&all[1], all[1:])
	if err != nil || got != (Allocation{16, 1000}) {
		t.Errorf("after release: %+v, %v", got, err)
	}
}
