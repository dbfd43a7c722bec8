package gpushare

import (
	"context"
	"net"

	pb "example.invalid/gpushare/clients/go/gen/gpushare/v1"
	"google.golang.org/grpc"
)

// MaxRecvMsgSize bounds the replies the client accepts: 64 MiB, above the daemon's largest
// Read/ReadImage reply (Limits.max_transfer_size, 32 MiB by default) plus framing. grpc-go's
// own default, 4 MiB, would refuse large reads.
const MaxRecvMsgSize = 64 << 20

// Client is a connection to the daemon's control.sock. It is safe for concurrent use.
type Client struct {
	conn       *grpc.ClientConn
	api        pb.GpuShareClient
	runtimeDir string
}

// Dial connects to unix:<runtimeDir>/control.sock (runtimeDir "" means RuntimeDir()).
//
// With grpc-go 1.33 (Debian 12) the "unix" scheme has no resolver of its own (it came in
// 1.34), so the target falls back to the passthrough resolver; because the target starts with
// "unix:", grpc-go 1.33 sends "localhost" as the HTTP/2 authority (grpc-go #3730), which
// the daemon accepts like any authority. The connection itself is made by a context dialer
// that dials the socket path as given, so the path is never URL-parsed (a '%' or '?' in it
// would otherwise change the address grpc-go dials). Like grpc.Dial, this does not wait for the
// connection: the first call reports an unreachable daemon (UNAVAILABLE).
func Dial(runtimeDir string, opts ...grpc.DialOption) (*Client, error) {
	if runtimeDir == "" {
		runtimeDir = RuntimeDir()
	}
	path := ControlSocket(runtimeDir)
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	all := append([]grpc.DialOption{
		grpc.WithInsecure(), // a Unix socket: the daemon authorizes by peer credentials
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)),
	}, opts...)
	conn, err := grpc.Dial("unix:"+path, all...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, api: pb.NewGpuShareClient(conn), runtimeDir: runtimeDir}, nil
}

// API is the generated stub: every RPC of gpushare.v1.GpuShare. Calls that take references
// (Create*, Open, and those releasing a session's reference) name a session: pass
// Session.Context(ctx).
func (c *Client) API() pb.GpuShareClient { return c.api }

// RuntimeDir is the runtime directory this client connected in.
func (c *Client) RuntimeDir() string { return c.runtimeDir }

// DialFd opens a connection to the fd.sock of this client's runtime directory.
func (c *Client) DialFd(ctx context.Context) (*FdConn, error) {
	return DialFd(ctx, FdSocket(c.runtimeDir))
}

// Close closes the connection; sessions opened on it end (the daemon releases their references).
func (c *Client) Close() error { return c.conn.Close() }
