// Package gpushare is the Go client of the gpushare daemon (gpushared): the gRPC control API on
// control.sock (Dial, Client, Session) and the descriptor socket fd.sock (FdConn: ticket
// redemption and direct export, with a semaphore's memop word buffer when asked for (RedeemWord,
// ExportWord: the CUDA fast path), host waits, and a frame stream's AcquireSlot, Present,
// AcquireFrame and ReleaseFrame).
//
// The requests and replies are the generated protobuf types of gpushare.v1 (package
// gen/gpushare/v1, made by build.sh); Client.API gives the generated gRPC stub, so every RPC
// of the proto is available as it is, with no wrapper per call. Errors of the control API are
// gRPC status errors (status.Code); fd.sock errors are *FdError, whose code is a gRPC code too,
// or *ProtocolError when a reply breaks the fd.sock protocol. Code gives the code of either.
//
// This package does no Vulkan or CUDA import: it hands out the descriptors as owned *os.File
// values, with the import metadata the daemon sent (gpusharev1.ExportedFd).
package gpushare
