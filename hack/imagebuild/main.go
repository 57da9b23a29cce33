// Command imagebuild packs a root file system folder into a container image
// archive (the `docker save` format, which `ctr images import`, `docker
// load`, `podman load` and kind's `kind load image-archive` read), and lists
// such an archive. It is what hack/images.sh uses where no Docker engine and
// no registry can be reached: the folder is assembled by the script (a
// static connscope binary, iptables from Debian packages), this program
// only writes it as one layer with an image configuration.
//
//	imagebuild build --rootfs DIR --ref connscope/connscope:latest --out FILE.tar \
//	    [--entrypoint /usr/local/bin/connscope] [--user 65532:65532] [--env K=V]...
//	imagebuild list FILE.tar
//
// Every file in the layer is owned by root (uid 0, gid 0) whoever owns it
// in DIR, keeps its mode (so /tmp may be 1777), and carries the time of
// SOURCE_DATE_EPOCH (default 0), so the same folder gives the same image
// digest. It does not pull base images, push to registries, or build
// anything from a Dockerfile (the Dockerfile at the repository's root
// builds the same content where a Docker engine exists).
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: imagebuild build|list ... (see the package doc)")
	}
	switch args[0] {
	case "build":
		return buildCmd(args[1:], out)
	case "list":
		if len(args) != 2 {
			return errors.New("usage: imagebuild list FILE.tar")
		}
		return List(args[1], out)
	default:
		return fmt.Errorf("unknown command %q: use build or list", args[0])
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func buildCmd(args []string, out io.Writer) error {
	fl := flag.NewFlagSet("build", flag.ContinueOnError)
	var s Spec
	var env multiFlag
	fl.StringVar(&s.RootFS, "rootfs", "", "folder holding the image's files")
	fl.StringVar(&s.Ref, "ref", "", "image reference, e.g. connscope/connscope:latest")
	fl.StringVar(&s.Out, "out", "", "archive to write")
	entrypoint := fl.String("entrypoint", "", "entrypoint (one path; arguments come from the pod)")
	fl.StringVar(&s.User, "user", "", "default user, UID[:GID]")
	fl.StringVar(&s.WorkingDir, "workdir", "/", "working directory")
	fl.Var(&env, "env", "environment variable K=V (repeatable)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fl.Args())
	}
	if *entrypoint != "" {
		s.Entrypoint = []string{*entrypoint}
	}
	s.Env = env
	digest, err := Build(s)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s %s %s\n", s.Ref, s.Out, digest)
	return nil
}

// Spec says what image to write.
type Spec struct {
	RootFS     string
	Ref        string
	Out        string
	Entrypoint []string
	User       string
	WorkingDir string
	Env        []string
}

// Build writes the image and returns its digest (of the manifest).
func Build(s Spec) (v1.Hash, error) {
	if s.RootFS == "" || s.Ref == "" || s.Out == "" {
		return v1.Hash{}, errors.New("--rootfs, --ref and --out are required")
	}
	ref, err := name.NewTag(s.Ref)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("--ref %q: %w", s.Ref, err)
	}
	if st, err := os.Stat(s.RootFS); err != nil || !st.IsDir() {
		return v1.Hash{}, fmt.Errorf("--rootfs %q: not a folder", s.RootFS)
	}
	if s.User != "" {
		if err := checkUser(s.User); err != nil {
			return v1.Hash{}, err
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return v1.Hash{}, fmt.Errorf("--env %q: write KEY=VALUE", e)
		}
	}
	epoch := time.Unix(0, 0).UTC()
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", v)
		}
		epoch = time.Unix(n, 0).UTC()
	}
	layerTar, err := TarFolder(s.RootFS, epoch)
	if err != nil {
		return v1.Hash{}, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = runtime.GOARCH
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.User = s.User
	cf.Config.WorkingDir = s.WorkingDir
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.Env...)
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.source": "https://github.com/connscope/connscope",
		"org.opencontainers.image.title":  ref.Context().RepositoryStr(),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := os.MkdirAll(filepath.Dir(s.Out), 0o755); err != nil {
		return v1.Hash{}, err
	}
	// A temporary file of its own, renamed at the end: two builds writing
	// the same archive at once each leave a whole one.
	f, err := os.CreateTemp(filepath.Dir(s.Out), filepath.Base(s.Out)+".*.tmp")
	if err != nil {
		return v1.Hash{}, err
	}
	tmp := f.Name()
	err = tarball.Write(ref, img, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err != nil {
		os.Remove(tmp)
		return v1.Hash{}, fmt.Errorf("writing %s: %w", s.Out, err)
	}
	if err := os.Rename(tmp, s.Out); err != nil {
		os.Remove(tmp)
		return v1.Hash{}, err
	}
	return img.Digest()
}

func checkUser(u string) error {
	a, b, hasGroup := strings.Cut(u, ":")
	if _, err := strconv.ParseUint(a, 10, 32); err != nil {
		return fmt.Errorf("--user %q: write a numeric UID[:GID] (Kubernetes' runAsNonRoot cannot check a name)", u)
	}
	if hasGroup {
		if _, err := strconv.ParseUint(b, 10, 32); err != nil {
			return fmt.Errorf("--user %q: the group must be numeric too", u)
		}
	}
	return nil
}

// TarFolder writes dir as an uncompressed tar stream in a fixed order:
// folders, regular files and symbolic links, owned by root, with the given
// time. Anything else (devices, sockets, hard links counted twice) is
// refused with its path, so nothing the image needs is lost silently.
func TarFolder(dir string, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		st, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		h := &tar.Header{
			Name:    rel,
			Mode:    int64(st.Mode().Perm()),
			ModTime: mtime,
			Uid:     0, Gid: 0, Uname: "root", Gname: "root",
			Format: tar.FormatPAX,
		}
		if st.Mode()&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if st.Mode()&fs.ModeSetuid != 0 || st.Mode()&fs.ModeSetgid != 0 {
			return nil, fmt.Errorf("%s: set-user-ID or set-group-ID file; the images carry none", p)
		}
		var body []byte
		switch {
		case st.IsDir():
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case st.Mode()&fs.ModeSymlink != 0:
			h.Typeflag = tar.TypeSymlink
			if h.Linkname, err = os.Readlink(p); err != nil {
				return nil, err
			}
		case st.Mode().IsRegular():
			h.Typeflag = tar.TypeReg
			if body, err = os.ReadFile(p); err != nil {
				return nil, err
			}
			h.Size = int64(len(body))
		default:
			return nil, fmt.Errorf("%s: %v is neither a folder, a file nor a symbolic link", p, st.Mode().Type())
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// List prints an archive the way `crane manifest`, `crane config` and
// `crane export | tar tv` would: each image's tags, digest, platform,
// entrypoint and user, then every layer's digest, size and files.
func List(path string, out io.Writer) error {
	imgs, err := Read(path)
	if err != nil {
		return err
	}
	for _, im := range imgs {
		fmt.Fprintf(out, "image %s\n  digest %s\n  platform %s/%s\n  entrypoint %q\n  user %q\n  env %q\n",
			strings.Join(im.Tags, ","), im.Digest, im.Config.OS, im.Config.Architecture,
			im.Config.Config.Entrypoint, im.Config.Config.User, im.Config.Config.Env)
		for _, l := range im.Layers {
			fmt.Fprintf(out, "  layer %s (%d bytes compressed, %d entries)\n", l.Digest, l.Size, len(l.Entries))
			for _, e := range l.Entries {
				fmt.Fprintf(out, "    %s\n", e)
			}
		}
	}
	return nil
}

// Image is what Read finds in an archive.
type Image struct {
	Tags   []string
	Digest v1.Hash
	Config *v1.ConfigFile
	Layers []Layer
}

// Layer is one layer of an Image.
type Layer struct {
	Digest  v1.Hash
	Size    int64
	Entries []string // "MODE UID:GID PATH[ -> TARGET]"
}

// Read opens every image of a `docker save` archive and reads its layers,
// checking their digests against the manifest (go-containerregistry
// verifies the compressed stream while it is read).
func Read(path string) ([]Image, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var res []Image
	for _, desc := range m {
		if len(desc.RepoTags) == 0 {
			return nil, fmt.Errorf("%s: an image without a tag (ctr would import it without a name)", path)
		}
		tag, err := name.NewTag(desc.RepoTags[0])
		if err != nil {
			return nil, err
		}
		img, err := tarball.Image(opener, &tag)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		im := Image{Tags: desc.RepoTags, Digest: d, Config: cf}
		layers, err := img.Layers()
		if err != nil {
			return nil, err
		}
		if len(layers) != len(cf.RootFS.DiffIDs) {
			return nil, fmt.Errorf("%s: %d layers but %d diff IDs in the configuration", path, len(layers), len(cf.RootFS.DiffIDs))
		}
		for i, l := range layers {
			ld, err := l.Digest()
			if err != nil {
				return nil, err
			}
			size, err := l.Size()
			if err != nil {
				return nil, err
			}
			diffID, err := l.DiffID()
			if err != nil {
				return nil, err
			}
			if diffID != cf.RootFS.DiffIDs[i] {
				return nil, fmt.Errorf("%s: layer %d diff ID %s, configuration says %s", path, i, diffID, cf.RootFS.DiffIDs[i])
			}
			rc, err := l.Uncompressed()
			if err != nil {
				return nil, err
			}
			entries, err := tarEntries(rc)
			rc.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: layer %s: %w", path, ld, err)
			}
			// Reading the compressed stream to its end checks its digest.
			crc, err := l.Compressed()
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(io.Discard, crc)
			crc.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: layer %s: %w", path, ld, err)
			}
			im.Layers = append(im.Layers, Layer{Digest: ld, Size: size, Entries: entries})
		}
		res = append(res, im)
	}
	return res, nil
}

func tarEntries(r io.Reader) ([]string, error) {
	tr := tar.NewReader(r)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		kind := "-"
		switch h.Typeflag {
		case tar.TypeDir:
			kind = "d"
		case tar.TypeSymlink:
			kind = "l"
		}
		e := fmt.Sprintf("%s%04o %d:%d /%s", kind, h.Mode, h.Uid, h.Gid, strings.TrimSuffix(h.Name, "/"))
		if h.Typeflag == tar.TypeSymlink {
			e += " -> " + h.Linkname
		}
		out = append(out, e)
	}
}
