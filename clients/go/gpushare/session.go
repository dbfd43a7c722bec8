package gpushare

import (
	"context"
	"errors"
	"fmt"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/grpc/metadata"
)

// SessionHeader is the metadata key naming the calling session.
const SessionHeader = "x-gpushare-session"

// ErrNoSessionID: the Session stream's first message carried no session id.
var ErrNoSessionID = errors.New("gpushare: the session stream's first message has no session id")

// Session is a client session: an open Session stream. The references it takes (resources
// created or opened in it) are released when it ends: Close, the Client's Close, or the process
// exiting.
type Session struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why the stream ended; read after done is closed
}

// NewSession opens a Session stream and reads its id from the first message. ctx bounds that
// wait only; the session lives until Close.
func (c *Client) NewSession(ctx context.Context, clientName string) (*Session, error) {
	streamCtx, cancel := context.WithCancel(context.Background())
	stream, err := c.api.Session(streamCtx, &pb.SessionRequest{ClientName: clientName})
	if err != nil {
		cancel()
		return nil, err
	}
	type first struct {
		ev  *pb.SessionEvent
		err error
	}
	got := make(chan first, 1)
	go func() {
		ev, err := stream.Recv()
		got <- first{ev, err}
	}()
	var f first
	select {
	case f = <-got:
	case <-ctx.Done():
		cancel()
		<-got
		return nil, ctx.Err()
	}
	if f.err != nil {
		cancel()
		return nil, f.err
	}
	id := f.ev.GetStarted().GetSessionId()
	if id == "" {
		cancel()
		return nil, ErrNoSessionID
	}
	s := &Session{id: id, cancel: cancel, done: make(chan struct{})}
	// The daemon sends nothing more until it shuts down; reading on notices the stream's end.
	go func() {
		defer close(s.done)
		for {
			if _, err := stream.Recv(); err != nil {
				s.err = err
				return
			}
		}
	}()
	return s, nil
}

// ID is the session id (SessionStarted.session_id).
func (s *Session) ID() string { return s.id }

// Context returns ctx with the session's id in the x-gpushare-session metadata header.
func (s *Session) Context(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, SessionHeader, s.id)
}

// Done is closed once the stream has ended (Close, or the daemon shutting down).
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the stream ended, once Done is closed (a Canceled status after Close).
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close ends the session: the stream is cancelled, and the daemon releases the session's
// references and revokes its unredeemed tickets. It returns once the stream's goroutine has
// finished.
func (s *Session) Close() error {
	s.cancel()
	<-s.done
	return nil
}

func (s *Session) String() string { return fmt.Sprintf("session %s", s.id) }
