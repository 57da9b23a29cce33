package chstore

// SetBeforeCommit installs a hook that runs after a part's rows are
// written and before its commit; an error from it aborts the part there,
// as a crash would.
func SetBeforeCommit(k *Classifier, f func() error) { k.beforeCommit = f }
