package main

// The control-API scenarios: connect, session, resources.

import (
	"fmt"
	"os"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

// connect: GetInfo answers with a version and a device; fd.sock accepts a SOCK_SEQPACKET
// connection.
func scenarioConnect(e *env) error {
	c, err := dial(e)
	if err != nil {
		return err
	}
	defer c.Close()
	info, err := c.API().GetInfo(e.ctx, &pb.GetInfoRequest{})
	if err != nil {
		return failf("GetInfo: expected success, got %v", err)
	}
	if info.GetDaemonVersion() == "" {
		return failf("GetInfo: expected a non-empty daemon_version, got none")
	}
	if len(info.GetDevices()) == 0 {
		return failf("GetInfo: expected at least one device, got none")
	}
	fd, err := c.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a SOCK_SEQPACKET connection, got %v", err)
	}
	fd.Close()
	fmt.Fprintf(os.Stderr, "daemon %s, %d devices\n", info.GetDaemonVersion(), len(info.GetDevices()))
	return nil
}

// session: a session's id names it in later calls; no session and no pin is
// FAILED_PRECONDITION; closing the stream frees what the session held.
func scenarioSession(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	buf, err := c.api.CreateBuffer(c.session.Context(e.ctx), &pb.CreateBufferRequest{Size: 4096})
	if err != nil {
		return failf("CreateBuffer in session %s: expected success, got %v", c.session.ID(), err)
	}
	if _, err := c.api.DescribeResource(c.session.Context(e.ctx), &pb.ResourceRef{Id: buf.GetId()}); err != nil {
		return failf("DescribeResource %s: expected success, got %v", buf.GetId(), err)
	}
	_, err = c.api.CreateBuffer(e.ctx, &pb.CreateBufferRequest{Size: 4096, Pin: false})
	if err := expectCode("CreateBuffer without a session header, not pinned", err, codes.FailedPrecondition); err != nil {
		return err
	}
	c.session.Close()

	other, err := c.client.NewSession(e.ctx, "gpushare-conformance-go-second")
	if err != nil {
		return failf("a second Session: expected a session id, got %v", err)
	}
	defer other.Close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := c.api.DescribeResource(other.Context(e.ctx), &pb.ResourceRef{Id: buf.GetId()})
		if err != nil && gpushare.Code(err) == codes.NotFound {
			return nil
		}
		if err != nil && gpushare.Code(err) != codes.OK {
			return failf("DescribeResource after the session closed: expected NOT_FOUND, got %v", err)
		}
		if time.Now().After(deadline) {
			return failf("DescribeResource after the session closed: expected NOT_FOUND within 2 s, the buffer still exists")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resources: create, describe, list, name uniqueness, release.
func scenarioResources(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	name := fmt.Sprintf("conformance-go-%d", os.Getpid())
	buf, err := c.api.CreateBuffer(ctx, &pb.CreateBufferRequest{Size: 65536, Name: name})
	if err != nil {
		return failf("CreateBuffer 65536 named %s: expected success, got %v", name, err)
	}
	sem, err := c.api.CreateSemaphore(ctx, &pb.CreateSemaphoreRequest{InitialValue: 3})
	if err != nil {
		return failf("CreateSemaphore at 3: expected success, got %v", err)
	}
	got, err := c.api.DescribeResource(ctx, &pb.ResourceRef{Id: buf.GetId()})
	if err != nil {
		return failf("DescribeResource buffer: expected success, got %v", err)
	}
	if got.GetKind() != pb.ResourceKind_RESOURCE_KIND_BUFFER || got.GetBuffer().GetSize() != 65536 || got.GetName() != name {
		return failf("DescribeResource buffer: expected kind BUFFER, size 65536, name %s; got kind %s, size %d, name %q",
			name, got.GetKind(), got.GetBuffer().GetSize(), got.GetName())
	}
	got, err = c.api.DescribeResource(ctx, &pb.ResourceRef{Id: sem.GetId()})
	if err != nil {
		return failf("DescribeResource semaphore: expected success, got %v", err)
	}
	if got.GetKind() != pb.ResourceKind_RESOURCE_KIND_SEMAPHORE || got.GetSemaphore().GetValue() != 3 {
		return failf("DescribeResource semaphore: expected kind SEMAPHORE, value 3; got kind %s, value %d",
			got.GetKind(), got.GetSemaphore().GetValue())
	}
	list, err := c.api.ListResources(ctx, &pb.ListResourcesRequest{})
	if err != nil {
		return failf("ListResources: expected success, got %v", err)
	}
	listed := map[string]bool{}
	for _, r := range list.GetResources() {
		listed[r.GetId()] = true
	}
	if !listed[buf.GetId()] || !listed[sem.GetId()] {
		return failf("ListResources: expected %s and %s, got %d resources (buffer listed: %v, semaphore listed: %v)",
			buf.GetId(), sem.GetId(), len(list.GetResources()), listed[buf.GetId()], listed[sem.GetId()])
	}
	_, err = c.api.CreateBuffer(ctx, &pb.CreateBufferRequest{Size: 4096, Name: name})
	if err := expectCode("CreateBuffer with a name in use", err, codes.AlreadyExists); err != nil {
		return err
	}
	for _, r := range []*pb.Resource{buf, sem} {
		if _, err := c.api.ReleaseResource(ctx, &pb.ResourceRef{Id: r.GetId()}); err != nil {
			return failf("ReleaseResource %s %s: expected success, got %v", r.GetKind(), r.GetId(), err)
		}
	}
	for _, r := range []*pb.Resource{buf, sem} {
		_, err := c.api.DescribeResource(ctx, &pb.ResourceRef{Id: r.GetId()})
		if err := expectCode(fmt.Sprintf("DescribeResource %s after ReleaseResource", r.GetKind()), err, codes.NotFound); err != nil {
			return err
		}
	}
	return nil
}
