package gpushare

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/protobuf/proto"
)

// FdConn is a connection to fd.sock (SOCK_SEQPACKET): one FdRequest per message, one FdReply
// per message back, the descriptor of an exported resource as SCM_RIGHTS (and, for a
// semaphore's memop word when asked for, a second one: see fdrecv.go for the receiving rules).
// It carries one request at a time; concurrent calls wait their turn.
//
// A reply that breaks the protocol (*ProtocolError) leaves the connection usable. An I/O error,
// or a call abandoned by its context before the reply came, closes it: a late reply would
// otherwise answer the next request.
type FdConn struct {
	conn      *net.UnixConn
	closeOnce sync.Once
	closeErr  error

	mu     sync.Mutex // held for a whole round trip
	broken error      // set under mu by an I/O error, which closed the connection
}

// Exported is a descriptor received from fd.sock with the metadata to import it. File is owned
// by the caller, who must close it (an import that takes ownership of the fd, as Vulkan's and
// CUDA's do on success, takes it from File.Fd(); then close nothing).
//
// Word is the memop word's buffer of a semaphore (the CUDA fast path), owned by the caller like
// File: set exactly when the export or redemption asked for it (ExportWord, RedeemWord) and the
// semaphore has one, which Info.GetSemaphore().GetWord() (its BufferImport) then describes;
// nil otherwise. Close closes both.
type Exported struct {
	File *os.File
	Word *os.File
	Info *pb.ExportedFd
}

// Close closes File and, when there is one, Word; it returns the first error. A descriptor an
// importer took ownership of (set the field to nil) is not closed.
func (e *Exported) Close() error {
	var err error
	for _, f := range []*os.File{e.File, e.Word} {
		if f == nil {
			continue
		}
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// ErrFdConnClosed: the FdConn was closed, or broken by an earlier I/O error (wrapped).
var ErrFdConnClosed = errors.New("gpushare: fd.sock connection closed")

// DialFd connects to an fd.sock at path (FdSocket(runtimeDir)); ctx bounds the connect.
func DialFd(ctx context.Context, path string) (*FdConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, err
	}
	return &FdConn{conn: c.(*net.UnixConn)}, nil
}

// Redeem redeems a ticket (ExportResponse.ticket) for the resource's descriptor.
func (f *FdConn) Redeem(ctx context.Context, ticket []byte) (*Exported, error) {
	return f.export(ctx, &pb.FdRequest{Request: &pb.FdRequest_Redeem{Redeem: ticket}}, expectExported)
}

// Export asks for the descriptor of one of the caller's own resources by id, in one round trip
// (the checks of Export + redeem).
func (f *FdConn) Export(ctx context.Context, id string) (*Exported, error) {
	return f.export(ctx, &pb.FdRequest{Request: &pb.FdRequest_Export{Export: id}}, expectExported)
}

// RedeemWord is Redeem with FdRequest.word: for a semaphore that has a memop word (the CUDA
// fast path; SemaphoreDetails.word), Exported.Word is the word's buffer too. For any other
// resource, or a semaphore without a word, it is Redeem (Word nil).
func (f *FdConn) RedeemWord(ctx context.Context, ticket []byte) (*Exported, error) {
	return f.export(ctx, &pb.FdRequest{Request: &pb.FdRequest_Redeem{Redeem: ticket}, Word: true}, expectExportedWord)
}

// ExportWord is Export with FdRequest.word, as RedeemWord is Redeem: a semaphore's memop word
// buffer comes with it (Exported.Word) when it has one.
func (f *FdConn) ExportWord(ctx context.Context, id string) (*Exported, error) {
	return f.export(ctx, &pb.FdRequest{Request: &pb.FdRequest_Export{Export: id}, Word: true}, expectExportedWord)
}

func (f *FdConn) export(ctx context.Context, req *pb.FdRequest, want replyKind) (*Exported, error) {
	reply, files, err := f.roundTrip(ctx, req, want)
	if err != nil {
		return nil, err
	}
	// recvReply returned exactly the descriptors the metadata announces: one, or two.
	exp := &Exported{File: files[0], Info: reply.GetExported()}
	if len(files) == 2 {
		exp.Word = files[1]
	}
	return exp, nil
}

// Wait is a host wait on fd.sock (FdWait): it returns the semaphore's value once it is at least
// value, or an *FdError (DEADLINE_EXCEEDED after timeoutMs, NOT_FOUND, ABORTED, ...). spinUs
// asks the daemon to read the counter continuously for that long (0: no spin). ctx should
// outlast timeoutMs: a call abandoned by its context closes the connection.
func (f *FdConn) Wait(ctx context.Context, id string, value uint64, timeoutMs, spinUs uint32) (uint64, error) {
	req := &pb.FdRequest{Request: &pb.FdRequest_Wait{Wait: &pb.FdWait{
		Id: id, Value: value, TimeoutMs: timeoutMs, SpinUs: spinUs,
	}}}
	reply, _, err := f.roundTrip(ctx, req, expectWaited)
	if err != nil {
		return 0, err
	}
	return reply.GetWaited().GetValue(), nil
}

// roundTrip sends one request and reads its reply, under ctx's deadline and cancellation.
func (f *FdConn) roundTrip(ctx context.Context, req *pb.FdRequest, want replyKind) (*pb.FdReply, []*os.File, error) {
	msg, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		return nil, nil, f.broken
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	deadline, _ := ctx.Deadline() // zero: none
	if err := f.conn.SetDeadline(deadline); err != nil {
		return nil, nil, f.breakWith(err)
	}
	// Cancellation interrupts a pending write or read through the deadline.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			_ = f.conn.SetDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	if _, err := f.conn.Write(msg); err != nil {
		return nil, nil, f.breakWith(ctxErr(ctx, err))
	}
	reply, files, err := recvReply(f.conn, want)
	if err != nil {
		var fe *FdError
		var pe *ProtocolError
		if errors.As(err, &fe) || errors.As(err, &pe) {
			return nil, nil, err // a whole reply was read: the connection stays in step
		}
		return nil, nil, f.breakWith(ctxErr(ctx, err))
	}
	return reply, files, nil
}

// ctxErr prefers the context's error to the I/O timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// breakWith closes the connection after an I/O error (f.mu held); later calls get
// ErrFdConnClosed.
func (f *FdConn) breakWith(err error) error {
	f.broken = fmt.Errorf("%w: %v", ErrFdConnClosed, err)
	_ = f.Close() // the error that broke it is the one to report
	return err
}

// Close closes the connection; a call in progress fails. Safe to call more than once.
func (f *FdConn) Close() error {
	f.closeOnce.Do(func() { f.closeErr = f.conn.Close() })
	return f.closeErr
}
