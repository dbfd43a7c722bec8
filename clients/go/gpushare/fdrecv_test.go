package gpushare

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// openFds counts the entries of /proc/self/fd (the directory's own descriptor included, as it
// is in every count).
func openFds(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// pair is a SOCK_SEQPACKET socketpair: client as the *net.UnixConn an FdConn reads, server as
// a raw descriptor the test sends replies on.
type pair struct {
	client *net.UnixConn
	server int
}

func newPair(t *testing.T) *pair {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "client")
	c, err := net.FileConn(f) // dups the descriptor
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := &pair{client: c.(*net.UnixConn), server: fds[1]}
	t.Cleanup(func() {
		p.client.Close()
		syscall.Close(p.server)
	})
	return p
}

// send writes one message carrying n descriptors (of /dev/null, closed here once sent).
func (p *pair) send(t *testing.T, msg []byte, n int) {
	t.Helper()
	var oob []byte
	if n > 0 {
		fds := make([]int, n)
		for i := range fds {
			fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		defer func() {
			for _, fd := range fds {
				syscall.Close(fd)
			}
		}()
		oob = syscall.UnixRights(fds...)
	}
	if err := syscall.Sendmsg(p.server, msg, oob, nil, 0); err != nil {
		t.Fatal(err)
	}
}

func marshal(t *testing.T, reply *pb.FdReply) []byte {
	t.Helper()
	b, err := proto.Marshal(reply)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	exportedReply = &pb.FdReply{Reply: &pb.FdReply_Exported{Exported: &pb.ExportedFd{
		ResourceId: "0123456789abcdef0123456789abcdef",
		Kind:       pb.ResourceKind_RESOURCE_KIND_BUFFER,
		Details:    &pb.ExportedFd_Buffer{Buffer: &pb.BufferImport{Size: 4096, AllocationSize: 4096}},
	}}}
	waitedReply = &pb.FdReply{Reply: &pb.FdReply_Waited{Waited: &pb.SemaphoreValue{Value: 7}}}
	errorReply  = &pb.FdReply{Reply: &pb.FdReply_Error{Error: &pb.FdError{Code: 5, Message: "no such ticket"}}}
)

func TestExportedWithOneDescriptor(t *testing.T) {
	before := openFds(t)
	p := newPair(t)
	p.send(t, marshal(t, exportedReply), 1)
	reply, file, err := recvReply(p.client, expectExported)
	if err != nil {
		t.Fatalf("recvReply: %v", err)
	}
	if reply.GetExported().GetResourceId() != exportedReply.GetExported().GetResourceId() {
		t.Errorf("resource id %q", reply.GetExported().GetResourceId())
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(file.Fd()), &st); err != nil {
		t.Errorf("fstat: %v", err)
	}
	flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, file.Fd(), syscall.F_GETFD, 0)
	if errno != 0 || flags&syscall.FD_CLOEXEC == 0 {
		t.Errorf("FD_CLOEXEC not set (flags %#x, errno %v): MSG_CMSG_CLOEXEC missing", flags, errno)
	}
	file.Close()
	p.client.Close()
	syscall.Close(p.server)
	if after := openFds(t); after != before {
		t.Errorf("open descriptors %d before, %d after", before, after)
	}
}

// Each bad reply is a *ProtocolError that closed the descriptors that arrived.
func TestProtocolErrorsCloseEveryDescriptor(t *testing.T) {
	oversized := make([]byte, maxReplySize+1)
	cases := []struct {
		name   string
		msg    []byte
		fds    int
		want   replyKind
		closed int // descriptors that arrive (the kernel drops what does not fit)
	}{
		{"exported with 3 descriptors (MSG_CTRUNC)", marshal(t, exportedReply), 3, expectExported, 2},
		{"exported with 2 descriptors (fits the buffer)", marshal(t, exportedReply), 2, expectExported, 2},
		{"exported with no descriptor", marshal(t, exportedReply), 0, expectExported, 0},
		{"exported with 64 descriptors (MSG_CTRUNC)", marshal(t, exportedReply), 64, expectExported, 2},
		{"error with a descriptor", marshal(t, errorReply), 1, expectExported, 1},
		{"waited with a descriptor (no room: MSG_CTRUNC)", marshal(t, waitedReply), 1, expectWaited, 0},
		{"exported answering a wait", marshal(t, exportedReply), 0, expectWaited, 0},
		{"waited answering an export", marshal(t, waitedReply), 0, expectExported, 0},
		{"undecodable bytes with a descriptor", []byte{0xff, 0xff, 0xff}, 1, expectExported, 1},
		{"empty reply with a descriptor", nil, 1, expectExported, 1},
		{"longer than a reply (MSG_TRUNC)", oversized, 1, expectExported, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := openFds(t)
			p := newPair(t)
			p.send(t, tc.msg, tc.fds)
			_, file, err := recvReply(p.client, tc.want)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				if file != nil {
					file.Close()
				}
				t.Fatalf("got %v, want a *ProtocolError", err)
			}
			if file != nil {
				t.Errorf("a file came with the error")
			}
			if pe.Closed != tc.closed {
				t.Errorf("%d descriptors closed, want %d (%v)", pe.Closed, tc.closed, pe)
			}
			if Code(err) != codes.Internal {
				t.Errorf("Code = %v", Code(err))
			}
			p.client.Close()
			syscall.Close(p.server)
			if after := openFds(t); after != before {
				t.Errorf("open descriptors %d before, %d after", before, after)
			}
		})
	}
}

func TestErrorAndWaitedReplies(t *testing.T) {
	p := newPair(t)
	p.send(t, marshal(t, errorReply), 0)
	_, _, err := recvReply(p.client, expectExported)
	var fe *FdError
	if !errors.As(err, &fe) || fe.Code != codes.NotFound || Code(err) != codes.NotFound {
		t.Errorf("got %v, want an *FdError NOT_FOUND", err)
	}
	p.send(t, marshal(t, waitedReply), 0)
	reply, file, err := recvReply(p.client, expectWaited)
	if err != nil || file != nil || reply.GetWaited().GetValue() != 7 {
		t.Errorf("got %v, %v, %v; want waited 7", reply, file, err)
	}
	syscall.Shutdown(p.server, syscall.SHUT_WR)
	if _, _, err := recvReply(p.client, expectWaited); err != io.EOF {
		t.Errorf("after the peer's shutdown: %v, want io.EOF", err)
	}
}

// Over one connection, a protocol error leaves the FdConn in step for the next request.
func TestFdConnStaysUsableAfterProtocolError(t *testing.T) {
	p := newPair(t)
	f := &FdConn{conn: p.client}
	ctx := context.Background()
	buf := make([]byte, 1024)
	serve := func(reply *pb.FdReply, fds int) {
		if _, err := syscall.Read(p.server, buf); err != nil {
			t.Error(err)
		}
		p.send(t, marshal(t, reply), fds)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(exportedReply, 3)
		serve(exportedReply, 1)
		serve(waitedReply, 0)
	}()
	if _, err := f.Redeem(ctx, []byte("0123456789abcdef")); err == nil {
		t.Fatal("3 descriptors accepted")
	}
	exp, err := f.Export(ctx, "0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatalf("export after a protocol error: %v", err)
	}
	exp.File.Close()
	if v, err := f.Wait(ctx, "x", 7, 0, 0); err != nil || v != 7 {
		t.Errorf("wait: %v, %v", v, err)
	}
	<-done
	f.Close()
	if _, err := f.Export(ctx, "x"); err == nil {
		t.Error("export on a closed connection succeeded")
	}
}
