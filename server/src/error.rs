//! The daemon's error type and its one mapping to gRPC status codes.
//!
//! Every handler returns [`Error`]; `From<Error> for tonic::Status` is the only place that picks
//! a status code, and [`Error::code`] is reused for fd-socket replies.

use gpushare_interop::vulkan;
use tonic::Code;

/// What went wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The connection carried no peer credentials (not a Unix socket).
    #[error("caller has no peer credentials")]
    NoPeerCredentials,
    /// A resource-creating call named no session and did not ask for a pin.
    #[error("no client session: open a Session stream and send its id in `{header}`, or set pin")]
    NoSession {
        /// The metadata header that names the session.
        header: &'static str,
    },
    /// The session header names no live session of the caller's uid.
    #[error("unknown client session {0:?}")]
    UnknownSession(String),
    /// An id that is not well formed.
    #[error("malformed {what} id {id:?}")]
    MalformedId {
        /// Which kind of id was expected.
        what: &'static str,
        /// The id as given (truncated).
        id: String,
    },
    /// No resource of the caller's with that id.
    #[error("{what} {id} not found")]
    NotFound {
        /// buffer, semaphore or resource.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A size of zero.
    #[error("{what} must not be zero")]
    Zero {
        /// The field.
        what: &'static str,
    },
    /// A size above a configured limit.
    #[error("{what} {value} exceeds the limit of {limit}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// The value asked for.
        value: u64,
        /// The limit (see GetInfo's limits).
        limit: u64,
    },
    /// A range outside a buffer, or one whose end overflows.
    #[error("range [{offset}, {offset}+{length}) is outside {what} of {size} bytes")]
    OutOfRange {
        /// The buffer's role (buffer, source, destination).
        what: &'static str,
        /// Start of the range.
        offset: u64,
        /// Its length.
        length: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A fill range not aligned to 4 bytes.
    #[error("{what} {value} is not a multiple of 4")]
    Misaligned {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A text field that is too long.
    #[error("{what} is longer than {limit} bytes")]
    TextTooLong {
        /// The field.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Copy within one buffer with overlapping ranges.
    #[error("source and destination ranges overlap in buffer {0}")]
    Overlap(String),
    /// No device with that daemon index.
    #[error("device {index} does not exist (the daemon serves {count})")]
    NoDevice {
        /// The index asked for.
        index: u32,
        /// How many devices the daemon serves.
        count: usize,
    },
    /// A signal value that does not exceed the current value.
    #[error("semaphore {id}: value {requested} does not exceed the current value {current}")]
    NotIncreasing {
        /// The semaphore.
        id: String,
        /// Its value now.
        current: u64,
        /// The value asked for.
        requested: u64,
    },
    /// A host signal of a semaphore that a daemon operation will signal on the GPU.
    #[error(
        "semaphore {id} has a signal to {value} pending on the GPU (a daemon operation's signal \
         point): signal it once that operation returned"
    )]
    SignalPending {
        /// The semaphore.
        id: String,
        /// The highest value pending.
        value: u64,
    },
    /// A semaphore that its device cannot export.
    #[error("semaphore {0} is not exportable: the device cannot export timeline semaphores")]
    NotExportable(String),
    /// Release of a reference the caller does not hold.
    #[error("{0} holds no reference of the caller to release")]
    NoReference(String),
    /// A wait that ran out of time.
    #[error("semaphore {id} did not reach {value} within {timeout_ms} ms")]
    WaitTimeout {
        /// The semaphore.
        id: String,
        /// The value waited for.
        value: u64,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// A semaphore freed while a wait or op was pending on it.
    #[error("semaphore {0} was freed while waiting on it")]
    SemaphoreFreed(String),
    /// A semaphore whose signaler is gone: the session that created it ended (or it was freed),
    /// and the daemon signaled it to its poison value so that no waiter hangs.
    #[error("semaphore {0} was abandoned: the session that signals it ended, and it was signaled to its poison value")]
    Abandoned(String),
    /// A frame-stream call that is valid but not in the stream's current state.
    #[error("stream {id}: {why}")]
    StreamState {
        /// The stream.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// A frame-stream call on a stream that ended (its producer left), or by a consumer that
    /// was detached.
    #[error("stream {id} ended: {why}")]
    StreamEnded {
        /// The stream.
        id: String,
        /// Why it ended.
        why: String,
    },
    /// A frame-stream acquire that ran out of time.
    #[error("stream {id}: no {what} within {timeout_ms} ms")]
    StreamTimeout {
        /// The stream.
        id: String,
        /// A free slot or a frame.
        what: &'static str,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// A stream request with an invalid field.
    #[error("{0}")]
    BadStream(String),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// A ticket that is unknown, already redeemed, or another uid's.
    #[error("unknown or already redeemed ticket")]
    UnknownTicket,
    /// A ticket redeemed after its time to live.
    #[error("ticket expired")]
    TicketExpired,
    /// A malformed fd-socket request.
    #[error("malformed fd-socket request: {0}")]
    BadFdRequest(&'static str),
    /// Descriptors sent to the daemon (never accepted; they were closed).
    #[error("descriptors sent to the daemon are not accepted ({0} closed)")]
    FdsRefused(usize),
    /// The GPU executor thread is gone.
    #[error("the GPU executor stopped")]
    ExecutorGone,
    /// A CUDA call failed.
    #[error("{op} failed on CUDA")]
    Cuda {
        /// What the daemon was doing.
        op: &'static str,
        /// The CUDA error.
        #[source]
        source: gpushare_interop::cuda::Error,
    },
    /// A name already used by a live resource of the same owner.
    #[error("the owner already has a live resource named {0:?}")]
    NameTaken(String),
    /// An owner's operation asked by a caller that only reaches the resource through a grant.
    #[error("only the owner of {0} may do this")]
    NotOwner(String),
    /// A Grant or Revoke that names no uid or gid.
    #[error("a grant names a uid or a gid")]
    BadGrant,
    /// A SignalPath value the daemon does not know.
    #[error("unknown signal path {0} (SIGNAL_PATH_SEMAPHORE or SIGNAL_PATH_WORD)")]
    BadSignalPath(i32),
    /// An Open that names nothing.
    #[error("Open names an id, a token, or an owner uid and a name")]
    BadOpen,
    /// A token that is not 16 bytes.
    #[error("a capability token is 16 bytes")]
    BadToken,
    /// A token that names no live resource (never minted, revoked, or its resource freed).
    #[error("unknown capability token")]
    UnknownToken,
    /// A quota (configuration `[quotas]`) would be exceeded.
    #[error("quota exceeded: {what} (limit {limit}{scope})")]
    Quota {
        /// Which quota (`buffers per uid`, ...).
        what: &'static str,
        /// Its value.
        limit: u64,
        /// `, uid N` or empty.
        scope: String,
    },
    /// A host-memory system call failed, or a host range was invalid.
    #[error("{op} failed")]
    Host {
        /// What the daemon was doing.
        op: &'static str,
        /// The failure.
        #[source]
        source: gpushare_interop::host::HostError,
    },
    /// A system call on a connection failed (descriptors exhausted, most likely).
    #[error("{op} failed")]
    Io {
        /// What the daemon was doing.
        op: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Write got both inline bytes and a host range, or a Read's host range has the wrong length.
    #[error("{0}")]
    BadHostRange(&'static str),
    /// An image request that names no valid image, region or color.
    #[error("{0}")]
    BadImage(String),
    /// Making a semaphore's memop word failed (allocating it, or importing it into the
    /// daemon's CUDA context).
    #[error("{what}: making its memop word failed: {detail}")]
    Word {
        /// What the daemon was making.
        what: &'static str,
        /// The cause chain.
        detail: String,
    },
    /// A GPU driver call failed.
    #[error("{op} failed")]
    Gpu {
        /// What the daemon was doing.
        op: &'static str,
        /// The driver error.
        #[source]
        source: vulkan::Error,
    },
}

impl Error {
    /// Wraps a driver error with what the daemon was doing.
    pub(crate) fn gpu(op: &'static str) -> impl FnOnce(vulkan::Error) -> Error {
        move |source| Error::Gpu { op, source }
    }

    /// Wraps a host-memory error with what the daemon was doing.
    pub(crate) fn host(
        op: &'static str,
    ) -> impl FnOnce(gpushare_interop::host::HostError) -> Error {
        move |source| Error::Host { op, source }
    }

    /// The gRPC status code for this error.
    pub(crate) fn code(&self) -> Code {
        use Error::*;
        match self {
            NoPeerCredentials => Code::Unauthenticated,
            MalformedId { .. }
            | Zero { .. }
            | TooLarge { .. }
            | OutOfRange { .. }
            | Misaligned { .. }
            | TextTooLong { .. }
            | Overlap(_)
            | NoDevice { .. }
            | BadFdRequest(_)
            | FdsRefused(_) => Code::InvalidArgument,
            NotFound { .. } | UnknownTicket => Code::NotFound,
            NoSession { .. }
            | UnknownSession(_)
            | NotIncreasing { .. }
            | SignalPending { .. }
            | NotExportable(_)
            | NoReference(_)
            | StreamState { .. } => Code::FailedPrecondition,
            WaitTimeout { .. } | TicketExpired | StreamTimeout { .. } => Code::DeadlineExceeded,
            SemaphoreFreed(_) | Abandoned(_) | StreamEnded { .. } => Code::Aborted,
            BadStream(_) => Code::InvalidArgument,
            ShuttingDown | ExecutorGone => Code::Unavailable,
            Gpu { source, .. } => gpu_code(source),
            Host { source, .. } => host_code(source),
            Io { source, .. } => match rustix::io::Errno::from_io_error(source) {
                Some(e) if e == rustix::io::Errno::MFILE || e == rustix::io::Errno::NFILE => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
            Quota { .. } => Code::ResourceExhausted,
            NameTaken(_) => Code::AlreadyExists,
            NotOwner(_) => Code::PermissionDenied,
            BadToken | BadGrant | BadOpen | BadSignalPath(_) => Code::InvalidArgument,
            UnknownToken => Code::NotFound,
            BadHostRange(_) | BadImage(_) => Code::InvalidArgument,
            Cuda { source, .. } if source.is_out_of_memory() => Code::ResourceExhausted,
            Cuda { .. } => Code::Internal,
            Word { .. } => Code::Internal,
        }
    }
}

fn host_code(e: &gpushare_interop::host::HostError) -> Code {
    use gpushare_interop::host::HostError;
    match e {
        HostError::InvalidSize(_) | HostError::OutOfRange { .. } => Code::InvalidArgument,
        HostError::Sys { source, .. }
            if *source == rustix::io::Errno::NOMEM || *source == rustix::io::Errno::NOSPC =>
        {
            Code::ResourceExhausted
        }
        _ => Code::Internal,
    }
}

fn gpu_code(e: &vulkan::Error) -> Code {
    if e.is_out_of_memory() {
        return Code::ResourceExhausted;
    }
    match e {
        vulkan::Error::OutOfRange { .. }
        | vulkan::Error::InvalidImage(_)
        | vulkan::Error::InvalidUsage { .. }
        | vulkan::Error::InvalidSize { .. } => Code::InvalidArgument,
        vulkan::Error::InvalidValue { .. } | vulkan::Error::Unsupported(_) => {
            Code::FailedPrecondition
        }
        vulkan::Error::Timeout => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// The full message: this error and each of its sources.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %chain(&e), "request failed");
        }
        tonic::Status::new(code, chain(&e))
    }
}

/// TOO_LARGE (INVALID_ARGUMENT) when `value` of `what` exceeds `limit`.
pub(crate) fn at_most(what: &'static str, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(Error::TooLarge { what, value, limit });
    }
    Ok(())
}

/// Result of a request handler.
pub(crate) type Result<T> = std::result::Result<T, Error>;
