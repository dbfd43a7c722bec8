// Command example walks through the Go client against a running daemon: a buffer and a
// semaphore in a session, bytes written through the daemon, the buffer exported as a ticket and
// redeemed on fd.sock (the descriptor checked with fstat and the import metadata; Go does no
// Vulkan import), the bytes read back, and the semaphore signaled and waited on, over gRPC and
// over fd.sock. It runs on any daemon, lavapipe's included.
//
//	GPUSHARE_RUNTIME_DIR=/tmp/gpushare bin/example
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "example: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := gpushare.Dial("") // $GPUSHARE_RUNTIME_DIR, $XDG_RUNTIME_DIR/gpushare, /run/gpushare
	if err != nil {
		return err
	}
	defer client.Close()
	api := client.API()
	info, err := api.GetInfo(ctx, &pb.GetInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetInfo: %w", err)
	}
	fmt.Printf("daemon %s in %s, device 0: %s\n", info.GetDaemonVersion(), client.RuntimeDir(), info.GetDevices()[0].GetName())

	session, err := client.NewSession(ctx, "gpushare-go-example")
	if err != nil {
		return fmt.Errorf("Session: %w", err)
	}
	defer session.Close() // releases the buffer and the semaphore
	sctx := session.Context(ctx)

	buf, err := api.CreateBuffer(sctx, &pb.CreateBufferRequest{Size: 1 << 16, Name: fmt.Sprintf("go-example-%d", os.Getpid())})
	if err != nil {
		return fmt.Errorf("CreateBuffer: %w", err)
	}
	sem, err := api.CreateSemaphore(sctx, &pb.CreateSemaphoreRequest{InitialValue: 0})
	if err != nil {
		return fmt.Errorf("CreateSemaphore: %w", err)
	}
	fmt.Printf("buffer %s (%d bytes), semaphore %s (exportable: %v)\n",
		buf.GetId(), buf.GetBuffer().GetSize(), sem.GetId(), sem.GetSemaphore().GetExportable())

	// Write through the daemon, then signal the semaphore to 1 once the write is done.
	message := []byte("hello from the Go client of gpushare")
	_, err = api.Write(sctx, &pb.WriteRequest{BufferId: buf.GetId(), Offset: 0, Data: message,
		Sync: &pb.Sync{Signal: []*pb.SemaphorePoint{{SemaphoreId: sem.GetId(), Value: 1}}}})
	if err != nil {
		return fmt.Errorf("Write: %w", err)
	}

	// Export: a one-time ticket, which any process of this uid can redeem on fd.sock.
	ticket, err := api.Export(sctx, &pb.ResourceRef{Id: buf.GetId()})
	if err != nil {
		return fmt.Errorf("Export: %w", err)
	}
	fd, err := client.DialFd(ctx)
	if err != nil {
		return fmt.Errorf("fd.sock: %w", err)
	}
	defer fd.Close()
	exported, err := fd.Redeem(ctx, ticket.GetTicket())
	if err != nil {
		return fmt.Errorf("redeem: %w", err)
	}
	err = describeDescriptor(exported, buf.GetBuffer().GetSize())
	exported.File.Close() // a Vulkan or CUDA importer would take the fd instead
	if err != nil {
		return err
	}

	// Read back, waiting for the write's signal.
	read, err := api.Read(sctx, &pb.ReadRequest{BufferId: buf.GetId(), Offset: 0, Length: uint64(len(message)),
		Sync: &pb.Sync{Wait: []*pb.SemaphorePoint{{SemaphoreId: sem.GetId(), Value: 1}}, TimeoutMs: 5000}})
	if err != nil {
		return fmt.Errorf("Read: %w", err)
	}
	if !bytes.Equal(read.GetData(), message) {
		return fmt.Errorf("read back %q, wrote %q", read.GetData(), message)
	}
	fmt.Printf("read back: %q\n", read.GetData())

	// Host signal and waits: over gRPC, and over fd.sock (the low-latency path).
	if _, err := api.Signal(sctx, &pb.SignalRequest{Id: sem.GetId(), Value: 2}); err != nil {
		return fmt.Errorf("Signal: %w", err)
	}
	v, err := api.Wait(sctx, &pb.WaitRequest{Id: sem.GetId(), Value: 2, TimeoutMs: 1000})
	if err != nil {
		return fmt.Errorf("Wait: %w", err)
	}
	go func() {
		time.Sleep(10 * time.Millisecond)
		if _, err := api.Signal(sctx, &pb.SignalRequest{Id: sem.GetId(), Value: 3}); err != nil {
			fmt.Fprintf(os.Stderr, "example: Signal(3): %v\n", err)
		}
	}()
	v3, err := fd.Wait(ctx, sem.GetId(), 3, 5000, 0)
	if err != nil {
		return fmt.Errorf("fd.sock wait: %w", err)
	}
	fmt.Printf("semaphore: waited %d over gRPC, %d over fd.sock\n", v.GetValue(), v3)
	return nil
}

// describeDescriptor checks a buffer's descriptor with fstat and its import metadata.
func describeDescriptor(exp *gpushare.Exported, size uint64) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(exp.File.Fd()), &st); err != nil {
		return fmt.Errorf("fstat on the exported descriptor: %w", err)
	}
	b := exp.Info.GetBuffer()
	if exp.Info.GetKind() != pb.ResourceKind_RESOURCE_KIND_BUFFER || b.GetSize() != size || b.GetAllocationSize() < size {
		return fmt.Errorf("export metadata: kind %s, size %d, allocation size %d; want a buffer of %d bytes",
			exp.Info.GetKind(), b.GetSize(), b.GetAllocationSize(), size)
	}
	fmt.Printf("descriptor %d: %s, size %d, allocation size %d, memory type %d, handle type %s, fstat mode %#o\n",
		exp.File.Fd(), exp.Info.GetKind(), b.GetSize(), b.GetAllocationSize(), b.GetMemoryTypeIndex(),
		exp.Info.GetHandleType(), st.Mode)
	return nil
}
