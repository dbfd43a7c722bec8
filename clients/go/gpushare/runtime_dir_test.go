package gpushare

import "testing"

func TestRuntimeDir(t *testing.T) {
	t.Setenv("GPUSHARE_RUNTIME_DIR", "/tmp/gs")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := RuntimeDir(); got != "/tmp/gs" {
		t.Errorf("with GPUSHARE_RUNTIME_DIR: %q", got)
	}
	t.Setenv("GPUSHARE_RUNTIME_DIR", "")
	if got := RuntimeDir(); got != "/run/user/1000/gpushare" {
		t.Errorf("with XDG_RUNTIME_DIR: %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if got := RuntimeDir(); got != "/run/gpushare" {
		t.Errorf("with neither: %q", got)
	}
	if got := ControlSocket("/x"); got != "/x/control.sock" {
		t.Errorf("ControlSocket: %q", got)
	}
	if got := FdSocket("/x"); got != "/x/fd.sock" {
		t.Errorf("FdSocket: %q", got)
	}
}
