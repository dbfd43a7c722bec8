//! The connection to the daemon: the gRPC channel on `control.sock`, the optional client session
//! that rides on it, and the resource-level calls. Typed per-resource calls live on
//! [`Buffer`](crate::Buffer) and [`Semaphore`](crate::Semaphore); descriptor redemption in
//! `export.rs`.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gpushare_proto::v1::gpu_share_client::GpuShareClient;
use gpushare_proto::{v1, CONTROL_SOCKET, FD_SOCKET, SESSION_HEADER};
use tokio::task::JoinHandle;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::export::FdChannel;
use crate::{Buffer, Error, Exported, HostBuffer, Result, Semaphore};

/// Largest gRPC message either side of the client sends or accepts.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Options for [`Client::create_buffer`] and [`Client::create_semaphore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The daemon's device index (`DeviceInfo.index`); 0 is the default device.
    pub device: u32,
    /// Optional name, free text up to 128 bytes; empty for none.
    pub name: String,
    /// Keep a reference owned by the uid until [`Client::release`], beyond any session. Required
    /// when the client has no session.
    pub pin: bool,
    /// Semaphores: mirror it in a memop word for CUDA users (the CUDA fast path) where the
    /// device offers it (`SemaphoreDetails.word_unavailable` says why not). Ignored for buffers.
    pub word: bool,
    /// Semaphores: how this session signals it. [`v1::SignalPath::Word`] when it signals
    /// through a [`CudaSemaphore`](crate::cuda::CudaSemaphore) on the fast path or through the
    /// daemon only; otherwise the daemon bridges the semaphore into its word. Ignored for
    /// buffers.
    pub signal_path: v1::SignalPath,
}

/// A connection to the daemon. Cheap to clone: clones share the channel and the session.
///
/// With a session ([`Client::connect_with_session`]), the session lives as long as any clone of
/// the client or any [`Buffer`]/[`Semaphore`] handle made from it (each handle holds a clone).
#[derive(Clone)]
pub struct Client {
    grpc: GpuShareClient<Channel>,
    fd: Arc<FdChannel>,
    session: Option<Arc<SessionGuard>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("fd", &self.fd)
            .field("session", &self.session_id())
            .finish_non_exhaustive()
    }
}

/// Holds the session stream open; dropping the last clone of the client ends the session.
struct SessionGuard {
    id: String,
    header: AsciiMetadataValue,
    /// Set by the drain task when the daemon ended the stream.
    ended: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // Dropping the stream inside the task resets the HTTP/2 stream: the daemon ends the
        // session at once.
        self.task.abort();
    }
}

impl Client {
    /// Connects to the daemon in `runtime_dir` without a session. Creates must then pin.
    pub async fn connect(runtime_dir: impl AsRef<Path>) -> Result<Client> {
        let dir = runtime_dir.as_ref();
        let control = dir.join(CONTROL_SOCKET);
        let channel = unix_channel(&control)
            .await
            .map_err(|source| Error::connect(control, source))?;
        let grpc = GpuShareClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Client {
            grpc,
            fd: Arc::new(FdChannel::new(dir.join(FD_SOCKET))),
            session: None,
        })
    }

    /// The daemon's runtime directory (where its sockets are).
    pub fn runtime_dir(&self) -> &Path {
        self.fd.path().parent().unwrap_or(Path::new("/"))
    }

    /// Connects and opens a client session named `client_name` (shown in introspection). Must be
    /// called inside a tokio runtime: a task holds the session stream.
    pub async fn connect_with_session(
        runtime_dir: impl AsRef<Path>,
        client_name: &str,
    ) -> Result<Client> {
        let mut client = Client::connect(runtime_dir).await?;
        let mut stream = client
            .grpc
            .clone()
            .session(v1::SessionRequest {
                client_name: client_name.to_owned(),
            })
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .ok_or(Error::MissingField("SessionEvent"))?;
        let id = match first.event {
            Some(v1::session_event::Event::Started(started)) if !started.session_id.is_empty() => {
                started.session_id
            }
            _ => return Err(Error::MissingField("SessionEvent.started.session_id")),
        };
        let header: AsciiMetadataValue =
            MetadataValue::try_from(id.as_str()).map_err(|_| Error::InvalidSessionId)?;
        let ended = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let ended = Arc::clone(&ended);
            async move {
                // The daemon sends nothing more until it shuts down; drain whatever comes.
                while let Ok(Some(_)) = stream.message().await {}
                ended.store(true, Ordering::Release);
            }
        });
        client.session = Some(Arc::new(SessionGuard {
            id,
            header,
            ended,
            task,
        }));
        Ok(client)
    }

    /// The session id, when the client has a session.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref().map(|s| s.id.as_str())
    }

    /// Whether the client has a session and the daemon has not ended it. A session the daemon
    /// ended (shutdown) is not reopened: connect again.
    pub fn session_active(&self) -> bool {
        self.session
            .as_deref()
            .is_some_and(|s| !s.ended.load(Ordering::Acquire))
    }

    /// The generated gRPC client, for calls this crate does not wrap. Add the session header
    /// with [`Client::request`].
    pub fn grpc(&self) -> GpuShareClient<Channel> {
        self.grpc.clone()
    }

    /// A request carrying the session header (when the client has a session).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(session) = &self.session {
            request
                .metadata_mut()
                .insert(SESSION_HEADER, session.header.clone());
        }
        request
    }

    /// The daemon's version, limits and devices.
    pub async fn info(&self) -> Result<v1::GetInfoResponse> {
        let reply = self
            .grpc()
            .get_info(self.request(v1::GetInfoRequest {}))
            .await?;
        Ok(reply.into_inner())
    }

    /// Allocates an exportable buffer of `size` bytes.
    pub async fn create_buffer(&self, size: u64, opts: &CreateOptions) -> Result<Buffer> {
        let request = v1::CreateBufferRequest {
            size,
            device: opts.device,
            name: opts.name.clone(),
            pin: opts.pin,
        };
        let resource = self
            .grpc()
            .create_buffer(self.request(request))
            .await?
            .into_inner();
        Ok(self.buffer(&created_id(resource)?))
    }

    /// Creates a host buffer of `size` bytes (shared host memory for bulk transfers: see
    /// [`Buffer::write_from_host`]) and maps it here. On CUDA hosts the daemon page-locks it
    /// at creation, which takes tens of milliseconds per hundred MiB: create once, reuse.
    pub async fn create_host_buffer(&self, size: u64, opts: &CreateOptions) -> Result<HostBuffer> {
        let request = v1::CreateHostBufferRequest {
            size,
            name: opts.name.clone(),
            pin: opts.pin,
        };
        let resource = self
            .grpc()
            .create_host_buffer(self.request(request))
            .await?
            .into_inner();
        let id = created_id(resource)?;
        let mapped = match self.export(&id).await {
            Ok(exported) => HostBuffer::map(self, exported),
            Err(e) => Err(e),
        };
        if mapped.is_err() {
            // Not usable here: give the daemon's memory back rather than leave it to the session.
            let _ = self.release(&id).await;
        }
        mapped
    }

    /// Creates a timeline semaphore with value `initial`.
    pub async fn create_semaphore(&self, initial: u64, opts: &CreateOptions) -> Result<Semaphore> {
        let request = v1::CreateSemaphoreRequest {
            initial_value: initial,
            device: opts.device,
            name: opts.name.clone(),
            pin: opts.pin,
            word: opts.word,
            signal_path: opts.signal_path as i32,
        };
        let resource = self
            .grpc()
            .create_semaphore(self.request(request))
            .await?
            .into_inner();
        Ok(self.semaphore(&created_id(resource)?))
    }

    /// The caller uid's resources.
    pub async fn list(&self) -> Result<Vec<v1::Resource>> {
        let reply = self
            .grpc()
            .list_resources(self.request(v1::ListResourcesRequest {}))
            .await?;
        Ok(reply.into_inner().resources)
    }

    /// One resource.
    pub async fn describe(&self, id: &str) -> Result<v1::Resource> {
        let reply = self
            .grpc()
            .describe_resource(self.request(resource_ref(id)))
            .await?;
        Ok(reply.into_inner())
    }

    /// The live client sessions the caller may see (today: every session of its uid, this
    /// client's own included), oldest first.
    pub async fn sessions(&self) -> Result<Vec<v1::SessionInfo>> {
        let reply = self
            .grpc()
            .list_sessions(self.request(v1::ListSessionsRequest {}))
            .await?;
        Ok(reply.into_inner().sessions)
    }

    /// The caller uid's semaphores with their value, signaler session, abandonment and pending
    /// host waits (see `PendingWait.unsatisfiable` in the proto), oldest first.
    pub async fn semaphores(&self) -> Result<Vec<v1::SemaphoreInfo>> {
        let reply = self
            .grpc()
            .list_semaphores(self.request(v1::ListSemaphoresRequest {}))
            .await?;
        Ok(reply.into_inner().semaphores)
    }

    /// A handle to the buffer `id` (no call is made).
    pub fn buffer(&self, id: &str) -> Buffer {
        Buffer::new(self.clone(), id)
    }

    /// A handle to the semaphore `id` (no call is made).
    pub fn semaphore(&self, id: &str) -> Semaphore {
        Semaphore::new(self.clone(), id)
    }

    /// Drops this session's reference to `id` (or the pin, without one). Returns whether the
    /// daemon freed the resource.
    pub async fn release(&self, id: &str) -> Result<bool> {
        let reply = self
            .grpc()
            .release_resource(self.request(resource_ref(id)))
            .await?;
        Ok(reply.into_inner().freed)
    }

    /// Exports `id` for this process: one request on the descriptor socket (no ticket), which
    /// returns a fresh descriptor and its import metadata. To hand a descriptor to another
    /// process, give it a ticket from [`Client::export_ticket`] instead.
    pub async fn export(&self, id: &str) -> Result<Exported> {
        self.export_impl(id, false).await
    }

    /// As [`Client::export`], and for a semaphore that has a memop word, the word's buffer too
    /// ([`Exported::word`]): what [`CudaSemaphore::import`](crate::cuda::CudaSemaphore::import)
    /// needs for the fast path.
    pub async fn export_with_word(&self, id: &str) -> Result<Exported> {
        self.export_impl(id, true).await
    }

    async fn export_impl(&self, id: &str, word: bool) -> Result<Exported> {
        let exported = self.fd.export(id, word).await?;
        if exported.info.resource_id != id {
            return Err(Error::WrongResource {
                expected: id.to_owned(),
                found: exported.info.resource_id,
            });
        }
        Ok(exported)
    }

    /// Asks for an export ticket only (to redeem here with [`Client::redeem`], or in another
    /// process of the same uid).
    pub async fn export_ticket(&self, id: &str) -> Result<v1::ExportResponse> {
        let reply = self.grpc().export(self.request(resource_ref(id))).await?;
        Ok(reply.into_inner())
    }

    /// Redeems an export ticket on the descriptor socket.
    pub async fn redeem(&self, ticket: &[u8]) -> Result<Exported> {
        self.fd.redeem(ticket, false).await
    }

    /// As [`Client::redeem`], with a semaphore's word buffer (see [`Client::export_with_word`]).
    pub async fn redeem_with_word(&self, ticket: &[u8]) -> Result<Exported> {
        self.fd.redeem(ticket, true).await
    }

    /// Owner only: lets `who` (a uid, or a group's members) use the resource `id`.
    pub async fn grant(&self, id: &str, who: Grantee) -> Result<v1::Resource> {
        let request = grant_request(id, who);
        Ok(self.grpc().grant(self.request(request)).await?.into_inner())
    }

    /// Owner only: takes a grant back (imports and references already made stay valid).
    pub async fn revoke(&self, id: &str, who: Grantee) -> Result<v1::Resource> {
        let request = grant_request(id, who);
        Ok(self
            .grpc()
            .revoke(self.request(request))
            .await?
            .into_inner())
    }

    /// Owner only: mints a capability token for `id`: whoever presents it to
    /// [`Client::open`] ([`OpenTarget::Token`]) gets a reference in its session, and the use of
    /// the resource through it.
    pub async fn create_token(&self, id: &str) -> Result<Vec<u8>> {
        let reply = self
            .grpc()
            .create_token(self.request(resource_ref(id)))
            .await?;
        Ok(reply.into_inner().token)
    }

    /// Owner only: invalidates every token of `id`.
    pub async fn revoke_tokens(&self, id: &str) -> Result<v1::Resource> {
        let reply = self
            .grpc()
            .revoke_tokens(self.request(resource_ref(id)))
            .await?;
        Ok(reply.into_inner())
    }

    /// Adds a reference to this client's session (it needs one) to the resource `target`
    /// names; with `signal`, for a semaphore, the session also becomes one of its signalers.
    pub async fn open(&self, target: OpenTarget, signal: bool) -> Result<v1::Resource> {
        self.open_with(target, signal, v1::SignalPath::Unspecified)
            .await
    }

    /// As [`Client::open`]; with `signal`, `path` says how this session signals the semaphore
    /// (see [`CreateOptions::signal_path`]).
    pub async fn open_with(
        &self,
        target: OpenTarget,
        signal: bool,
        path: v1::SignalPath,
    ) -> Result<v1::Resource> {
        use v1::open_request::Target;
        let target = match target {
            OpenTarget::Id(id) => Target::Id(id),
            OpenTarget::Token(t) => Target::Token(t),
            OpenTarget::Named { owner_uid, name } => {
                Target::Named(v1::NamedResource { owner_uid, name })
            }
        };
        let request = v1::OpenRequest {
            target: Some(target),
            signal,
            signal_path: path as i32,
        };
        Ok(self.grpc().open(self.request(request)).await?.into_inner())
    }
}

/// Whom [`Client::grant`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantee {
    /// A uid.
    Uid(u32),
    /// A gid: the processes in that group (primary or supplementary) when they connect.
    Gid(u32),
}

/// What [`Client::open`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenTarget {
    /// A resource id the caller reaches.
    Id(String),
    /// A capability token ([`Client::create_token`]).
    Token(Vec<u8>),
    /// A resource of `owner_uid` by its name.
    Named {
        /// The owner.
        owner_uid: u32,
        /// The name.
        name: String,
    },
}

fn grant_request(id: &str, who: Grantee) -> v1::GrantRequest {
    v1::GrantRequest {
        id: id.to_owned(),
        grantee: Some(match who {
            Grantee::Uid(u) => v1::grant_request::Grantee::Uid(u),
            Grantee::Gid(g) => v1::grant_request::Grantee::Gid(g),
        }),
    }
}

/// A `ResourceRef` for `id`.
pub(crate) fn resource_ref(id: &str) -> v1::ResourceRef {
    v1::ResourceRef { id: id.to_owned() }
}

/// The id of a resource a create call returned.
pub(crate) fn created_id(resource: v1::Resource) -> Result<String> {
    if resource.id.is_empty() {
        return Err(Error::MissingField("Resource.id"));
    }
    Ok(resource.id)
}

/// A gRPC channel over the `SOCK_STREAM` Unix socket at `path`. The URI is a placeholder; every
/// connection goes to `path`.
async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
