package main

// The frame-stream scenario: stream.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

// streamBytes is round n's slot contents: byte[i] = (i + n) % 251.
func streamBytes(size, n int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte((i + n) % 251)
	}
	return b
}

// stream: CreateStream (the producer's session) and AttachConsumer (a second session) over
// gRPC; 3 rounds of AcquireSlot, Write, Present, AcquireFrame, Read, ReleaseFrame with the
// frame calls on fd.sock; then the refusals (an empty acquire, a release of a slot not held, an
// unknown handle), and ABORTED for the consumer once the producer detached.
func scenarioStream(e *env) error {
	const size = 4096
	prod, err := openConn(e)
	if err != nil {
		return err
	}
	defer prod.close()
	cons, err := openConn(e)
	if err != nil {
		return err
	}
	defer cons.close()
	pctx := prod.session.Context(e.ctx)
	cctx := cons.session.Context(e.ctx)

	att, err := prod.api.CreateStream(pctx, &pb.CreateStreamRequest{
		Slots: 2, Slot: &pb.CreateStreamRequest_BufferSize{BufferSize: size},
	})
	if err != nil {
		return failf("CreateStream (2 slots of 4096 bytes): expected success, got %v", err)
	}
	producer := att.GetHandle()
	if producer == "" || att.GetRole() != pb.StreamRole_STREAM_ROLE_PRODUCER || len(att.GetSlots()) != 2 {
		return failf("CreateStream: expected the producer's handle and 2 slots, got handle %q, role %s, %d slots",
			producer, att.GetRole(), len(att.GetSlots()))
	}
	slotIDs := make([]string, 2)
	for i, s := range att.GetSlots() {
		if !strings.HasPrefix(s.GetResourceId(), "buf-") {
			return failf("CreateStream: expected slot %d's buffer id, got %q", i, s.GetResourceId())
		}
		slotIDs[i] = s.GetResourceId()
	}
	catt, err := cons.api.AttachConsumer(cctx, &pb.AttachConsumerRequest{
		StreamId: att.GetStream().GetId(), Mode: pb.DeliveryMode_DELIVERY_MODE_FIFO, Limit: 1,
	})
	if err != nil {
		return failf("AttachConsumer (FIFO, limit 1) from a second session: expected success, got %v", err)
	}
	consumer := catt.GetHandle()
	if consumer == "" || catt.GetRole() != pb.StreamRole_STREAM_ROLE_CONSUMER {
		return failf("AttachConsumer: expected a consumer's handle, got %q, role %s", consumer, catt.GetRole())
	}

	pfd, err := prod.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer pfd.Close()
	cfd, err := cons.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer cfd.Close()

	for n := 1; n <= 3; n++ {
		grant, err := pfd.AcquireSlot(e.ctx, &pb.AcquireRequest{Handle: producer, TimeoutMs: 2000})
		if err != nil {
			return failf("round %d: AcquireSlot on fd.sock (2000 ms): expected a slot, got %v", n, err)
		}
		slot := grant.GetSlot()
		if slot >= 2 {
			return failf("round %d: AcquireSlot: expected slot 0 or 1, got %d", n, slot)
		}
		want := streamBytes(size, n)
		if _, err := prod.api.Write(pctx, &pb.WriteRequest{BufferId: slotIDs[slot], Data: want}); err != nil {
			return failf("round %d: Write 4096 bytes into slot %d (%s): expected success, got %v", n, slot, slotIDs[slot], err)
		}
		pres, err := pfd.Present(e.ctx, &pb.PresentRequest{
			Handle: producer, Slot: slot, ReadyValue: 0, Metadata: &pb.FrameMetadata{Number: uint64(n)},
		})
		if err != nil {
			return failf("round %d: Present slot %d on fd.sock: expected presented, got %v", n, slot, err)
		}
		if pres.GetSequence() != uint64(n) {
			return failf("round %d: Present: expected sequence %d, got %d", n, n, pres.GetSequence())
		}
		frame, err := cfd.AcquireFrame(e.ctx, &pb.AcquireRequest{Handle: consumer, TimeoutMs: 2000})
		if err != nil {
			return failf("round %d: AcquireFrame on fd.sock (2000 ms): expected a frame, got %v", n, err)
		}
		if frame.GetMetadata().GetNumber() != uint64(n) || frame.GetSlot() != slot {
			return failf("round %d: AcquireFrame: expected metadata.number %d in slot %d, got number %d in slot %d",
				n, n, slot, frame.GetMetadata().GetNumber(), frame.GetSlot())
		}
		read, err := cons.api.Read(cctx, &pb.ReadRequest{BufferId: slotIDs[slot], Length: size})
		if err != nil {
			return failf("round %d: Read slot %d: expected success, got %v", n, slot, err)
		}
		if i := firstDifference(read.GetData(), want); i >= 0 {
			return failf("round %d: Read slot %d: expected byte[i] = (i + %d) %% 251, differs at byte %d (%d bytes read)",
				n, slot, n, i, len(read.GetData()))
		}
		rel, err := cfd.ReleaseFrame(e.ctx, &pb.ReleaseFrameRequest{Handle: consumer, Slot: slot, ReleaseValue: 0})
		if err != nil {
			return failf("round %d: ReleaseFrame slot %d on fd.sock: expected released, got %v", n, slot, err)
		}
		fmt.Fprintf(os.Stderr, "round %d: slot %d, sequence %d, ready_value %d, release_value %d\n",
			n, slot, pres.GetSequence(), pres.GetReadyValue(), rel.GetReleaseValue())
	}

	_, err = cfd.AcquireFrame(e.ctx, &pb.AcquireRequest{Handle: consumer, TimeoutMs: 0})
	if err := expectFdCode("AcquireFrame (0 ms) with no frame presented", err, codes.DeadlineExceeded); err != nil {
		return err
	}
	_, err = cfd.ReleaseFrame(e.ctx, &pb.ReleaseFrameRequest{Handle: consumer, Slot: 0})
	if err := expectFdCode("ReleaseFrame of slot 0, not held", err, codes.FailedPrecondition); err != nil {
		return err
	}
	_, err = pfd.AcquireSlot(e.ctx, &pb.AcquireRequest{Handle: "role-" + strings.Repeat("0", 32), TimeoutMs: 0})
	if err := expectFdCode("AcquireSlot of the handle role-000...0", err, codes.NotFound); err != nil {
		return err
	}

	if _, err := prod.api.Detach(pctx, &pb.StreamHandle{Handle: producer}); err != nil {
		return failf("Detach the producer: expected success, got %v", err)
	}
	actx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	_, err = cfd.AcquireFrame(actx, &pb.AcquireRequest{Handle: consumer, TimeoutMs: 2000})
	return expectFdCode("AcquireFrame (2000 ms) after the producer detached", err, codes.Aborted)
}

// expectFdCode is expectCode for an fd.sock call, whose refusal must be an *gpushare.FdError
// (not a protocol or I/O error that happens to map to the code).
func expectFdCode(what string, err error, want codes.Code) error {
	if err := expectCode(what, err, want); err != nil {
		return err
	}
	if _, ok := err.(*gpushare.FdError); !ok {
		return failf("%s: expected an FdError %s, got %T (%v)", what, codeName(want), err, err)
	}
	return nil
}
