package gpushare

// Frame streams on fd.sock: the producer's AcquireSlot and Present and a consumer's
// AcquireFrame and ReleaseFrame, sent as FdRequest.stream (a StreamCall) and answered by
// FdReply.stream (a StreamReply) or an FdError, with no descriptor either way. The stream
// itself (CreateStream, AttachProducer, AttachConsumer, Detach, DescribeStream) is the
// generated gRPC client's.

import (
	"context"
	"fmt"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
)

// StreamCall sends one frame call on fd.sock and returns the daemon's StreamReply, whose kind
// answers the call's (slot for acquire_slot, presented for present, frame for acquire_frame,
// released for release). A refusal is an *FdError with the gRPC call's code (DEADLINE_EXCEEDED
// when an acquire ran out of time, ABORTED when the stream ended, ...). A reply with descriptors
// (they are closed), of another kind, or empty is a *ProtocolError. An acquire that waits holds
// the connection: ctx should outlast its timeout_ms, since a call abandoned by its context
// closes the connection.
func (f *FdConn) StreamCall(ctx context.Context, call *pb.StreamCall) (*pb.StreamReply, error) {
	want, err := streamReplyFor(call)
	if err != nil {
		return nil, err
	}
	reply, _, err := f.roundTrip(ctx, &pb.FdRequest{Request: &pb.FdRequest_Stream{Stream: call}}, expectStream)
	if err != nil {
		return nil, err
	}
	sr := reply.GetStream()
	if err := checkStreamReply(sr, want); err != nil {
		return nil, err
	}
	return sr, nil
}

// AcquireSlot (the producer): a free slot and the points to wait for before writing it.
func (f *FdConn) AcquireSlot(ctx context.Context, req *pb.AcquireRequest) (*pb.SlotGrant, error) {
	r, err := f.StreamCall(ctx, &pb.StreamCall{Call: &pb.StreamCall_AcquireSlot{AcquireSlot: req}})
	return r.GetSlot(), err
}

// Present (the producer): the frame in req.Slot is ready at req.ReadyValue (0: now, the daemon
// signals the next value and returns it).
func (f *FdConn) Present(ctx context.Context, req *pb.PresentRequest) (*pb.Presented, error) {
	r, err := f.StreamCall(ctx, &pb.StreamCall{Call: &pb.StreamCall_Present{Present: req}})
	return r.GetPresented(), err
}

// AcquireFrame (a consumer): the next frame by the consumer's delivery mode.
func (f *FdConn) AcquireFrame(ctx context.Context, req *pb.AcquireRequest) (*pb.Frame, error) {
	r, err := f.StreamCall(ctx, &pb.StreamCall{Call: &pb.StreamCall_AcquireFrame{AcquireFrame: req}})
	return r.GetFrame(), err
}

// ReleaseFrame (a consumer): done with the frame in req.Slot at req.ReleaseValue (0: now).
func (f *FdConn) ReleaseFrame(ctx context.Context, req *pb.ReleaseFrameRequest) (*pb.Released, error) {
	r, err := f.StreamCall(ctx, &pb.StreamCall{Call: &pb.StreamCall_Release{Release: req}})
	return r.GetReleased(), err
}

// streamReplyKind is which StreamReply field answers a StreamCall.
type streamReplyKind int

const (
	replySlot streamReplyKind = iota + 1
	replyPresented
	replyFrame
	replyReleased
)

func (k streamReplyKind) String() string {
	switch k {
	case replySlot:
		return "slot"
	case replyPresented:
		return "presented"
	case replyFrame:
		return "frame"
	case replyReleased:
		return "released"
	}
	return "none"
}

// streamReplyFor is the reply kind a call expects; a call with no request set is refused
// here, before anything is sent.
func streamReplyFor(call *pb.StreamCall) (streamReplyKind, error) {
	switch call.GetCall().(type) {
	case *pb.StreamCall_AcquireSlot:
		return replySlot, nil
	case *pb.StreamCall_Present:
		return replyPresented, nil
	case *pb.StreamCall_AcquireFrame:
		return replyFrame, nil
	case *pb.StreamCall_Release:
		return replyReleased, nil
	}
	return 0, fmt.Errorf("gpushare: a StreamCall without a call")
}

// kindOf is the kind of a StreamReply, 0 when none is set.
func kindOf(r *pb.StreamReply) streamReplyKind {
	switch r.GetReply().(type) {
	case *pb.StreamReply_Slot:
		return replySlot
	case *pb.StreamReply_Presented:
		return replyPresented
	case *pb.StreamReply_Frame:
		return replyFrame
	case *pb.StreamReply_Released:
		return replyReleased
	}
	return 0
}

// checkStreamReply: the reply is of the kind the call expects (a set field, not nil).
func checkStreamReply(r *pb.StreamReply, want streamReplyKind) error {
	got := kindOf(r)
	if got != want {
		return &ProtocolError{Reason: fmt.Sprintf("a stream reply %s in answer to a call expecting %s", got, want)}
	}
	// A oneof field present on the wire decodes to a non-nil message; check anyway.
	var nilMsg bool
	switch want {
	case replySlot:
		nilMsg = r.GetSlot() == nil
	case replyPresented:
		nilMsg = r.GetPresented() == nil
	case replyFrame:
		nilMsg = r.GetFrame() == nil
	case replyReleased:
		nilMsg = r.GetReleased() == nil
	}
	if nilMsg {
		return &ProtocolError{Reason: fmt.Sprintf("a stream reply %s without its message", want)}
	}
	return nil
}
