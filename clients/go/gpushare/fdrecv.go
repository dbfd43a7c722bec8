package gpushare

// Receiving one fd.sock reply and the descriptors that came with it. This file is the whole of
// the receiving rules, and what fdrecv_test.go checks against socketpairs:
//
//   - recvmsg is called with MSG_CMSG_CLOEXEC in its flags, so a descriptor is never open
//     without close-on-exec, not even between recvmsg and a later fcntl (a fork in another
//     goroutine would inherit it). net.UnixConn.ReadMsgUnix takes no flags (Go 1.17+ passes
//     this one by itself on Linux, golang/go #42765); calling syscall.Recvmsg through the
//     connection's RawConn keeps the flag explicit and the read under Go's poller and deadlines.
//   - The control buffer is sized with syscall.CmsgSpace for the descriptors the reply may
//     carry: two for a reply to an export or a redemption (one, or two for a semaphore whose
//     memop word was asked for with FdRequest.word), none for a wait or a stream call.
//   - Every descriptor of every SCM_RIGHTS header is taken (ParseSocketControlMessage over
//     the whole control data) and owned at once as an *os.File.
//   - MSG_TRUNC, MSG_CTRUNC, a reply that does not decode, one of the wrong kind, or one with
//     more or fewer descriptors than its kind carries is a *ProtocolError, and every
//     descriptor that arrived is closed before it is returned. An `exported` reply carries two
//     exactly when its metadata announces the word's buffer (ExportedFd.semaphore.word, which
//     the daemon sets only when the request asked for the word), else one; a word announced
//     in reply to a request that did not ask for it is a *ProtocolError too.

import (
	"fmt"
	"io"
	"os"
	"syscall"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/protobuf/proto"
)

// maxReplySize bounds an FdReply: the largest the daemon sends is an ExportedFd, a few hundred
// bytes. A longer message comes with MSG_TRUNC and is a protocol error.
const maxReplySize = 64 << 10

// replyKind is the kind of reply a request expects besides FdError.
type replyKind int

const (
	expectExported     replyKind = iota // redeem, export: ExportedFd with one descriptor
	expectExportedWord                  // the same with FdRequest.word: one, or two with semaphore.word
	expectWaited                        // wait: SemaphoreValue, no descriptor
	expectStream                        // stream call: StreamReply, no descriptor
)

// String names what a request of the kind is, for protocol errors.
func (k replyKind) String() string {
	switch k {
	case expectExported:
		return "an export or redemption"
	case expectExportedWord:
		return "an export or redemption with the word"
	case expectWaited:
		return "a wait"
	default:
		return "a stream call"
	}
}

// maxFds is the room the control buffer makes: two descriptors for every export or
// redemption (the most an `exported` reply carries: a semaphore and its word's buffer), so that
// a second descriptor arrives, and is counted and closed, even where only one is due.
func (k replyKind) maxFds() int {
	if k == expectExported || k == expectExportedWord {
		return 2
	}
	return 0
}

// exported reports whether the kind expects an `exported` reply.
func (k replyKind) exported() bool { return k == expectExported || k == expectExportedWord }

// recvMsg reads one message of a SOCK_SEQPACKET connection into buf, with room for maxFds
// descriptors, and returns its length and every descriptor that arrived, owned. A truncated
// message is a *ProtocolError with the descriptors closed; an orderly shutdown by the peer is
// io.EOF; an error of recvmsg itself is returned as it is (no descriptor arrives then).
func recvMsg(conn syscall.Conn, buf []byte, maxFds int) (int, []*os.File, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, nil, err
	}
	oob := make([]byte, syscall.CmsgSpace(maxFds*4))
	var n, oobn, flags int
	var recvErr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			n, oobn, flags, _, recvErr = syscall.Recvmsg(int(fd), buf, oob, syscall.MSG_CMSG_CLOEXEC)
			if recvErr != syscall.EINTR {
				break
			}
		}
		// EAGAIN: nothing to read yet; the poller waits (honouring the read deadline).
		return recvErr != syscall.EAGAIN
	})
	if err == nil {
		err = recvErr
	}
	if err != nil {
		return 0, nil, err
	}
	files, parseErr := takeRights(oob[:oobn])
	switch {
	case parseErr != nil:
		return 0, nil, closeWith(files, fmt.Sprintf("control data does not parse: %v", parseErr))
	case flags&syscall.MSG_CTRUNC != 0:
		return 0, nil, closeWith(files, "control data truncated (MSG_CTRUNC): more descriptors than expected")
	case flags&syscall.MSG_TRUNC != 0:
		return 0, nil, closeWith(files, fmt.Sprintf("message truncated (MSG_TRUNC): longer than %d bytes", len(buf)))
	case n == 0 && len(files) == 0:
		return 0, nil, io.EOF
	}
	return n, files, nil
}

// takeRights owns every descriptor of every SCM_RIGHTS header of the control data. The kernel
// writes only whole headers, also when it truncates (MSG_CTRUNC: it installs the descriptors
// that fit and says so in the header's length), so the data always parses; a parse error, were
// one to come, finds no descriptor to own.
func takeRights(oob []byte) ([]*os.File, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for i := range msgs {
		if msgs[i].Header.Level != syscall.SOL_SOCKET || msgs[i].Header.Type != syscall.SCM_RIGHTS {
			continue
		}
		fds, err := syscall.ParseUnixRights(&msgs[i])
		if err != nil {
			return files, err // the level and type were checked: not reached
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "fd.sock descriptor"))
		}
	}
	return files, nil
}

// closeWith closes every file and returns a *ProtocolError saying why.
func closeWith(files []*os.File, reason string) *ProtocolError {
	closeAll(files)
	return &ProtocolError{Reason: reason, Closed: len(files)}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		_ = f.Close() // a close error leaves nothing to undo
	}
}

// recvReply reads one FdReply answering a request of the given kind. It returns the reply and,
// for `exported`, its descriptors (owned by the caller): the resource's first, then the word's
// buffer when ExportedFd.semaphore.word announces it; an FdReply.error becomes an *FdError;
// anything that breaks the rules above is a *ProtocolError with every descriptor closed.
func recvReply(conn syscall.Conn, want replyKind) (*pb.FdReply, []*os.File, error) {
	buf := make([]byte, maxReplySize)
	n, files, err := recvMsg(conn, buf, want.maxFds())
	if err != nil {
		return nil, nil, err
	}
	var reply pb.FdReply
	if err := proto.Unmarshal(buf[:n], &reply); err != nil {
		return nil, nil, closeWith(files, fmt.Sprintf("reply does not decode: %v", err))
	}
	// How many descriptors the reply's kind carries, and whether it answers this request.
	var carries int
	switch r := reply.Reply.(type) {
	case *pb.FdReply_Exported:
		if !want.exported() {
			return nil, nil, closeWith(files, fmt.Sprintf("an exported descriptor in reply to %s", want))
		}
		carries = 1
		if r.Exported.GetSemaphore().GetWord() != nil {
			if want != expectExportedWord {
				return nil, nil, closeWith(files, fmt.Sprintf("a word's buffer announced in reply to %s", want))
			}
			carries = 2
		}
	case *pb.FdReply_Waited:
		if want != expectWaited {
			return nil, nil, closeWith(files, fmt.Sprintf("a wait's reply to %s", want))
		}
	case *pb.FdReply_Stream:
		if want != expectStream {
			return nil, nil, closeWith(files, fmt.Sprintf("a stream call's reply to %s", want))
		}
	case *pb.FdReply_Error:
		if len(files) != 0 {
			return nil, nil, closeWith(files, fmt.Sprintf("%d descriptors with an error reply", len(files)))
		}
		return nil, nil, &FdError{Code: codeOf(r.Error.GetCode()), Message: r.Error.GetMessage()}
	default:
		return nil, nil, closeWith(files, "a reply of no known kind")
	}
	if len(files) != carries {
		return nil, nil, closeWith(files, fmt.Sprintf("%d descriptors with a reply that carries %d", len(files), carries))
	}
	if carries == 0 {
		return &reply, nil, nil
	}
	return &reply, files, nil
}
