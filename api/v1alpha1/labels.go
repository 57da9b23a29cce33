package v1alpha1

// DeepCopyInto copies the labels into out.
func (in NodeLabels) DeepCopyInto(out *NodeLabels) {
	*out = make(NodeLabels, len(in))
	for k, v := range in {
		(*out)[k] = v
	}
}

// DeepCopy returns a copy of the labels, nil for nil.
func (in NodeLabels) DeepCopy() NodeLabels {
	if in == nil {
		return nil
	}
	out := new(NodeLabels)
	in.DeepCopyInto(out)
	return *out
}
