package main

import (
	"archive/tar"
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestBuildAndRead packs a small folder and reads the archive back: one
// layer whose digest matches the manifest, files owned by root with their
// modes, the sticky bit kept, symbolic links as links, the configuration's
// platform, entrypoint and user.
func TestBuildAndRead(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "usr/bin/tool"), []byte("#!/bin/true\n"), 0o755))
	must(t, os.Symlink("tool", filepath.Join(root, "usr/bin/alias")))
	must(t, os.Mkdir(filepath.Join(root, "tmp"), 0o755))
	must(t, os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky))
	out := filepath.Join(t.TempDir(), "img.tar")

	d1, err := Build(Spec{RootFS: root, Ref: "connscope/test:v1", Out: out, Entrypoint: []string{"/usr/bin/tool"}, User: "65532:65532", Env: []string{"A=b"}})
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := Read(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		t.Fatalf("%d images, want 1", len(imgs))
	}
	im := imgs[0]
	if im.Digest != d1 {
		t.Errorf("digest read %s, written %s", im.Digest, d1)
	}
	if got := strings.Join(im.Tags, ","); got != "connscope/test:v1" {
		t.Errorf("tags %q", got)
	}
	c := im.Config
	if c.OS != "linux" || c.Architecture == "" || c.Config.User != "65532:65532" || len(c.Config.Entrypoint) != 1 || c.Config.Entrypoint[0] != "/usr/bin/tool" {
		t.Errorf("config: os %q arch %q user %q entrypoint %q", c.OS, c.Architecture, c.Config.User, c.Config.Entrypoint)
	}
	if !contains(c.Config.Env, "A=b") || !strings.HasPrefix(c.Config.Env[0], "PATH=") {
		t.Errorf("env %q", c.Config.Env)
	}
	if len(im.Layers) != 1 {
		t.Fatalf("%d layers", len(im.Layers))
	}
	want := []string{
		"d1777 0:0 /tmp",
		"d0755 0:0 /usr",
		"d0755 0:0 /usr/bin",
		"l0777 0:0 /usr/bin/alias -> tool",
		"-0755 0:0 /usr/bin/tool",
	}
	if got := strings.Join(im.Layers[0].Entries, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("entries:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}

	// The same folder gives the same digest.
	out2 := filepath.Join(t.TempDir(), "img.tar")
	d2, err := Build(Spec{RootFS: root, Ref: "connscope/test:v1", Out: out2, Entrypoint: []string{"/usr/bin/tool"}, User: "65532:65532", Env: []string{"A=b"}})
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("two builds of one folder: %s and %s", d1, d2)
	}
}

// TestBuildRefusesBadInput: each mistake is named.
func TestBuildRefusesBadInput(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(t.TempDir(), "x.tar")
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Ref: "a/b:c", Out: out}, "--rootfs, --ref and --out are required"},
		{Spec{RootFS: root, Ref: "UPPER/case:x", Out: out}, `--ref "UPPER/case:x"`},
		{Spec{RootFS: filepath.Join(root, "nope"), Ref: "a/b:c", Out: out}, "not a folder"},
		{Spec{RootFS: root, Ref: "a/b:c", Out: out, User: "nonroot"}, "numeric UID"},
		{Spec{RootFS: root, Ref: "a/b:c", Out: out, Env: []string{"novalue"}}, "KEY=VALUE"},
	} {
		_, err := Build(tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.spec, err, tc.want)
		}
	}
	if _, err := Read(filepath.Join(root, "missing.tar")); err == nil {
		t.Error("reading a missing archive: no error")
	}
}

// TestImages checks the archives hack/images.sh wrote, when
// CONNSCOPE_IMAGES_DIR names their folder (make test sets it after
// `make images`): the listing holds the static connscope binary, both
// iptables backends with their links, the users; as root, the layer is
// unpacked and run in a network namespace of its own (unshare, chroot):
// each backend installs the agent's kind of rules (statistic, connlabel,
// connbytes, NFLOG) and lists them back, connscope runs, and the pause
// binary exits 0 on SIGTERM.
func TestImages(t *testing.T) {
	dir := os.Getenv("CONNSCOPE_IMAGES_DIR")
	if dir == "" {
		if os.Getenv("CONNSCOPE_REQUIRE_IMAGES") == "1" {
			t.Fatal("CONNSCOPE_REQUIRE_IMAGES=1 but CONNSCOPE_IMAGES_DIR is not set (run hack/images.sh)")
		}
		t.Skip("CONNSCOPE_IMAGES_DIR not set: run hack/images.sh and point it at .cache/images")
	}
	tag := os.Getenv("CONNSCOPE_IMAGES_TAG")
	if tag == "" {
		tag = "latest"
	}
	main := filepath.Join(dir, "connscope-"+tag+".tar")
	pause := filepath.Join(dir, "pause-"+tag+".tar")

	imgs, err := Read(main)
	if err != nil {
		t.Fatal(err)
	}
	im := imgs[0]
	if im.Tags[0] != "connscope/connscope:"+tag || im.Config.Config.User != "65532:65532" || im.Config.Config.Entrypoint[0] != "/usr/local/bin/connscope" {
		t.Errorf("connscope image: tags %q user %q entrypoint %q", im.Tags, im.Config.Config.User, im.Config.Config.Entrypoint)
	}
	entries := strings.Join(im.Layers[0].Entries, "\n") + "\n"
	for _, want := range []string{
		"-0755 0:0 /usr/local/bin/connscope\n",
		"-0755 0:0 /usr/sbin/xtables-nft-multi\n",
		"-0755 0:0 /usr/sbin/xtables-legacy-multi\n",
		"/usr/sbin/iptables -> xtables-nft-multi\n",
		"/usr/sbin/ip6tables-restore -> xtables-nft-multi\n",
		"/usr/sbin/iptables-nft-save -> xtables-nft-multi\n",
		"/usr/sbin/iptables-legacy -> xtables-legacy-multi\n",
		"/usr/sbin/ip6tables-legacy-save -> xtables-legacy-multi\n",
		"/usr/sbin/iptables-legacy-restore -> xtables-legacy-multi\n",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_connlabel.so\n",
		"/usr/lib/x86_64-linux-gnu/xtables/libxt_NFLOG.so\n",
		"d1777 0:0 /tmp\n",
		"/etc/passwd\n",
	} {
		if !strings.Contains(entries, want) {
			t.Errorf("connscope image lacks %q", strings.TrimSpace(want))
		}
	}
	pimgs, err := Read(pause)
	if err != nil {
		t.Fatal(err)
	}
	if p := pimgs[0]; p.Tags[0] != "connscope/pause:"+tag || p.Config.Config.Entrypoint[0] != "/pause" || len(p.Layers[0].Entries) != 1 {
		t.Errorf("pause image: tags %q entrypoint %q entries %q", p.Tags, p.Config.Config.Entrypoint, p.Layers[0].Entries)
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the images' programs are not run")
		return
	}
	for _, tool := range []string{"unshare", "chroot", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
	}
	rootfs := unpack(t, main)
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
	if err != nil || !strings.Contains(string(passwd), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd: %v %q", err, passwd)
	}
	// Each backend in a fresh network namespace (unshare --net, so the
	// rules die with it): the host's sh runs the image's programs through
	// chroot, restoring the agent's kind of rules and saving them back.
	rules := "*mangle\n:CONNSCOPE-TEST - [0:0]\n" +
		"-A PREROUTING -p tcp -j CONNSCOPE-TEST\n" +
		"-A CONNSCOPE-TEST -p tcp -m multiport --dports 80,443 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m statistic --mode random --probability 0.0001 -m connlabel --label 3 --set\n" +
		"-A CONNSCOPE-TEST -m connlabel --label 3 -m conntrack --ctdir ORIGINAL -m connbytes ! --connbytes 11 --connbytes-mode packets --connbytes-dir original -j NFLOG --nflog-group 5 --nflog-size 128\n" +
		"COMMIT\n"
	for _, fam := range []string{"iptables", "ip6tables"} {
		for _, backend := range []string{"", "-nft", "-legacy"} {
			bin := fam + backend
			cmd := exec.Command("unshare", "--net", "--", "sh", "-ec",
				`chroot "$1" "/usr/sbin/$2-restore" --noflush; chroot "$1" "/usr/sbin/$2-save" -t mangle; chroot "$1" "/usr/sbin/$2" -V`,
				"sh", rootfs, bin)
			cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
			cmd.Stdin = strings.NewReader(rules)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("%s in the image: %v\n%s", bin, err, out)
				continue
			}
			wantMode := "(nf_tables)"
			if backend == "-legacy" {
				wantMode = "(legacy)"
			}
			for _, want := range []string{"--probability 0.0000999", "--connbytes-dir original", "--nflog-group 5", wantMode} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s in the image: output lacks %q:\n%s", bin, want, out)
				}
			}
		}
	}
	inImage := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("chroot", append([]string{rootfs}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := inImage("/usr/local/bin/connscope", "--help")
	if !strings.Contains(out, "controller") || !strings.Contains(out, "agent") {
		t.Errorf("connscope --help in the image:\n%s", out)
	}

	prootfs := unpack(t, pause)
	cmd := exec.Command("chroot", prootfs, "/pause")
	stderr, err := cmd.StderrPipe()
	must(t, err)
	must(t, cmd.Start())
	// It says so once its handler is installed; before that, SIGTERM
	// would end it by the default action and prove nothing.
	r := bufio.NewReader(stderr)
	line, err := r.ReadString('\n')
	if err != nil || !strings.Contains(line, "waiting") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("pause's first line %q: %v", line, err)
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	rest, _ := io.ReadAll(r)
	if err := cmd.Wait(); err != nil {
		t.Errorf("pause after SIGTERM: %v (%s)", err, rest)
	}
}

// unpack writes an archive's single layer into a new folder.
func unpack(t *testing.T, archive string) string {
	t.Helper()
	opener := func() (io.ReadCloser, error) { return os.Open(archive) }
	img, err := tarball.Image(opener, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, filepath.FromSlash(h.Name))
			if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
				t.Fatalf("%s: entry %q leaves the folder", archive, h.Name)
			}
			switch h.Typeflag {
			case tar.TypeDir:
				must(t, os.MkdirAll(p, 0o755))
				must(t, os.Chmod(p, os.FileMode(h.Mode&0o777)|modeBits(h.Mode)))
			case tar.TypeSymlink:
				must(t, os.Symlink(h.Linkname, p))
			case tar.TypeReg:
				f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode&0o777))
				must(t, err)
				_, err = io.Copy(f, tr)
				must(t, err)
				must(t, f.Close())
			default:
				t.Fatalf("%s: unexpected entry type %c for %s", archive, h.Typeflag, h.Name)
			}
		}
		rc.Close()
	}
	return dir
}

func modeBits(m int64) os.FileMode {
	if m&0o1000 != 0 {
		return os.ModeSticky
	}
	return 0
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
