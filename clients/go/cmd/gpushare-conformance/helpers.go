package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"syscall"
	"unicode"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

// conn is a client with one open session, for the scenarios that need one.
type conn struct {
	client  *gpushare.Client
	session *gpushare.Session
	api     pb.GpuShareClient
}

func dial(e *env) (*gpushare.Client, error) {
	c, err := gpushare.Dial(e.runtimeDir)
	if err != nil {
		return nil, failf("dial %s: %v", gpushare.ControlSocket(e.runtimeDir), err)
	}
	return c, nil
}

// openConn dials control.sock and opens a session on it.
func openConn(e *env) (*conn, error) {
	c, err := dial(e)
	if err != nil {
		return nil, err
	}
	s, err := c.NewSession(e.ctx, fmt.Sprintf("gpushare-conformance-go-%d", os.Getpid()))
	if err != nil {
		c.Close()
		return nil, failf("Session: expected a session id, got %v", err)
	}
	return &conn{client: c, session: s, api: c.API()}, nil
}

func (c *conn) close() {
	c.session.Close()
	c.client.Close()
}

// expectCode checks that err carries the gRPC code want (a gRPC status or an fd.sock error).
func expectCode(what string, err error, want codes.Code) error {
	if err == nil {
		return failf("%s: expected %s, got success", what, codeName(want))
	}
	if got := gpushare.Code(err); got != want {
		return failf("%s: expected %s, got %s (%v)", what, codeName(want), codeName(got), err)
	}
	return nil
}

// codeName is a gRPC code as the proto and the contract spell it: NOT_FOUND, not NotFound.
func codeName(c codes.Code) string {
	camel := c.String()
	var b strings.Builder
	for i, r := range camel {
		if i > 0 && unicode.IsUpper(r) && unicode.IsLower(rune(camel[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// pattern is the contract's test bytes: byte[i] = i % 251.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// firstDifference is the index of the first byte where a and b differ, -1 when equal.
func firstDifference(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // the kernel's random source does not fail
	}
	return b
}

// checkBufferExport is the check of an exported buffer descriptor shared by redeem-child and
// the direct export of export-redeem: the resource, kind and sizes, and fstat on the descriptor.
func checkBufferExport(what string, exp *gpushare.Exported, id string, size uint64) error {
	info := exp.Info
	if info.GetResourceId() != id {
		return failf("%s: expected resource_id %s, got %q", what, id, info.GetResourceId())
	}
	if info.GetKind() != pb.ResourceKind_RESOURCE_KIND_BUFFER {
		return failf("%s: expected kind BUFFER, got %s", what, info.GetKind())
	}
	buf := info.GetBuffer()
	if buf == nil {
		return failf("%s: expected buffer details, got none", what)
	}
	if buf.GetSize() != size {
		return failf("%s: expected buffer.size %d, got %d", what, size, buf.GetSize())
	}
	if buf.GetAllocationSize() < size {
		return failf("%s: expected buffer.allocation_size >= %d, got %d", what, size, buf.GetAllocationSize())
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(exp.File.Fd()), &st); err != nil {
		return failf("%s: expected fstat on the descriptor to succeed, got %v", what, err)
	}
	fmt.Fprintf(os.Stderr, "%s: descriptor %d, mode %#o, allocation_size %d, memory_type_index %d\n",
		what, exp.File.Fd(), st.Mode, buf.GetAllocationSize(), buf.GetMemoryTypeIndex())
	return nil
}
