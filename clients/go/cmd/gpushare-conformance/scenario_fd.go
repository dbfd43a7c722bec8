package main

// The scenarios around descriptors: export-redeem (and its redeem-child process), tickets,
// foreign, extra-fds.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"example.invalid/gpushare/clients/go/gpushare"
	"google.golang.org/grpc/codes"
)

const exportSize = 1 << 20

// export-redeem: a ticket redeemed by a second process; a direct export; the bytes written
// before read back.
func scenarioExportRedeem(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	buf, err := c.api.CreateBuffer(ctx, &pb.CreateBufferRequest{Size: exportSize})
	if err != nil {
		return failf("CreateBuffer 1 MiB: expected success, got %v", err)
	}
	want := pattern(4096)
	if _, err := c.api.Write(ctx, &pb.WriteRequest{BufferId: buf.GetId(), Offset: 0, Data: want}); err != nil {
		return failf("Write 4096 bytes: expected success, got %v", err)
	}
	ticket, err := c.api.Export(ctx, &pb.ResourceRef{Id: buf.GetId()})
	if err != nil {
		return failf("Export: expected a ticket, got %v", err)
	}

	child := exec.CommandContext(e.ctx, "/proc/self/exe", "redeem-child",
		hex.EncodeToString(ticket.GetTicket()), buf.GetId(), strconv.Itoa(exportSize))
	child.Stdout = os.Stderr // the child's output goes to the log
	child.Stderr = os.Stderr
	if err := child.Run(); err != nil {
		return failf("redeem-child: expected exit 0, got %v", err)
	}

	fd, err := c.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()
	exp, err := fd.Export(e.ctx, buf.GetId())
	if err != nil {
		return failf("fd.sock export %s: expected a descriptor, got %v", buf.GetId(), err)
	}
	err = checkBufferExport("fd.sock export", exp, buf.GetId(), exportSize)
	exp.File.Close()
	if err != nil {
		return err
	}

	read, err := c.api.Read(ctx, &pb.ReadRequest{BufferId: buf.GetId(), Offset: 0, Length: 4096})
	if err != nil {
		return failf("Read 4096 bytes: expected success, got %v", err)
	}
	if i := firstDifference(read.GetData(), want); i >= 0 {
		return failf("Read: expected the pattern written, got %d bytes differing first at byte %d", len(read.GetData()), i)
	}
	return nil
}

// redeemChild is the second process of export-redeem: it redeems the ticket and checks the
// descriptor and its metadata.
func redeemChild(e *env, ticketHex, id, sizeArg string) error {
	ticket, err := hex.DecodeString(ticketHex)
	if err != nil {
		return failf("redeem-child: expected a hex ticket, got %q: %v", ticketHex, err)
	}
	size, err := strconv.ParseUint(sizeArg, 10, 64)
	if err != nil {
		return failf("redeem-child: expected a size, got %q: %v", sizeArg, err)
	}
	fd, err := gpushare.DialFd(e.ctx, gpushare.FdSocket(e.runtimeDir))
	if err != nil {
		return failf("redeem-child: fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()
	exp, err := fd.Redeem(e.ctx, ticket)
	if err != nil {
		// One descriptor exactly is enforced by the receive: more or fewer is a protocol error.
		return failf("redeem-child: redeem: expected one descriptor, got %v", err)
	}
	defer exp.File.Close()
	return checkBufferExport("redeem-child", exp, id, size)
}

// tickets: unknown, replayed and expired tickets.
func scenarioTickets(e *env) error {
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	fd, err := c.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()

	_, err = fd.Redeem(e.ctx, randomBytes(16))
	if err := expectCode("redeeming 16 random bytes", err, codes.NotFound); err != nil {
		return err
	}
	buf, err := c.api.CreateBuffer(ctx, &pb.CreateBufferRequest{Size: 4096})
	if err != nil {
		return failf("CreateBuffer: expected success, got %v", err)
	}
	ticket, err := c.api.Export(ctx, &pb.ResourceRef{Id: buf.GetId()})
	if err != nil {
		return failf("Export: expected a ticket, got %v", err)
	}
	exp, err := fd.Redeem(e.ctx, ticket.GetTicket())
	if err != nil {
		return failf("redeem: expected a descriptor, got %v", err)
	}
	exp.File.Close()
	_, err = fd.Redeem(e.ctx, ticket.GetTicket())
	if err := expectCode("redeeming a ticket a second time", err, codes.NotFound); err != nil {
		return err
	}

	ttl, err := ticketTTL(e, c)
	if err != nil {
		return err
	}
	ticket, err = c.api.Export(ctx, &pb.ResourceRef{Id: buf.GetId()})
	if err != nil {
		return failf("Export again: expected a ticket, got %v", err)
	}
	time.Sleep(ttl + 500*time.Millisecond)
	_, err = fd.Redeem(e.ctx, ticket.GetTicket())
	return expectCode(fmt.Sprintf("redeeming a ticket %v after its export (ttl %v)", ttl+500*time.Millisecond, ttl),
		err, codes.DeadlineExceeded)
}

// ticketTTL is GPUSHARE_CONFORMANCE_TICKET_TTL_MS, else the daemon's limits.ticket_ttl_ms.
func ticketTTL(e *env, c *conn) (time.Duration, error) {
	if v := os.Getenv("GPUSHARE_CONFORMANCE_TICKET_TTL_MS"); v != "" {
		ms, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return 0, failf("GPUSHARE_CONFORMANCE_TICKET_TTL_MS: expected milliseconds, got %q", v)
		}
		return time.Duration(ms) * time.Millisecond, nil
	}
	info, err := c.api.GetInfo(e.ctx, &pb.GetInfoRequest{})
	if err != nil {
		return 0, failf("GetInfo: expected success, got %v", err)
	}
	return time.Duration(info.GetLimits().GetTicketTtlMs()) * time.Millisecond, nil
}

// foreign: another uid's pinned buffer reads NOT_FOUND everywhere, like an id that never
// existed.
func scenarioForeign(e *env) error {
	id := os.Getenv("GPUSHARE_CONFORMANCE_FOREIGN_ID")
	if id == "" {
		return &skip{reason: "GPUSHARE_CONFORMANCE_FOREIGN_ID is unset (the harness is not root)"}
	}
	c, err := openConn(e)
	if err != nil {
		return err
	}
	defer c.close()
	ctx := c.session.Context(e.ctx)
	_, err = c.api.DescribeResource(ctx, &pb.ResourceRef{Id: id})
	if err := expectCode("DescribeResource on another uid's buffer", err, codes.NotFound); err != nil {
		return err
	}
	_, err = c.api.Export(ctx, &pb.ResourceRef{Id: id})
	if err := expectCode("Export of another uid's buffer", err, codes.NotFound); err != nil {
		return err
	}
	fd, err := c.client.DialFd(e.ctx)
	if err != nil {
		return failf("fd.sock: expected a connection, got %v", err)
	}
	defer fd.Close()
	exp, err := fd.Export(e.ctx, id)
	if err == nil {
		exp.File.Close()
	}
	return expectCode("fd.sock export of another uid's buffer", err, codes.NotFound)
}

// extra-fds: a hostile fd.sock server answers with 3, 0 and 64 descriptors; each reply is a
// protocol error and every descriptor that arrived is closed (the leak check after the
// scenario counts them).
func scenarioExtraFds(e *env) error {
	path := os.Getenv("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK")
	if path == "" {
		return failf("GPUSHARE_CONFORMANCE_HOSTILE_FD_SOCK: expected the hostile server's path, got nothing")
	}
	fd, err := gpushare.DialFd(e.ctx, path)
	if err != nil {
		return failf("hostile fd.sock %s: expected a connection, got %v", path, err)
	}
	defer fd.Close()
	for i, sent := range []string{"3 descriptors", "no descriptor", "64 descriptors"} {
		exp, err := fd.Redeem(e.ctx, randomBytes(16))
		if err == nil {
			exp.File.Close()
			return failf("redeem %d (the server sends %s): expected a protocol error, got success", i+1, sent)
		}
		var pe *gpushare.ProtocolError
		if !errors.As(err, &pe) {
			return failf("redeem %d (the server sends %s): expected a protocol error, got %v", i+1, sent, err)
		}
		fmt.Fprintf(os.Stderr, "redeem %d (the server sends %s): %v\n", i+1, sent, pe)
	}
	return nil
}
