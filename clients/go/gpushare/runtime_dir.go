package gpushare

import (
	"os"
	"path/filepath"
)

// RuntimeDir is the daemon's runtime directory, found as the daemon and gpusharectl find it:
// $GPUSHARE_RUNTIME_DIR when set, else $XDG_RUNTIME_DIR/gpushare when XDG_RUNTIME_DIR is set,
// else /run/gpushare.
func RuntimeDir() string {
	if dir := os.Getenv("GPUSHARE_RUNTIME_DIR"); dir != "" {
		return dir
	}
	if xdg := os.Getenv("XDG_RUNTIME_DIR"); xdg != "" {
		return filepath.Join(xdg, "gpushare")
	}
	return "/run/gpushare"
}

// ControlSocket is the path of control.sock (gRPC) in a runtime directory.
func ControlSocket(runtimeDir string) string { return filepath.Join(runtimeDir, "control.sock") }

// FdSocket is the path of fd.sock (descriptor passing) in a runtime directory.
func FdSocket(runtimeDir string) string { return filepath.Join(runtimeDir, "fd.sock") }
