package gpushare

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FdError is the daemon's refusal of an fd.sock request (FdReply.error). Its code is a gRPC
// code: NOT_FOUND for an unknown, replayed or foreign ticket or id, DEADLINE_EXCEEDED for an
// expired ticket or a wait that ran out of time, and so on (see FdError in the proto).
type FdError struct {
	Code    codes.Code
	Message string
}

func (e *FdError) Error() string {
	return fmt.Sprintf("fd.sock: %s: %s", e.Code, e.Message)
}

// GRPCStatus makes status.Code and status.FromError see an *FdError like a gRPC error.
func (e *FdError) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// ProtocolError is an fd.sock reply that breaks the protocol: truncated (MSG_TRUNC, or
// MSG_CTRUNC: more descriptors than the control buffer had room for), carrying more or fewer
// descriptors than its kind does, not decoding as an FdReply, or of a kind that does not answer
// the request. Every descriptor that arrived with it has been closed. The connection stays
// usable: fd.sock is a SOCK_SEQPACKET socket, so one bad reply does not shift the next.
type ProtocolError struct {
	// What was wrong.
	Reason string
	// How many descriptors arrived with the reply (all closed).
	Closed int
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("fd.sock protocol error: %s (%d descriptors received and closed)", e.Reason, e.Closed)
}

// Code is the gRPC code of an error of this package or of a control-API call: the code of an
// *FdError or a gRPC status error, codes.Internal for a *ProtocolError, codes.OK for nil, and
// codes.Unknown for anything else.
func Code(err error) codes.Code {
	var fe *FdError
	if errors.As(err, &fe) {
		return fe.Code
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return codes.Internal
	}
	return status.Code(err)
}

// codeOf is the gRPC code of FdError.code (a google.rpc.Code number).
func codeOf(code int32) codes.Code {
	if code < 0 {
		return codes.Unknown
	}
	return codes.Code(code)
}
