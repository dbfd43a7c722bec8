package main

// The semaphore scenarios: host-sync, fd-wait, ops.

import (
	"context"
	"strings"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

// createSemaphore makes a semaphore at 0 in the conn's session.
func createSemaphore(e *env, c *conn) (string, error) {
	sem, err := c.api.CreateSemaphore(c.session.Context(e.ctx), &pb.CreateSemaphoreRequest{InitialValue: 0})
	if err != nil {
		return "", failf("CreateSemaphore at 0: expected success, got %v", err)
	}
	return sem.GetId(), nil
}

// host-sync: Signal, GetValue, Watch and Wait over gRPC.
func scenarioHostSync(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	sem, err := createSemaphore(e, c)
	if err != nil {
		return err
	}
	v, err := c.api.Signal(ctx, &pb.SignalRequest{Id: sem, Value: 5})
	if err != nil || v.GetValue() != 5 {
		return failf("Signal(5): expected 5, got %v, %v", v.GetValue(), err)
	}
	v, err = c.api.GetValue(ctx, &pb.ResourceRef{Id: sem})
	if err != nil || v.GetValue() != 5 {
		return failf("GetValue: expected 5, got %v, %v", v.GetValue(), err)
	}
	_, err = c.api.Signal(ctx, &pb.SignalRequest{Id: sem, Value: 5})
	if err := expectCode("Signal(5) at 5", err, codes.FailedPrecondition); err != nil {
		return err
	}

	if err := watchTo9(e, c, sem); err != nil {
		return err
	}

	start := time.Now()
	v, err = c.api.Wait(ctx, &pb.WaitRequest{Id: sem, Value: 9, TimeoutMs: 1000})
	if err != nil || v.GetValue() < 9 {
		return failf("Wait(9, 1000 ms) at 9: expected a value >= 9, got %v, %v", v.GetValue(), err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		return failf("Wait(9, 1000 ms) at 9: expected an answer at once, it took %v", took)
	}
	_, err = c.api.Wait(ctx, &pb.WaitRequest{Id: sem, Value: 20, TimeoutMs: 100})
	return expectCode("Wait(20, 100 ms) at 9", err, codes.DeadlineExceeded)
}

// watchTo9 starts a Watch, signals 7 and 9, and reads non-decreasing values up to 9 within 2 s.
func watchTo9(e *env, c *conn, sem string) error {
	watchCtx, cancel := context.WithTimeout(c.session.Context(e.ctx), 2*time.Second)
	defer cancel()
	watch, err := c.api.Watch(watchCtx, &pb.ResourceRef{Id: sem})
	if err != nil {
		return failf("Watch: expected a stream, got %v", err)
	}
	// The first message is the current value: once it came, the watch is in place.
	first, err := watch.Recv()
	if err != nil {
		return failf("Watch: expected the current value, got %v", err)
	}
	for _, value := range []uint64{7, 9} {
		if _, err := c.api.Signal(c.session.Context(e.ctx), &pb.SignalRequest{Id: sem, Value: value}); err != nil {
			return failf("Signal(%d): expected success, got %v", value, err)
		}
	}
	seen := []uint64{first.GetValue()}
	for last := first.GetValue(); last < 9; {
		v, err := watch.Recv()
		if err != nil {
			return failf("Watch: expected values up to 9 within 2 s, got %v then %v", seen, err)
		}
		if v.GetValue() < last {
			return failf("Watch: expected non-decreasing values, got %v then %d", seen, v.GetValue())
		}
		last = v.GetValue()
		seen = append(seen, last)
	}
	cancel()
	// The stream ends with CANCELED once the cancellation reached it.
	for {
		if _, err := watch.Recv(); err != nil {
			return nil
		}
	}
}

// fd-wait: host waits on fd.sock.
func scenarioFdWait(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	sem, err := createSemaphore(e, c)
	if err != nil {
		return err
	}
	fd, err := c.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()

	signaled := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, err := c.api.Signal(c.session.Context(e.ctx), &pb.SignalRequest{Id: sem, Value: 3})
		signaled <- err
	}()
	v, err := fd.Wait(e.ctx, sem, 3, 5000, 0)
	if serr := <-signaled; serr != nil {
		return failf("Signal(3) from another goroutine: expected success, got %v", serr)
	}
	if err != nil || v < 3 {
		return failf("fd.sock wait for 3: expected waited >= 3, got %d, %v", v, err)
	}
	_, err = fd.Wait(e.ctx, sem, 100, 50, 0)
	if err := expectCode("fd.sock wait for 100, timeout 50 ms", err, codes.DeadlineExceeded); err != nil {
		return err
	}
	// An id that does not exist: well formed ("sem-" and 32 hex digits, the daemon's shape).
	// The contract's bare "0" * 32 is malformed to the daemon, which answers INVALID_ARGUMENT.
	unknown := "sem-" + strings.Repeat("0", 32)
	_, err = fd.Wait(e.ctx, unknown, 1, 50, 0)
	return expectCode("fd.sock wait on a semaphore that does not exist", err, codes.NotFound)
}

// ops: Write, Fill and Read ordered by wait and signal points.
func scenarioOps(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	buf, err := c.api.CreateBuffer(ctx, &pb.CreateBufferRequest{Size: 4096})
	if err != nil {
		return failf("CreateBuffer 4096: expected success, got %v", err)
	}
	sem, err := createSemaphore(e, c)
	if err != nil {
		return err
	}
	if _, err := c.api.Signal(ctx, &pb.SignalRequest{Id: sem, Value: 1}); err != nil {
		return failf("Signal(1): expected success, got %v", err)
	}
	point := func(v uint64) []*pb.SemaphorePoint {
		return []*pb.SemaphorePoint{{SemaphoreId: sem, Value: v}}
	}
	sync := func(wait, signal uint64) *pb.Sync {
		s := &pb.Sync{Wait: point(wait), TimeoutMs: 10000}
		if signal > 0 {
			s.Signal = point(signal)
		}
		return s
	}
	want := pattern(4096)
	if _, err := c.api.Write(ctx, &pb.WriteRequest{BufferId: buf.GetId(), Data: want, Sync: sync(1, 2)}); err != nil {
		return failf("Write waiting (sem, 1), signaling (sem, 2): expected success, got %v", err)
	}
	v, err := c.api.GetValue(ctx, &pb.ResourceRef{Id: sem})
	if err != nil || v.GetValue() < 2 {
		return failf("GetValue after the Write: expected >= 2, got %d, %v", v.GetValue(), err)
	}
	if _, err := c.api.Fill(ctx, &pb.FillRequest{BufferId: buf.GetId(), Offset: 1024, Length: 1024,
		Value: 0xABABABAB, Sync: sync(2, 3)}); err != nil {
		return failf("Fill 1024..2048 waiting (sem, 2), signaling (sem, 3): expected success, got %v", err)
	}
	for i := 1024; i < 2048; i++ {
		want[i] = 0xAB
	}
	read, err := c.api.Read(ctx, &pb.ReadRequest{BufferId: buf.GetId(), Length: 4096, Sync: sync(3, 0)})
	if err != nil {
		return failf("Read waiting (sem, 3): expected success, got %v", err)
	}
	if i := firstDifference(read.GetData(), want); i >= 0 {
		return failf("Read: expected the pattern with 1024..2048 filled, got %d bytes differing first at byte %d", len(read.GetData()), i)
	}
	_, err = c.api.Write(ctx, &pb.WriteRequest{BufferId: buf.GetId(), Data: want[:16],
		Sync: &pb.Sync{Signal: point(3), TimeoutMs: 10000}})
	if code := gpushare.Code(err); code != codes.InvalidArgument && code != codes.FailedPrecondition {
		return failf("Write signaling (sem, 3) at 3: expected INVALID_ARGUMENT or FAILED_PRECONDITION, got %s (%v)", codeName(code), err)
	}
	return nil
}
