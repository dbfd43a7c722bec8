package main

// The fast-path scenario: the CUDA fast path's surface (GetInfo's fast_path, a semaphore made
// with a memop word and a signal path, an fd.sock export that asks for the word, Open with a
// signal path). No CUDA is needed: where the device does not offer the fast path, the semaphore
// is made without a word and says why.

import (
	"fmt"
	"os"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

func scenarioFastPath(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)

	info, err := c.api.GetInfo(e.ctx, &pb.GetInfoRequest{})
	if err != nil {
		return failf("GetInfo: expected success, got %v", err)
	}
	if len(info.GetDevices()) == 0 {
		return failf("GetInfo: expected at least one device, got none")
	}
	var device0 *pb.DeviceInfo
	for _, d := range info.GetDevices() {
		fp := d.GetFastPath()
		if fp == nil {
			return failf("GetInfo: expected fast_path set on every device, device %d has none", d.GetIndex())
		}
		if !fp.GetOffered() && fp.GetUnavailable() == "" {
			return failf("GetInfo: device %d: expected a non-empty unavailable where the fast path is not offered, got none",
				d.GetIndex())
		}
		if d.GetIndex() == 0 && device0 == nil {
			device0 = d
		}
		fmt.Fprintf(os.Stderr, "device %d: fast_path offered %v, unavailable %q\n",
			d.GetIndex(), fp.GetOffered(), fp.GetUnavailable())
	}
	if device0 == nil {
		return failf("GetInfo: expected a device with index 0 (the one CreateSemaphore's default names), got none")
	}
	offered := device0.GetFastPath().GetOffered()

	sem, err := c.api.CreateSemaphore(ctx, &pb.CreateSemaphoreRequest{
		InitialValue: 2, Word: true, SignalPath: pb.SignalPath_SIGNAL_PATH_WORD,
	})
	if err != nil {
		return failf("CreateSemaphore at 2 with word and SIGNAL_PATH_WORD: expected success, got %v", err)
	}
	got, err := c.api.DescribeResource(ctx, &pb.ResourceRef{Id: sem.GetId()})
	if err != nil {
		return failf("DescribeResource %s: expected success, got %v", sem.GetId(), err)
	}
	details := got.GetSemaphore()
	if got.GetKind() != pb.ResourceKind_RESOURCE_KIND_SEMAPHORE || details == nil || details.GetValue() != 2 {
		return failf("DescribeResource: expected kind SEMAPHORE with value 2, got kind %s, details %v",
			got.GetKind(), details)
	}
	word, why := details.GetWord(), details.GetWordUnavailable()
	if word != (why == "") {
		return failf("DescribeResource: expected word true with an empty word_unavailable or word false with a reason, got word %v, word_unavailable %q",
			word, why)
	}
	if want := offered && details.GetExportable(); word != want {
		return failf("DescribeResource: expected word %v (device 0's fast_path.offered %v, exportable %v), got %v",
			want, offered, details.GetExportable(), word)
	}
	fmt.Fprintf(os.Stderr, "semaphore %s: exportable %v, word %v, word_unavailable %q\n",
		sem.GetId(), details.GetExportable(), word, why)

	bad, err := c.api.CreateSemaphore(ctx, &pb.CreateSemaphoreRequest{SignalPath: pb.SignalPath(7)})
	if err == nil {
		_, _ = c.api.ReleaseResource(ctx, &pb.ResourceRef{Id: bad.GetId()}) // the session would anyway
	}
	if err := expectCode("CreateSemaphore with signal_path 7", err, codes.InvalidArgument); err != nil {
		return err
	}

	fd, err := c.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()
	exp, err := fd.ExportWord(e.ctx, sem.GetId())
	if !details.GetExportable() {
		if err == nil {
			exp.Close()
		}
		if err := expectCode("fd.sock export with word of a semaphore that is not exportable", err, codes.FailedPrecondition); err != nil {
			return err
		}
	} else {
		if err != nil {
			// The receive enforces the count: the metadata's announced descriptors, exactly.
			return failf("fd.sock export with word: expected exported, got %v", err)
		}
		err = checkWordExport(exp, sem.GetId(), word)
		exp.Close()
		if err != nil {
			return err
		}
	}

	other, err := c.client.NewSession(e.ctx, fmt.Sprintf("gpushare-conformance-go-%d-second", os.Getpid()))
	if err != nil {
		return failf("a second Session: expected a session id, got %v", err)
	}
	_, err = c.api.Open(other.Context(e.ctx), &pb.OpenRequest{
		Target: &pb.OpenRequest_Id{Id: sem.GetId()}, Signal: true, SignalPath: pb.SignalPath_SIGNAL_PATH_SEMAPHORE,
	})
	other.Close()
	if err != nil {
		return failf("Open %s in a second session with signal and SIGNAL_PATH_SEMAPHORE: expected success, got %v", sem.GetId(), err)
	}
	if _, err := c.api.ReleaseResource(ctx, &pb.ResourceRef{Id: sem.GetId()}); err != nil {
		return failf("ReleaseResource %s: expected success, got %v", sem.GetId(), err)
	}
	return nil
}

// checkWordExport checks an exported semaphore asked for with its word: word_exists as the details
// say, value 2, and the word's buffer (descriptor and metadata) exactly when it has one.
func checkWordExport(exp *gpushare.Exported, id string, word bool) error {
	info := exp.Info
	s := info.GetSemaphore()
	if info.GetResourceId() != id || info.GetKind() != pb.ResourceKind_RESOURCE_KIND_SEMAPHORE || s == nil {
		return failf("fd.sock export with word: expected semaphore %s, got %s %q (details %v)",
			id, info.GetKind(), info.GetResourceId(), s)
	}
	if s.GetWordExists() != word || s.GetValue() != 2 {
		return failf("fd.sock export with word: expected word_exists %v and value 2, got word_exists %v, value %d",
			word, s.GetWordExists(), s.GetValue())
	}
	if word {
		if exp.Word == nil || s.GetWord() == nil {
			return failf("fd.sock export with word: expected two descriptors and semaphore.word set, got word descriptor %v, semaphore.word %v",
				exp.Word != nil, s.GetWord())
		}
		if s.GetWord().GetAllocationSize() < 8 {
			return failf("fd.sock export with word: expected semaphore.word.allocation_size >= 8, got %d",
				s.GetWord().GetAllocationSize())
		}
	} else if exp.Word != nil || s.GetWord() != nil {
		return failf("fd.sock export with word of a semaphore without one: expected one descriptor and semaphore.word unset, got word descriptor %v, semaphore.word %v",
			exp.Word != nil, s.GetWord())
	}
	fmt.Fprintf(os.Stderr, "fd.sock export with word: descriptor %d, word descriptor present %v\n", exp.File.Fd(), exp.Word != nil)
	return nil
}
