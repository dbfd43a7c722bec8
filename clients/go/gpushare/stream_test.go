package gpushare

import (
	"context"
	"errors"
	"syscall"
	"testing"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// TestStreamCallReplies queues replies on a socketpair before each call (the call's request
// is written first and read back here), and checks StreamCall's parsing: the reply that
// answers the call, an FdError's code, and protocol errors (descriptors, which are closed; a
// reply of another kind; a wait's reply), after each of which the connection stays usable.
func TestStreamCallReplies(t *testing.T) {
	before := openFds(t)
	p := newPair(t)
	fc := &FdConn{conn: p.client}
	ctx := context.Background()
	frameCall := &pb.StreamCall{Call: &pb.StreamCall_AcquireFrame{AcquireFrame: &pb.AcquireRequest{
		Handle: "role-0123", TimeoutMs: 2000,
	}}}
	frame := &pb.FdReply{Reply: &pb.FdReply_Stream{Stream: &pb.StreamReply{Reply: &pb.StreamReply_Frame{Frame: &pb.Frame{
		Slot: 1, Sequence: 3, Metadata: &pb.FrameMetadata{Number: 3},
		Ready: &pb.SemaphorePoint{SemaphoreId: "sem-x", Value: 3},
	}}}}}
	presented := &pb.FdReply{Reply: &pb.FdReply_Stream{Stream: &pb.StreamReply{Reply: &pb.StreamReply_Presented{
		Presented: &pb.Presented{ReadyValue: 1, Sequence: 1},
	}}}}
	deadline := &pb.FdReply{Reply: &pb.FdReply_Error{Error: &pb.FdError{Code: 4, Message: "no frame"}}}

	// The request as the daemon reads it.
	p.send(t, marshal(t, frame), 0)
	got, err := fc.StreamCall(ctx, frameCall)
	if err != nil {
		t.Fatalf("StreamCall: %v", err)
	}
	if got.GetFrame().GetSlot() != 1 || got.GetFrame().GetMetadata().GetNumber() != 3 || got.GetFrame().GetReady().GetValue() != 3 {
		t.Errorf("frame %v", got)
	}
	buf := make([]byte, 4096)
	n, _, _, _, err := syscall.Recvmsg(p.server, buf, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var req pb.FdRequest
	if err := proto.Unmarshal(buf[:n], &req); err != nil || !proto.Equal(req.GetStream(), frameCall) {
		t.Errorf("request %v (%v)", &req, err)
	}

	drain := func() { _, _, _, _, _ = syscall.Recvmsg(p.server, buf, nil, 0) }
	for _, tc := range []struct {
		name  string
		reply *pb.FdReply
		fds   int
		code  codes.Code
		proto bool
	}{
		{"deadline", deadline, 0, codes.DeadlineExceeded, false},
		{"a frame with a descriptor", frame, 1, codes.Internal, true},
		{"a frame with 3 descriptors", frame, 3, codes.Internal, true},
		{"presented for acquire_frame", presented, 0, codes.Internal, true},
		{"a wait's reply", waitedReply, 0, codes.Internal, true},
		{"an error with a descriptor", deadline, 1, codes.Internal, true},
		{"an empty stream reply", &pb.FdReply{Reply: &pb.FdReply_Stream{Stream: &pb.StreamReply{}}}, 0, codes.Internal, true},
	} {
		p.send(t, marshal(t, tc.reply), tc.fds)
		frame, err := fc.AcquireFrame(ctx, frameCall.GetAcquireFrame())
		drain()
		var pe *ProtocolError
		if frame != nil || Code(err) != tc.code || errors.As(err, &pe) != tc.proto {
			t.Errorf("%s: got %v, %v; expected %s", tc.name, frame, err, tc.code)
		}
	}
	// Still in step after the errors.
	p.send(t, marshal(t, presented), 0)
	pr, err := fc.Present(ctx, &pb.PresentRequest{Handle: "role-0123", Slot: 1})
	if err != nil || pr.GetSequence() != 1 {
		t.Errorf("Present after the errors: %v, %v", pr, err)
	}
	if _, err := fc.StreamCall(ctx, &pb.StreamCall{}); err == nil {
		t.Errorf("an empty StreamCall: expected an error")
	}
	fc.Close()
	syscall.Close(p.server)
	if after := openFds(t); after != before {
		t.Errorf("%d descriptors open before, %d after", before, after)
	}
}
