//! Redeeming export tickets on `fd.sock`, and the descriptor that comes back with its metadata.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use gpushare_proto::fdpass::{FdPassError, Received, SeqPacket};
use gpushare_proto::v1;
use prost::Message;

use crate::{Error, Result};

/// An exported descriptor and everything needed to import it.
///
/// Importing takes ownership of `fd` only when it succeeds; the importers in
/// [`import`](crate::import) take an `Exported` by value and close the descriptor on failure.
#[derive(Debug)]
pub struct Exported {
    /// The descriptor, close-on-exec.
    pub fd: OwnedFd,
    /// Its metadata: kind, handle type, device and driver UUIDs, buffer or semaphore details.
    pub info: v1::ExportedFd,
    /// A semaphore's memop word buffer (the CUDA fast path), when it was asked for
    /// ([`Client::export_with_word`](crate::Client::export_with_word)) and the semaphore has one;
    /// `SemaphoreImport.word` describes it.
    pub word: Option<OwnedFd>,
}

impl Exported {
    /// The resource's kind (`Unspecified` for a value this client does not know).
    pub fn kind(&self) -> v1::ResourceKind {
        v1::ResourceKind::try_from(self.info.kind).unwrap_or(v1::ResourceKind::Unspecified)
    }

    /// The descriptor's handle type (`Unspecified` for a value this client does not know).
    pub fn handle_type(&self) -> v1::HandleType {
        v1::HandleType::try_from(self.info.handle_type).unwrap_or(v1::HandleType::Unspecified)
    }

    /// The exporting physical device's UUID.
    pub fn device_uuid(&self) -> Result<[u8; 16]> {
        uuid(&self.info.device_uuid, "ExportedFd.device_uuid")
    }

    /// The exporting driver's UUID.
    pub fn driver_uuid(&self) -> Result<[u8; 16]> {
        uuid(&self.info.driver_uuid, "ExportedFd.driver_uuid")
    }
}

/// A 16-byte UUID from the wire.
pub(crate) fn uuid(bytes: &[u8], what: &'static str) -> Result<[u8; 16]> {
    bytes.try_into().map_err(|_| Error::BadUuid {
        what,
        len: bytes.len(),
    })
}

/// A client's connection to `fd.sock`, opened on first use and kept for later redeems (the
/// protocol allows any number of request/reply pairs per connection). Redeems are serialized on
/// it, so replies cannot cross.
#[derive(Debug)]
pub(crate) struct FdChannel {
    path: PathBuf,
    conn: tokio::sync::Mutex<Option<SeqPacket>>,
}

impl FdChannel {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Exports the caller's own resource `id` directly (one round trip, no ticket); with
    /// `word`, a semaphore's word buffer too.
    pub(crate) async fn export(&self, id: &str, word: bool) -> Result<Exported> {
        self.request(v1::fd_request::Request::Export(id.to_owned()), word)
            .await
    }

    /// Redeems `ticket`; with `word`, a semaphore's word buffer too.
    pub(crate) async fn redeem(&self, ticket: &[u8], word: bool) -> Result<Exported> {
        self.request(v1::fd_request::Request::Redeem(ticket.to_vec()), word)
            .await
    }

    /// Sends one request and reads its reply. A kept connection that the daemon closed meanwhile (its idle timeout)
    /// is replaced once: a request the daemon never read consumed no ticket.
    async fn request(&self, request: v1::fd_request::Request, word: bool) -> Result<Exported> {
        let request = v1::FdRequest {
            request: Some(request),
            word,
        }
        .encode_to_vec();
        let mut conn = self.conn.lock().await;
        let reused = conn.is_some();
        match self.exchange(&mut conn, &request).await {
            Err(Error::FdSocket(e)) if reused && is_stale(&e) => {
                *conn = None;
                self.exchange(&mut conn, &request).await
            }
            other => other,
        }
    }

    async fn exchange(&self, conn: &mut Option<SeqPacket>, request: &[u8]) -> Result<Exported> {
        let socket = match conn.take() {
            Some(s) => s,
            None => SeqPacket::connect(&self.path)
                .await
                .map_err(|source| Error::fd_connect(self.path.clone(), source))?,
        };
        socket.send(request, &[]).await?;
        let received = socket.recv().await?;
        // Only a connection that completed an exchange is kept.
        *conn = Some(socket);
        parse_reply(received)
    }
}

/// Whether an fd-socket error means the kept connection was closed by the daemon.
fn is_stale(e: &FdPassError) -> bool {
    matches!(e, FdPassError::Closed | FdPassError::Io { .. })
}

/// Interprets one reply from `fd.sock`. Every descriptor that arrived is closed on every error
/// path (they are dropped with `received`).
fn parse_reply(received: Received) -> Result<Exported> {
    let Received { bytes, mut fds } = received;
    let reply = v1::FdReply::decode(bytes.as_slice())?;
    match reply.reply {
        Some(v1::fd_reply::Reply::Exported(info)) => {
            // A semaphore's word buffer comes second, when its metadata says it is there.
            let with_word = matches!(
                &info.details,
                Some(v1::exported_fd::Details::Semaphore(s)) if s.word.is_some()
            );
            let expected = 1 + usize::from(with_word);
            if fds.len() != expected {
                return Err(Error::FdCount {
                    got: fds.len(),
                    expected,
                });
            }
            let word = if with_word { fds.pop() } else { None };
            match fds.pop() {
                Some(fd) => Ok(Exported { fd, info, word }),
                None => Err(Error::FdCount { got: 0, expected }),
            }
        }
        Some(v1::fd_reply::Reply::Error(e)) => Err(Error::Redeem {
            code: tonic::Code::from_i32(e.code),
            message: e.message,
        }),
        Some(v1::fd_reply::Reply::Waited(_) | v1::fd_reply::Reply::Stream(_)) => {
            Err(Error::MissingField("FdReply.exported"))
        }
        None => Err(Error::MissingField("FdReply.reply")),
    }
}

/// Metadata fixtures for the importers' unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::Exported;
    use gpushare_proto::v1;

    /// `info` with a descriptor of /dev/null.
    pub fn exported(info: v1::ExportedFd) -> Exported {
        let fd = std::fs::File::open("/dev/null")
            .expect("open /dev/null")
            .into();
        Exported {
            fd,
            info,
            word: None,
        }
    }

    /// A dedicated OPAQUE_FD buffer (memory type 2, usage 0x3) on device 3…, driver 4….
    pub fn buffer_info(size: u64, allocation_size: u64) -> v1::ExportedFd {
        v1::ExportedFd {
            resource_id: "b".into(),
            kind: v1::ResourceKind::Buffer as i32,
            handle_type: v1::HandleType::OpaqueFd as i32,
            device_uuid: vec![3; 16],
            driver_uuid: vec![4; 16],
            details: Some(v1::exported_fd::Details::Buffer(v1::BufferImport {
                size,
                allocation_size,
                dedicated: true,
                memory_type_index: 2,
                usage: 0x3,
            })),
        }
    }

    /// An OPAQUE_FD timeline semaphore on device 3…, driver 4….
    pub fn semaphore_info() -> v1::ExportedFd {
        v1::ExportedFd {
            resource_id: "s".into(),
            kind: v1::ResourceKind::Semaphore as i32,
            handle_type: v1::HandleType::OpaqueFd as i32,
            device_uuid: vec![3; 16],
            driver_uuid: vec![4; 16],
            details: Some(v1::exported_fd::Details::Semaphore(v1::SemaphoreImport {
                timeline: true,
                ..Default::default()
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null")
            .expect("open /dev/null")
            .into()
    }

    fn exported_reply() -> Vec<u8> {
        v1::FdReply {
            reply: Some(v1::fd_reply::Reply::Exported(v1::ExportedFd {
                resource_id: "abc".into(),
                kind: v1::ResourceKind::Buffer as i32,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn one_fd_is_success() {
        let got = parse_reply(Received {
            bytes: exported_reply(),
            fds: vec![devnull()],
        })
        .expect("success");
        assert_eq!(got.info.resource_id, "abc");
        assert_eq!(got.kind(), v1::ResourceKind::Buffer);
    }

    #[test]
    fn wrong_fd_counts_are_protocol_errors() {
        for n in [0, 2, 3] {
            let err = parse_reply(Received {
                bytes: exported_reply(),
                fds: (0..n).map(|_| devnull()).collect(),
            })
            .expect_err("wrong count");
            assert!(
                matches!(err, Error::FdCount { got, expected: 1 } if got == n),
                "{err:?}"
            );
        }
    }

    /// A semaphore whose metadata describes its word comes with two descriptors, the word's
    /// second; one alone is a protocol error, and so is a word without its metadata.
    #[test]
    fn a_word_comes_second_when_announced() {
        let reply = |word: bool| {
            v1::FdReply {
                reply: Some(v1::fd_reply::Reply::Exported(v1::ExportedFd {
                    resource_id: "sem".into(),
                    kind: v1::ResourceKind::Semaphore as i32,
                    details: Some(v1::exported_fd::Details::Semaphore(v1::SemaphoreImport {
                        timeline: true,
                        word_exists: true,
                        word: word.then(v1::BufferImport::default),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
            }
            .encode_to_vec()
        };
        let got = parse_reply(Received {
            bytes: reply(true),
            fds: vec![devnull(), devnull()],
        })
        .expect("two descriptors");
        assert!(got.word.is_some());
        let one = parse_reply(Received {
            bytes: reply(true),
            fds: vec![devnull()],
        });
        assert!(matches!(
            one,
            Err(Error::FdCount {
                got: 1,
                expected: 2
            })
        ));
        let unannounced = parse_reply(Received {
            bytes: reply(false),
            fds: vec![devnull(), devnull()],
        });
        assert!(matches!(
            unannounced,
            Err(Error::FdCount {
                got: 2,
                expected: 1
            })
        ));
    }

    #[test]
    fn error_reply_carries_code() {
        let bytes = v1::FdReply {
            reply: Some(v1::fd_reply::Reply::Error(v1::FdError {
                code: tonic::Code::NotFound as i32,
                message: "ticket expired".into(),
            })),
        }
        .encode_to_vec();
        let err = parse_reply(Received {
            bytes,
            fds: vec![devnull()],
        })
        .expect_err("error reply");
        assert_eq!(err.code(), Some(tonic::Code::NotFound));
    }

    #[test]
    fn empty_and_garbage_replies() {
        let err = parse_reply(Received {
            bytes: Vec::new(),
            fds: vec![],
        })
        .expect_err("empty");
        assert!(matches!(err, Error::MissingField(_)));
        let err = parse_reply(Received {
            bytes: vec![0xff, 0xff, 0xff],
            fds: vec![],
        })
        .expect_err("garbage");
        assert!(matches!(err, Error::Decode(_)));
    }

    #[test]
    fn uuid_length_is_checked() {
        assert_eq!(uuid(&[7; 16], "u").expect("16 bytes"), [7; 16]);
        assert!(matches!(
            uuid(&[7; 15], "u"),
            Err(Error::BadUuid { len: 15, .. })
        ));
    }
}
