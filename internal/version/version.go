// Package version names the connscope release this source tree is: the tag
// of the image that the controller runs by default (controllers.DefaultImage,
// config/manager) and the Helm chart's appVersion, which tests keep equal to
// it. It holds no build metadata (commit, date): a binary built from a
// modified tree still says the release it was modified from.
package version

// Version is the release, a semantic version without a leading v: never a
// moving tag such as latest, so that an upgrade to a new release names a new
// image that nodes pull.
const Version = "0.1.0"
