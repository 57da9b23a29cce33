// Package v1alpha1 holds the SamplingPolicy API of connscope, group
// sampling.connscope.dev, version v1alpha1: the types with their
// kubebuilder markers (validation, defaults, printer columns) and the
// generated deep-copy functions. It holds no logic; the controller in
// controllers/ acts on these objects.
//
// +kubebuilder:object:generate=true
// +groupName=sampling.connscope.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of these objects.
	GroupVersion = schema.GroupVersion{Group: "sampling.connscope.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
