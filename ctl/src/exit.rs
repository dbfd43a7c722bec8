//! Exit codes scripts can rely on, and the mapping from errors to them.

use std::process::ExitCode;

use gpushare_client::Error;
use tonic::Code;

/// The exit-code table, as shown in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad arguments)
  3  NOT_FOUND: no such resource (or another user's), unknown or used ticket
  4  DEADLINE_EXCEEDED: a wait timed out (or an export ticket expired)
  5  FAILED_PRECONDITION: valid call in the wrong state (e.g. non-increasing signal)
  6  PERMISSION_DENIED: an owner's operation, or no access to the daemon's sockets
  7  RESOURCE_EXHAUSTED: a quota, limit or GPU memory ran out
  8  UNAVAILABLE: the daemon is not reachable or is shutting down
  9  INVALID_ARGUMENT: the daemon rejected an argument (size, range, id)
 10  ALREADY_EXISTS: the name is taken by another live resource of the owner
 11  ABORTED: the semaphore waited on was abandoned (its signaler ended) or freed";

/// Success.
pub const OK: u8 = 0;
/// Any error without a more specific code.
pub const OTHER: u8 = 1;
/// Bad arguments (clap uses 2 for its own usage errors too).
pub const USAGE: u8 = 2;

/// The exit code for a gRPC status code.
pub fn for_code(code: Code) -> u8 {
    match code {
        Code::Ok => OK,
        Code::NotFound => 3,
        Code::DeadlineExceeded => 4,
        Code::FailedPrecondition => 5,
        Code::PermissionDenied => 6,
        Code::ResourceExhausted => 7,
        Code::Unavailable => 8,
        Code::InvalidArgument => 9,
        Code::AlreadyExists => 10,
        Code::Aborted => 11,
        _ => OTHER,
    }
}

/// The exit code for a client error.
pub fn for_error(error: &Error) -> u8 {
    if error.is_unreachable() {
        return for_code(Code::Unavailable);
    }
    error.code().map_or(OTHER, for_code)
}

/// `code` as a process exit code.
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(for_code(Code::NotFound), 3);
        assert_eq!(for_code(Code::DeadlineExceeded), 4);
        assert_eq!(for_code(Code::FailedPrecondition), 5);
        assert_eq!(for_code(Code::PermissionDenied), 6);
        assert_eq!(for_code(Code::ResourceExhausted), 7);
        assert_eq!(for_code(Code::Unavailable), 8);
        assert_eq!(for_code(Code::InvalidArgument), 9);
        assert_eq!(for_code(Code::AlreadyExists), 10);
        assert_eq!(for_code(Code::Aborted), 11);
        assert_eq!(for_code(Code::Internal), 1);
    }

    #[test]
    fn errors() {
        let e = Error::from(tonic::Status::deadline_exceeded("timed out"));
        assert_eq!(for_error(&e), 4);
        let e = Error::Redeem {
            code: Code::NotFound,
            message: "expired".into(),
        };
        assert_eq!(for_error(&e), 3);
        assert_eq!(for_error(&Error::MissingField("x")), 1);
        let e = Error::FdConnect {
            path: "/nonexistent/fd.sock".into(),
            source: gpushare_proto::fdpass::FdPassError::Closed,
        };
        assert_eq!(for_error(&e), 8);
        let e = Error::NoAccess {
            path: "/run/gpushare/control.sock".into(),
            group: "group gpushare".into(),
        };
        assert_eq!(for_error(&e), 6);
    }

    #[test]
    fn help_lists_every_code() {
        for code in 0..=11 {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n{code:>3}  ")),
                "exit code {code} undocumented"
            );
        }
    }
}
