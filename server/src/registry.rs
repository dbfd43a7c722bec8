//! The registry of resources and client sessions, and the references between them.
//!
//! A resource is held by the sessions that reference it and, optionally, by a pin owned by its
//! uid. When the last reference goes, the registry drops its `Arc` of the GPU object; operations
//! in flight hold their own `Arc`s, so the memory is freed when the last of them finishes, never
//! under a running transfer. Processes that imported the resource's fd keep their import: the
//! driver holds its own reference.
//!
//! Access: a resource is reached (used) by its owner uid, by the uids and groups (primary or
//! supplementary: [`crate::peer::Peer::in_group`]) it was granted to, and by the sessions that hold a reference to it (a capability token redeemed with
//! Open puts one there). The admin group sees (lists, describes) and releases every resource but
//! uses none that is not its own. Anybody else's lookup reads exactly like an unknown id
//! (NOT_FOUND); a caller that reaches it but asks for an owner's operation gets
//! PERMISSION_DENIED.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use std::os::fd::OwnedFd;

use crate::buffer::SharedBuffer;
use crate::host_buffer::HostBuffer;
use crate::image::SharedImage;
use crate::semaphore::Semaphore;

use crate::config::Quotas;
use crate::daemon::Caller;
use crate::error::{Error, Result};
use crate::ids;
use crate::introspect::SessionView;
use crate::log_budget::LogBudget;

/// The GPU object behind a resource.
#[derive(Debug, Clone)]
pub enum Object {
    /// An exportable buffer.
    Buffer(Arc<SharedBuffer>),
    /// A timeline semaphore.
    Semaphore(Arc<Semaphore>),
    /// Shared host memory for bulk transfers.
    HostBuffer(Arc<HostBuffer>),
    /// An exportable image.
    Image(Arc<SharedImage>),
}

/// One resource's fixed description.
#[derive(Debug)]
pub struct Resource {
    /// Random id, `buf-…`, `sem-…`, `host-…` or `img-…`.
    pub id: String,
    /// Optional name.
    pub name: String,
    /// Daemon device index.
    pub device: u32,
    /// Owner uid.
    pub owner_uid: u32,
    /// When it was created.
    pub created: Instant,
    /// The GPU object.
    pub object: Object,
    /// Descriptors exported ahead of the next export requests (see [`Resource::take_fd`]).
    spare_fds: Mutex<Vec<OwnedFd>>,
    /// Whether a task is exporting spare descriptors now (one at a time).
    refilling: AtomicBool,
}

impl Object {
    /// A fresh descriptor for the object (`vkGetMemoryFdKHR` / `vkGetSemaphoreFdKHR`, or a
    /// duplicate of a host buffer's memfd).
    pub fn export_fd(&self) -> Result<OwnedFd> {
        match self {
            Object::Buffer(b) => b.export_fd().map_err(Error::gpu("exporting buffer memory")),
            Object::Semaphore(s) => s.export_fd(),
            Object::HostBuffer(h) => h
                .mem()
                .dup_fd()
                .map_err(Error::host("duplicating a host buffer's descriptor")),
            Object::Image(i) => i
                .vk()
                .export_fd()
                .map_err(Error::gpu("exporting image memory")),
        }
    }

    /// What kind of object it is, for errors ("buffer", "semaphore", "host buffer").
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Buffer(_) => "buffer",
            Object::Semaphore(_) => "semaphore",
            Object::HostBuffer(_) => "host buffer",
            Object::Image(_) => "image",
        }
    }
}

impl Resource {
    /// A new resource with no spare descriptor.
    pub fn new(id: String, name: String, device: u32, owner_uid: u32, object: Object) -> Self {
        Self {
            id,
            name,
            device,
            owner_uid,
            created: Instant::now(),
            object,
            spare_fds: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        }
    }

    /// A descriptor for an export request. The driver call that makes one costs tens of
    /// microseconds on NVIDIA (`vkGetMemoryFdKHR` ~43 µs, `bench/results`), so after the first
    /// export of a resource the daemon keeps [`SPARE_FDS`] exported ahead: a request takes one
    /// and a blocking task makes the next, off the request path. Each descriptor handed out is
    /// still a distinct export of its own; the spares are closed when the resource is freed.
    /// A host buffer's descriptor is a `dup` of its memfd: cheap, so none is kept ahead.
    pub fn take_fd(self: &Arc<Self>) -> Result<OwnedFd> {
        match self.take_fd_now() {
            Some(fd) => fd,
            None => {
                let fd = self.object.export_fd()?;
                self.refill_spares();
                Ok(fd)
            }
        }
    }

    /// [`Resource::take_fd`] where it needs no driver call: a spare descriptor, or a host
    /// buffer's `dup`. `None` when the next descriptor must be exported by the driver.
    pub fn take_fd_now(self: &Arc<Self>) -> Option<Result<OwnedFd>> {
        if matches!(self.object, Object::HostBuffer(_)) {
            return Some(self.object.export_fd());
        }
        let spare = self
            .spare_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        self.refill_spares();
        Some(Ok(spare))
    }

    /// Tops the spare descriptors up to [`SPARE_FDS`] on a blocking task, unless one is at it.
    fn refill_spares(self: &Arc<Self>) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let refill = move || {
            let lock = || this.spare_fds.lock().unwrap_or_else(|p| p.into_inner());
            while lock().len() < SPARE_FDS {
                match this.object.export_fd() {
                    Ok(fd) => lock().push(fd),
                    Err(e) => {
                        tracing::warn!(id = %this.id, error = %e, "cannot export a spare descriptor");
                        break;
                    }
                }
            }
            this.refilling.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(refill)),
            Err(_) => refill(),
        }
    }
}

/// INFO lines for resources the admin group releases: a few a second (`left_out` counts the
/// rest).
static ADMIN_RELEASE_LOG: LogBudget = LogBudget::new(10);

/// Most uid grants, gid grants, or tokens, each, per resource.
pub const MAX_GRANTS: usize = 64;

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "resource",
        id: ids::shown(id),
    }
}

/// Descriptors kept exported ahead per exported resource (see [`Resource::take_fd`]): two, so
/// that back-to-back exports find one while the next is being made.
pub const SPARE_FDS: usize = 2;

/// What ending a session left behind ([`Registry::end_session`]).
#[derive(Debug, Default)]
pub struct EndedSession {
    /// Resources nothing holds any more.
    pub freed: Vec<Arc<Resource>>,
    /// Semaphores the session created that live on without their signaler.
    pub orphaned: Vec<Arc<Resource>>,
}

/// One uid's live resources ([`Registry::usage_by_uid`]), or what one resource adds to them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live buffers.
    pub buffers: u64,
    /// Live semaphores.
    pub semaphores: u64,
    /// Their allocation sizes, summed.
    pub buffer_bytes: u64,
    /// Live host buffers.
    pub host_buffers: u64,
    /// Their sizes, summed.
    pub host_buffer_bytes: u64,
}

impl Usage {
    /// What `object` counts for.
    pub fn of(object: &Object) -> Usage {
        match object {
            Object::Buffer(b) => Usage {
                buffers: 1,
                buffer_bytes: b.allocation_size(),
                ..Usage::default()
            },
            Object::Semaphore(_) => Usage {
                semaphores: 1,
                ..Usage::default()
            },
            Object::HostBuffer(h) => Usage {
                host_buffers: 1,
                host_buffer_bytes: h.size(),
                ..Usage::default()
            },
            // Images count against the buffer quotas.
            Object::Image(i) => Usage {
                buffers: 1,
                buffer_bytes: i.vk().allocation_size(),
                ..Usage::default()
            },
        }
    }

    /// Saturating: estimates come from client input (a size of `u64::MAX` is refused later,
    /// by its own check, not by an overflow here).
    fn add(&mut self, d: &Usage) {
        self.buffers = self.buffers.saturating_add(d.buffers);
        self.semaphores = self.semaphores.saturating_add(d.semaphores);
        self.buffer_bytes = self.buffer_bytes.saturating_add(d.buffer_bytes);
        self.host_buffers = self.host_buffers.saturating_add(d.host_buffers);
        self.host_buffer_bytes = self.host_buffer_bytes.saturating_add(d.host_buffer_bytes);
    }

    fn sub(&mut self, d: &Usage) {
        self.buffers = self.buffers.saturating_sub(d.buffers);
        self.semaphores = self.semaphores.saturating_sub(d.semaphores);
        self.buffer_bytes = self.buffer_bytes.saturating_sub(d.buffer_bytes);
        self.host_buffers = self.host_buffers.saturating_sub(d.host_buffers);
        self.host_buffer_bytes = self.host_buffer_bytes.saturating_sub(d.host_buffer_bytes);
    }

    fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// A resource with its current references, as listings show it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The resource.
    pub resource: Arc<Resource>,
    /// Session references plus the pin.
    pub references: u32,
    /// Whether the uid pin holds it.
    pub pinned: bool,
    /// Uids granted its use.
    pub granted_uids: Vec<u32>,
    /// Gids granted its use.
    pub granted_gids: Vec<u32>,
}

struct Entry {
    resource: Arc<Resource>,
    sessions: HashSet<String>,
    pinned: bool,
    granted_uids: BTreeSet<u32>,
    granted_gids: BTreeSet<u32>,
    tokens: Vec<[u8; ids::ID_BYTES]>,
}

impl Entry {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            resource: self.resource.clone(),
            references: u32::try_from(self.sessions.len()).unwrap_or(u32::MAX)
                + u32::from(self.pinned),
            pinned: self.pinned,
            granted_uids: self.granted_uids.iter().copied().collect(),
            granted_gids: self.granted_gids.iter().copied().collect(),
        }
    }

    /// Whether `c` may use the resource (see the module docs). The admin group does not use
    /// other uids' resources: it only sees and releases them ([`Entry::sees`]).
    fn reaches(&self, c: &Caller) -> bool {
        self.resource.owner_uid == c.uid
            || self.granted_uids.contains(&c.uid)
            || self.granted_gids.iter().any(|g| c.in_group(*g))
            || c.session
                .as_ref()
                .is_some_and(|s| self.sessions.contains(s))
    }
}

impl Entry {
    /// Whether `c` may see (list, describe) and release the resource: whoever reaches it, and
    /// the admin group.
    fn sees(&self, c: &Caller) -> bool {
        c.admin || self.reaches(c)
    }
}

/// Whom a grant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantee {
    /// A uid.
    Uid(u32),
    /// A gid: its members, by primary gid or supplementary group.
    Gid(u32),
}

/// What Open names.
#[derive(Debug, Clone)]
pub enum OpenTarget {
    /// An id the caller reaches.
    Id(String),
    /// A capability token.
    Token(Vec<u8>),
    /// An owner's resource by name.
    Named {
        /// The owner.
        owner_uid: u32,
        /// The name.
        name: String,
    },
}

/// A client session.
#[derive(Debug)]
struct Session {
    uid: u32,
    pid: i32,
    name: String,
    started: Instant,
    resources: HashSet<String>,
    /// Semaphores this session signals: those it created and those it opened to signal.
    created: HashSet<String>,
}

#[derive(Default)]
struct Inner {
    resources: HashMap<String, Entry>,
    sessions: HashMap<String, Session>,
    /// Live usage per owner uid, kept with every insert and removal (quota checks, metrics).
    usage: HashMap<u32, Usage>,
    /// `(owner uid, name)` → id, for the named resources.
    names: HashMap<(u32, String), String>,
    /// Capability token → id.
    tokens: HashMap<[u8; ids::ID_BYTES], String>,
}

impl Inner {
    /// Removes resource `id` and uncharges its owner.
    fn remove(&mut self, id: &str) -> Option<Arc<Resource>> {
        let e = self.resources.remove(id)?;
        let uid = e.resource.owner_uid;
        if !e.resource.name.is_empty() {
            self.names.remove(&(uid, e.resource.name.clone()));
        }
        for t in &e.tokens {
            self.tokens.remove(t);
        }
        if let Some(u) = self.usage.get_mut(&uid) {
            u.sub(&Usage::of(&e.resource.object));
            if u.is_zero() {
                self.usage.remove(&uid);
            }
        }
        Some(e.resource)
    }

    /// Refuses `add` for `uid` (and one more reference for `session`) past a quota.
    fn check(&self, q: &Quotas, uid: u32, session: Option<&str>, add: &Usage) -> Result<()> {
        let mut after = self.usage.get(&uid).copied().unwrap_or_default();
        after.add(add);
        let scope = format!(", uid {uid}");
        let over = |what, limit: u64, value: u64, counted: u64| {
            (counted > 0 && limit > 0 && value > limit)
                .then(|| crate::quota::refused(what, limit, scope.clone()))
        };
        let checks = [
            over(
                "buffers per uid",
                q.buffers_per_uid,
                after.buffers,
                add.buffers,
            ),
            over(
                "buffer bytes per uid",
                q.buffer_bytes_per_uid,
                after.buffer_bytes,
                add.buffer_bytes,
            ),
            over(
                "semaphores per uid",
                q.semaphores_per_uid,
                after.semaphores,
                add.semaphores,
            ),
            over(
                "host buffers per uid",
                q.host_buffers_per_uid,
                after.host_buffers,
                add.host_buffers,
            ),
            over(
                "host buffer bytes per uid",
                q.host_buffer_bytes_per_uid,
                after.host_buffer_bytes,
                add.host_buffer_bytes,
            ),
        ];
        if let Some(e) = checks.into_iter().flatten().next() {
            return Err(e);
        }
        match session.and_then(|sid| self.sessions.get(sid)) {
            Some(s) => self.check_session(q, s, add),
            None => Ok(()),
        }
    }

    /// Refuses one more reference of session `s`, to a resource that counts for `add`, past
    /// `resources_per_session` or `buffer_bytes_per_session`.
    fn check_session(&self, q: &Quotas, s: &Session, add: &Usage) -> Result<()> {
        if s.resources.len() as u64 >= q.resources_per_session {
            return Err(crate::quota::refused(
                "resources per session",
                q.resources_per_session,
                format!(", uid {}", s.uid),
            ));
        }
        // Summed only where the quota is set (default: none): a session holds at most
        // resources_per_session references.
        if q.buffer_bytes_per_session > 0 && add.buffer_bytes > 0 {
            let held: u64 = s
                .resources
                .iter()
                .filter_map(|id| self.resources.get(id))
                .map(|e| Usage::of(&e.resource.object).buffer_bytes)
                .sum();
            if held.saturating_add(add.buffer_bytes) > q.buffer_bytes_per_session {
                return Err(crate::quota::refused(
                    "buffer bytes per session",
                    q.buffer_bytes_per_session,
                    format!(", uid {}", s.uid),
                ));
            }
        }
        Ok(())
    }
}

/// Resources and sessions. Cheap, short critical sections under one mutex.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    quotas: Quotas,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (r, s) = self.counts();
        f.debug_struct("Registry")
            .field("resources", &r)
            .field("sessions", &s)
            .finish()
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registry that enforces `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            quotas,
        }
    }

    /// Checks, before the allocation, that `uid` (and `session`) may add `add`. [`insert`]
    /// checks again: this is the early answer that spares a doomed allocation.
    ///
    /// [`insert`]: Registry::insert
    pub fn admit(&self, uid: u32, session: Option<&str>, add: &Usage) -> Result<()> {
        self.lock().check(&self.quotas, uid, session, add)
    }

    /// Opens a session for a process and returns its id (`quotas.sessions_per_uid`).
    pub fn open_session(&self, uid: u32, pid: i32, name: &str) -> Result<String> {
        let id = ids::new_id("ses");
        let mut inner = self.lock();
        let open = inner.sessions.values().filter(|s| s.uid == uid).count() as u64;
        if open >= self.quotas.sessions_per_uid {
            return Err(crate::quota::refused(
                "sessions per uid",
                self.quotas.sessions_per_uid,
                format!(", uid {uid}"),
            ));
        }
        inner.sessions.insert(
            id.clone(),
            Session {
                uid,
                pid,
                name: name.to_owned(),
                started: Instant::now(),
                resources: HashSet::new(),
                created: HashSet::new(),
            },
        );
        Ok(id)
    }

    /// Checks that `session` is live and belongs to `uid`.
    pub fn check_session(&self, session: &str, uid: u32) -> Result<()> {
        match self.lock().sessions.get(session) {
            Some(s) if s.uid == uid => Ok(()),
            _ => Err(Error::UnknownSession(ids::shown(session))),
        }
    }

    /// Ends a session, dropping its references. Returns the resources this freed and the
    /// semaphores it created that live on (pinned or held by other sessions): their signaler
    /// is gone.
    pub fn end_session(&self, session: &str) -> EndedSession {
        let mut inner = self.lock();
        let Some(s) = inner.sessions.remove(session) else {
            return EndedSession::default();
        };
        tracing::debug!(session, uid = s.uid, pid = s.pid, name = %s.name, age_ms = s.started.elapsed().as_millis() as u64, "session ended");
        let mut freed = Vec::new();
        for id in s.resources {
            if let Some(e) = inner.resources.get_mut(&id) {
                e.sessions.remove(session);
                if e.sessions.is_empty() && !e.pinned {
                    if let Some(r) = inner.remove(&id) {
                        freed.push(r);
                    }
                }
            }
        }
        // Semaphores whose last signaler session this was.
        let orphaned = s
            .created
            .iter()
            .filter(|id| !inner.sessions.values().any(|o| o.created.contains(*id)))
            .filter_map(|id| inner.resources.get(id))
            .map(|e| e.resource.clone())
            .collect();
        EndedSession { freed, orphaned }
    }

    /// Adds a new resource referenced by `session` (checked by the caller) and/or pinned.
    pub fn insert(&self, resource: Resource, session: Option<&str>, pin: bool) -> Result<Snapshot> {
        let mut inner = self.lock();
        let id = resource.id.clone();
        let add = Usage::of(&resource.object);
        let uid = resource.owner_uid;
        let named = (!resource.name.is_empty()).then(|| (uid, resource.name.clone()));
        if let Some(key) = &named {
            if inner.names.contains_key(key) {
                return Err(Error::NameTaken(key.1.clone()));
            }
        }
        inner.check(&self.quotas, uid, session, &add)?;
        let mut sessions = HashSet::new();
        if let Some(sid) = session {
            let s = inner
                .sessions
                .get_mut(sid)
                .ok_or_else(|| Error::UnknownSession(ids::shown(sid)))?;
            s.resources.insert(id.clone());
            if matches!(resource.object, Object::Semaphore(_)) {
                s.created.insert(id.clone());
            }
            sessions.insert(sid.to_owned());
        }
        let entry = Entry {
            resource: Arc::new(resource),
            sessions,
            pinned: pin,
            granted_uids: BTreeSet::new(),
            granted_gids: BTreeSet::new(),
            tokens: Vec::new(),
        };
        let snap = entry.snapshot();
        if let Some(key) = named {
            inner.names.insert(key, id.clone());
        }
        inner.resources.insert(id, entry);
        inner.usage.entry(uid).or_default().add(&add);
        Ok(snap)
    }

    /// The caller's resource `id`. `what` names the expected kind in errors.
    pub fn get(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        match self.lock().resources.get(id) {
            Some(e) if e.reaches(caller) => Ok(e.snapshot()),
            _ => Err(not_found(id)),
        }
    }

    /// The caller's view of resource `id` for describing and releasing it: like [`Registry::get`],
    /// and the admin group sees every resource.
    pub fn get_visible(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        match self.lock().resources.get(id) {
            Some(e) if e.sees(caller) => Ok(e.snapshot()),
            _ => Err(not_found(id)),
        }
    }

    /// Resource `id` without an access check: for an export ticket, which was issued after one.
    pub fn get_unchecked(&self, id: &str) -> Result<Snapshot> {
        match self.lock().resources.get(id) {
            Some(e) => Ok(e.snapshot()),
            None => Err(not_found(id)),
        }
    }

    /// Every resource `caller` sees, oldest first.
    pub fn list(&self, caller: &Caller) -> Vec<Snapshot> {
        let mut out: Vec<_> = self
            .lock()
            .resources
            .values()
            .filter(|e| e.sees(caller))
            .map(Entry::snapshot)
            .collect();
        out.sort_by_key(|s| s.resource.created);
        out
    }

    /// The entry of `id` for an owner's operation: NOT_FOUND unless `caller` reaches it,
    /// PERMISSION_DENIED unless it owns it.
    fn owned<'a>(inner: &'a mut Inner, id: &str, caller: &Caller) -> Result<&'a mut Entry> {
        match inner.resources.get_mut(id) {
            Some(e) if e.resource.owner_uid == caller.uid => Ok(e),
            Some(e) if e.reaches(caller) => Err(Error::NotOwner(ids::shown(id))),
            _ => Err(not_found(id)),
        }
    }

    /// Grants (`grant`) or revokes the use of `id` to `who`. Owner only.
    pub fn set_grant(
        &self,
        id: &str,
        caller: &Caller,
        who: Grantee,
        grant: bool,
    ) -> Result<Snapshot> {
        let mut inner = self.lock();
        let e = Self::owned(&mut inner, id, caller)?;
        let (set, n) = match who {
            Grantee::Uid(u) => (&mut e.granted_uids, u),
            Grantee::Gid(g) => (&mut e.granted_gids, g),
        };
        if grant {
            if set.len() >= MAX_GRANTS && !set.contains(&n) {
                return Err(Error::TooLarge {
                    what: "grants of one kind per resource",
                    value: set.len() as u64 + 1,
                    limit: MAX_GRANTS as u64,
                });
            }
            set.insert(n);
        } else {
            set.remove(&n);
        }
        Ok(e.snapshot())
    }

    /// Mints a capability token for `id`. Owner only.
    pub fn mint_token(&self, id: &str, caller: &Caller) -> Result<[u8; ids::ID_BYTES]> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, id, caller)?;
        if e.tokens.len() >= MAX_GRANTS {
            return Err(Error::TooLarge {
                what: "tokens per resource",
                value: e.tokens.len() as u64 + 1,
                limit: MAX_GRANTS as u64,
            });
        }
        let token = ids::random16();
        e.tokens.push(token);
        inner.tokens.insert(token, id.to_owned());
        Ok(token)
    }

    /// Invalidates every token of `id`. Owner only.
    pub fn revoke_tokens(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let e = Self::owned(inner, id, caller)?;
        let tokens = std::mem::take(&mut e.tokens);
        let snap = e.snapshot();
        for t in tokens {
            inner.tokens.remove(&t);
        }
        Ok(snap)
    }

    /// Adds a reference of the caller's session to the resource `target` names; with `signal`,
    /// for a semaphore, the session becomes one of its signalers too.
    pub fn open(&self, target: &OpenTarget, signal: bool, caller: &Caller) -> Result<Snapshot> {
        let sid = caller.session.as_deref().ok_or(Error::NoSession {
            header: gpushare_proto::SESSION_HEADER,
        })?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let id = match target {
            OpenTarget::Id(id) => match inner.resources.get(id) {
                Some(e) if e.reaches(caller) => id.clone(),
                _ => return Err(not_found(id)),
            },
            OpenTarget::Token(t) => {
                let key: [u8; ids::ID_BYTES] =
                    t.as_slice().try_into().map_err(|_| Error::BadToken)?;
                inner.tokens.get(&key).cloned().ok_or(Error::UnknownToken)?
            }
            OpenTarget::Named { owner_uid, name } => {
                let hidden = || Error::NotFound {
                    what: "named resource",
                    id: format!("{owner_uid}:{}", name.chars().take(64).collect::<String>()),
                };
                let id = inner
                    .names
                    .get(&(*owner_uid, name.clone()))
                    .cloned()
                    .ok_or_else(hidden)?;
                match inner.resources.get(&id) {
                    Some(e) if e.reaches(caller) => id,
                    _ => return Err(hidden()),
                }
            }
        };
        let session = inner
            .sessions
            .get(sid)
            .ok_or_else(|| Error::UnknownSession(ids::shown(sid)))?;
        if !session.resources.contains(&id) {
            let add = inner
                .resources
                .get(&id)
                .map(|e| Usage::of(&e.resource.object))
                .ok_or_else(|| not_found(&id))?;
            inner.check_session(&self.quotas, session, &add)?;
        }
        let e = inner.resources.get_mut(&id).ok_or_else(|| not_found(&id))?;
        let semaphore = matches!(e.resource.object, Object::Semaphore(_));
        if let Some(s) = inner.sessions.get_mut(sid) {
            s.resources.insert(id.clone());
            if signal && semaphore {
                s.created.insert(id.clone());
            }
        }
        e.sessions.insert(sid.to_owned());
        Ok(e.snapshot())
    }

    /// Drops the reference of `session` if it holds one, otherwise the pin. Returns the resource
    /// if this freed it.
    pub fn release(&self, id: &str, caller: &Caller) -> Result<Option<Arc<Resource>>> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = match inner.resources.get_mut(id) {
            Some(e) if e.sees(caller) => e,
            _ => return Err(not_found(id)),
        };
        let by_session = caller
            .session
            .as_deref()
            .filter(|s| entry.sessions.contains(*s));
        match by_session {
            Some(sid) => {
                entry.sessions.remove(sid);
                if let Some(s) = inner.sessions.get_mut(sid) {
                    s.resources.remove(id);
                }
            }
            None if entry.pinned && entry.resource.owner_uid == caller.uid => entry.pinned = false,
            None if caller.admin => {
                // The admin group frees it: every reference goes.
                for sid in std::mem::take(&mut entry.sessions) {
                    if let Some(s) = inner.sessions.get_mut(&sid) {
                        s.resources.remove(id);
                    }
                }
                entry.pinned = false;
                match ADMIN_RELEASE_LOG.admit() {
                    Some(left_out) => tracing::info!(
                        id,
                        admin_uid = caller.uid,
                        owner_uid = entry.resource.owner_uid,
                        left_out,
                        "resource released by the admin group"
                    ),
                    None => tracing::debug!(
                        id,
                        admin_uid = caller.uid,
                        owner_uid = entry.resource.owner_uid,
                        "resource released by the admin group"
                    ),
                }
            }
            // Dropping the pin is the owner's: a grantee that holds no reference may not.
            None if entry.pinned && entry.reaches(caller) => {
                return Err(Error::NotOwner(ids::shown(id)))
            }
            None => return Err(Error::NoReference(ids::shown(id))),
        }
        if entry.sessions.is_empty() && !entry.pinned {
            return Ok(inner.remove(id));
        }
        Ok(None)
    }

    /// Drops every resource and session (shutdown). Returns the resources.
    pub fn clear(&self) -> Vec<Arc<Resource>> {
        let mut inner = self.lock();
        inner.sessions.clear();
        inner.usage.clear();
        inner.resources.drain().map(|(_, e)| e.resource).collect()
    }

    /// Live buffers, semaphores, host buffers and their bytes per owner uid.
    pub fn usage_by_uid(&self) -> BTreeMap<u32, Usage> {
        self.lock()
            .usage
            .iter()
            .map(|(uid, u)| (*uid, *u))
            .collect()
    }

    /// The live sessions `caller` may see, oldest first (for introspection): its uid's, or
    /// everybody's for the admin group.
    pub fn sessions(&self, caller: &Caller) -> Vec<SessionView> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out: Vec<(Instant, SessionView)> = inner
            .sessions
            .iter()
            .filter(|(_, s)| caller.admin || s.uid == caller.uid)
            .map(|(id, s)| {
                let signaled = s
                    .created
                    .iter()
                    .filter(|id| inner.resources.contains_key(*id))
                    .count();
                let view = SessionView {
                    id: id.clone(),
                    uid: s.uid,
                    pid: s.pid,
                    client_name: s.name.clone(),
                    age: now.saturating_duration_since(s.started),
                    references: u32::try_from(s.resources.len()).unwrap_or(u32::MAX),
                    semaphores_signaled: u32::try_from(signaled).unwrap_or(u32::MAX),
                };
                (s.started, view)
            })
            .collect();
        out.sort_by_key(|(started, _)| *started);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Every semaphore `caller` reaches, oldest first, with the id of its signaler (the live
    /// session that created it), if any (for introspection).
    pub fn semaphores(&self, caller: &Caller) -> Vec<(Snapshot, Option<String>)> {
        let inner = self.lock();
        let signalers: HashMap<&str, &str> = inner
            .sessions
            .iter()
            .flat_map(|(sid, s)| s.created.iter().map(move |r| (r.as_str(), sid.as_str())))
            .collect();
        let mut out: Vec<_> = inner
            .resources
            .values()
            .filter(|e| e.sees(caller) && matches!(e.resource.object, Object::Semaphore(_)))
            .map(|e| {
                let signaler = signalers
                    .get(e.resource.id.as_str())
                    .map(|s| (*s).to_owned());
                (e.snapshot(), signaler)
            })
            .collect();
        out.sort_by_key(|(s, _)| s.resource.created);
        out
    }

    /// (live resources, live sessions).
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.resources.len(), inner.sessions.len())
    }
}
