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
	// A semaphore exported with its memop word (FdRequest.word): two descriptors.
	wordReply = &pb.FdReply{Reply: &pb.FdReply_Exported{Exported: &pb.ExportedFd{
		ResourceId: "sem-0123456789abcdef0123456789abcdef",
		Kind:       pb.ResourceKind_RESOURCE_KIND_SEMAPHORE,
		Details: &pb.ExportedFd_Semaphore{Semaphore: &pb.SemaphoreImport{
			Timeline: true, Value: 2, WordExists: true,
			Word: &pb.BufferImport{Size: 8, AllocationSize: 65536, Dedicated: true},
		}},
	}}}
	// A semaphore without a word (or exported without asking for it): one descriptor.
	semReply = &pb.FdReply{Reply: &pb.FdReply_Exported{Exported: &pb.ExportedFd{
		ResourceId: "sem-0123456789abcdef0123456789abcdef",
		Kind:       pb.ResourceKind_RESOURCE_KIND_SEMAPHORE,
		Details:    &pb.ExportedFd_Semaphore{Semaphore: &pb.SemaphoreImport{Timeline: true, Value: 2}},
	}}}
	waitedReply = &pb.FdReply{Reply: &pb.FdReply_Waited{Waited: &pb.SemaphoreValue{Value: 7}}}
	errorReply  = &pb.FdReply{Reply: &pb.FdReply_Error{Error: &pb.FdError{Code: 5, Message: "no such ticket"}}}
)

func TestExportedWithOneDescriptor(t *testing.T) {
	before := openFds(t)
	p := newPair(t)
	p.send(t, marshal(t, exportedReply), 1)
	reply, files, err := recvReply(p.client, expectExported)
	if err != nil {
		t.Fatalf("recvReply: %v", err)
	}
	if reply.GetExported().GetResourceId() != exportedReply.GetExported().GetResourceId() {
		t.Errorf("resource id %q", reply.GetExported().GetResourceId())
	}
	if len(files) != 1 {
		t.Fatalf("%d descriptors, want 1", len(files))
	}
	checkReceived(t, files[0])
	files[0].Close()
	p.client.Close()
	syscall.Close(p.server)
	if after := openFds(t); after != before {
		t.Errorf("open descriptors %d before, %d after", before, after)
	}
}

// checkReceived: the descriptor is open (fstat) and close-on-exec (MSG_CMSG_CLOEXEC).
func checkReceived(t *testing.T, file *os.File) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(file.Fd()), &st); err != nil {
		t.Errorf("fstat: %v", err)
	}
	flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, file.Fd(), syscall.F_GETFD, 0)
	if errno != 0 || flags&syscall.FD_CLOEXEC == 0 {
		t.Errorf("FD_CLOEXEC not set (flags %#x, errno %v): MSG_CMSG_CLOEXEC missing", flags, errno)
	}
}

// A semaphore exported with FdRequest.word: the word's buffer comes second, and both are
// returned exactly when the metadata announces the word; without it, one descriptor.
func TestExportedWithWord(t *testing.T) {
	cases := []struct {
		name  string
		reply *pb.FdReply
		fds   int
	}{
		{"semaphore with its word: 2 descriptors", wordReply, 2},
		{"semaphore without a word: 1 descriptor", semReply, 1},
		{"buffer, word asked for: 1 descriptor", exportedReply, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := openFds(t)
			p := newPair(t)
			p.send(t, marshal(t, tc.reply), tc.fds)
			reply, files, err := recvReply(p.client, expectExportedWord)
			if err != nil {
				t.Fatalf("recvReply: %v", err)
			}
			if len(files) != tc.fds {
				t.Errorf("%d descriptors, want %d", len(files), tc.fds)
			}
			if !proto.Equal(reply, tc.reply) {
				t.Errorf("reply %v, want %v", reply, tc.reply)
			}
			for _, f := range files {
				checkReceived(t, f)
			}
			closeAll(files)
			p.client.Close()
			syscall.Close(p.server)
			if after := openFds(t); after != before {
				t.Errorf("open descriptors %d before, %d after", before, after)
			}
		})
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
		{"exported with 2 descriptors, word asked for (a buffer has none)", marshal(t, exportedReply), 2, expectExportedWord, 2},
		{"exported with 3 descriptors, word asked for (MSG_CTRUNC)", marshal(t, exportedReply), 3, expectExportedWord, 2},
		{"exported with 64 descriptors, word asked for (MSG_CTRUNC)", marshal(t, exportedReply), 64, expectExportedWord, 2},
		{"semaphore without a word, 2 descriptors", marshal(t, semReply), 2, expectExportedWord, 2},
		{"word announced, 1 descriptor", marshal(t, wordReply), 1, expectExportedWord, 1},
		{"word announced, no descriptor", marshal(t, wordReply), 0, expectExportedWord, 0},
		{"word announced, 3 descriptors (MSG_CTRUNC)", marshal(t, wordReply), 3, expectExportedWord, 2},
		{"word announced, 64 descriptors (MSG_CTRUNC)", marshal(t, wordReply), 64, expectExportedWord, 2},
		{"word announced, not asked for, 2 descriptors", marshal(t, wordReply), 2, expectExported, 2},
		{"error with 2 descriptors, word asked for", marshal(t, errorReply), 2, expectExportedWord, 2},
		{"exported with 2 descriptors answering a wait (MSG_CTRUNC)", marshal(t, wordReply), 2, expectWaited, 0},
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
			_, files, err := recvReply(p.client, tc.want)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				closeAll(files)
				t.Fatalf("got %v, want a *ProtocolError", err)
			}
			if files != nil {
				closeAll(files)
				t.Errorf("files came with the error")
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
	reply, files, err := recvReply(p.client, expectWaited)
	if err != nil || files != nil || reply.GetWaited().GetValue() != 7 {
		t.Errorf("got %v, %v, %v; want waited 7", reply, files, err)
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

// ExportWord and RedeemWord send FdRequest.word and hand out the word's buffer as Exported.Word;
// Export and Redeem do not ask for it, and a word announced to them is a protocol error.
func TestFdConnWord(t *testing.T) {
	before := openFds(t)
	p := newPair(t)
	f := &FdConn{conn: p.client}
	ctx := context.Background()
	requests := make(chan *pb.FdRequest, 8)
	serve := func(reply *pb.FdReply, fds int) {
		buf := make([]byte, 1024)
		n, err := syscall.Read(p.server, buf)
		if err != nil {
			t.Error(err)
			return
		}
		var req pb.FdRequest
		if err := proto.Unmarshal(buf[:n], &req); err != nil {
			t.Error(err)
		}
		requests <- &req
		p.send(t, marshal(t, reply), fds)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(wordReply, 2)
		serve(wordReply, 2)
		serve(semReply, 1)
		serve(wordReply, 2)
		serve(wordReply, 1)
	}()

	exp, err := f.ExportWord(ctx, "sem-0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatalf("ExportWord: %v", err)
	}
	if req := <-requests; !req.GetWord() || req.GetExport() == "" {
		t.Errorf("ExportWord sent %v", req)
	}
	if exp.File == nil || exp.Word == nil {
		t.Fatalf("ExportWord: File %v, Word %v", exp.File, exp.Word)
	}
	checkReceived(t, exp.File)
	checkReceived(t, exp.Word)
	if exp.Info.GetSemaphore().GetWord().GetAllocationSize() != 65536 {
		t.Errorf("word metadata %v", exp.Info.GetSemaphore().GetWord())
	}
	if err := exp.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	exp, err = f.RedeemWord(ctx, []byte("0123456789abcdef"))
	if err != nil {
		t.Fatalf("RedeemWord: %v", err)
	}
	if req := <-requests; !req.GetWord() || req.GetRedeem() == nil {
		t.Errorf("RedeemWord sent %v", req)
	}
	if exp.File == nil || exp.Word == nil {
		t.Errorf("RedeemWord: File %v, Word %v", exp.File, exp.Word)
	}
	exp.Close()

	exp, err = f.ExportWord(ctx, "sem-0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatalf("ExportWord of a semaphore without a word: %v", err)
	}
	<-requests
	if exp.File == nil || exp.Word != nil {
		t.Errorf("ExportWord of a semaphore without a word: File %v, Word %v", exp.File, exp.Word)
	}
	exp.Close()

	_, err = f.Export(ctx, "sem-0123456789abcdef0123456789abcdef")
	var pe *ProtocolError
	if !errors.As(err, &pe) || pe.Closed != 2 {
		t.Errorf("Export answered with a word: %v, want a *ProtocolError closing 2", err)
	}
	if req := <-requests; req.GetWord() {
		t.Errorf("Export sent word: %v", req)
	}

	_, err = f.ExportWord(ctx, "sem-0123456789abcdef0123456789abcdef")
	if !errors.As(err, &pe) || pe.Closed != 1 {
		t.Errorf("a word announced with one descriptor: %v, want a *ProtocolError closing 1", err)
	}
	<-requests
	<-done
	f.Close()
	syscall.Close(p.server)
	if after := openFds(t); after != before {
		t.Errorf("open descriptors %d before, %d after", before, after)
	}
}
