//! The registry: every live resource and session, the references between them, and the
//! indexes (names, tokens, each uid's usage), under one lock with short critical sections.
//!
//! A resource is held by the sessions that reference it and, optionally, by a *pin* owned by
//! its uid. When the last reference goes, the registry drops its `Arc` of the resource;
//! operations in flight hold their own `Arc`s, so the memory is freed when the last of them
//! finishes, never under a running transfer. Processes that imported the resource's descriptor
//! keep their import: the driver holds its own reference.
//!
//! Who may reach what is `access`'s rule, what a session is `session`'s, what resources cost
//! `usage`'s; this module applies them to the table.

#[cfg(test)]
mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::access::{self, Caller, Grantee, Grants, OpenTarget, Token};
use crate::config::Quotas;
use crate::error::{Error, Result};
use crate::ids;
use crate::log_budget::LogBudget;
use crate::resource::{Object, Resource};
use crate::session::{SessionView, Sessions, SignalPath};
use crate::usage::{self, Usage};

/// INFO lines for resources the admin group releases: a few a second (`left_out` counts the
/// rest).
static ADMIN_RELEASE_LOG: LogBudget = LogBudget::new(10);

fn not_found(id: &str) -> Error {
    Error::NotFound {
        what: "resource",
        id: ids::shown(id),
    }
}

/// What ending a session left behind ([`Registry::end_session`]).
#[derive(Debug, Default)]
pub(crate) struct EndedSession {
    /// Resources nothing holds any more.
    pub(crate) freed: Vec<Arc<Resource>>,
    /// Semaphores the session signaled that live on without any signaler.
    pub(crate) orphaned: Vec<Arc<Resource>>,
    /// The pid of the process that opened the session (0 when unknown).
    pub(crate) pid: i32,
}

/// A resource with its current references, as listings show it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The resource.
    pub(crate) resource: Arc<Resource>,
    /// Session references plus the pin.
    pub(crate) references: u32,
    /// Whether the uid pin holds it.
    pub(crate) pinned: bool,
    /// Uids granted its use.
    pub(crate) granted_uids: Vec<u32>,
    /// Gids granted its use.
    pub(crate) granted_gids: Vec<u32>,
    /// For a stream's part: the stream.
    pub(crate) parent: Option<String>,
}

struct Entry {
    resource: Arc<Resource>,
    /// The sessions that hold a reference (and, for a stream's part, the stream's id).
    holders: HashSet<String>,
    pinned: bool,
    grants: Grants,
    /// For a stream's slot or timeline: the stream, whose access rule it follows.
    parent: Option<String>,
}

impl Entry {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            resource: self.resource.clone(),
            references: u32::try_from(self.holders.len()).unwrap_or(u32::MAX)
                + u32::from(self.pinned),
            pinned: self.pinned,
            granted_uids: self.grants.uids(),
            granted_gids: self.grants.gids(),
            parent: self.parent.clone(),
        }
    }

    fn reaches(&self, c: &Caller) -> bool {
        access::reaches(self.resource.owner_uid, &self.grants, &self.holders, c)
    }
}

#[derive(Default)]
struct Inner {
    resources: HashMap<String, Entry>,
    sessions: Sessions,
    /// Live usage per owner uid, kept with every insert and removal (quota checks, metrics).
    usage: HashMap<u32, Usage>,
    /// `(owner uid, name)` → id, for the named resources.
    names: HashMap<(u32, String), String>,
    /// Capability token → id.
    tokens: HashMap<Token, String>,
}

impl Inner {
    /// Whether `caller` reaches `e`: by its own rule, or, for a stream's part, by the stream's.
    fn reaches(&self, e: &Entry, c: &Caller) -> bool {
        e.reaches(c)
            || e.parent
                .as_ref()
                .and_then(|p| self.resources.get(p))
                .is_some_and(|p| p.reaches(c))
    }

    /// Whether `caller` sees `e`: whoever reaches it, and the admin group.
    fn sees(&self, e: &Entry, c: &Caller) -> bool {
        access::sees(c, || self.reaches(e, c))
    }

    /// Removes resource `id` and, for a stream, the parts only it held. Returns what it
    /// removed.
    fn remove_cascade(&mut self, id: &str) -> Vec<Arc<Resource>> {
        let Some(r) = self.remove(id) else {
            return Vec::new();
        };
        let mut out = vec![r];
        if matches!(out[0].object, Object::Stream(_)) {
            let parts: Vec<String> = self
                .resources
                .iter()
                .filter(|(_, e)| e.parent.as_deref() == Some(id))
                .map(|(pid, _)| pid.clone())
                .collect();
            for pid in parts {
                if let Some(e) = self.resources.get_mut(&pid) {
                    e.holders.remove(id);
                    if e.holders.is_empty() && !e.pinned {
                        out.extend(self.remove(&pid));
                    }
                }
            }
        }
        out
    }

    fn insert(
        &mut self,
        quotas: &Quotas,
        resource: Resource,
        session: Option<&str>,
        pin: bool,
    ) -> Result<Snapshot> {
        let inner = self;
        let id = resource.id.clone();
        let add = Usage::of(&resource.object);
        let uid = resource.owner_uid;
        let named = (!resource.name.is_empty()).then(|| (uid, resource.name.clone()));
        if let Some(key) = &named {
            if inner.names.contains_key(key) {
                return Err(Error::NameTaken(key.1.clone()));
            }
        }
        inner.admit(quotas, uid, session, &add)?;
        let mut holders = HashSet::new();
        if let Some(sid) = session {
            let s = inner.sessions.get_mut(sid)?;
            s.resources.insert(id.clone());
            if matches!(resource.object, Object::Semaphore(_)) {
                s.signals.insert(id.clone());
            }
            holders.insert(sid.to_owned());
        }
        let entry = Entry {
            resource: Arc::new(resource),
            holders,
            pinned: pin,
            grants: Grants::default(),
            parent: None,
        };
        let snap = entry.snapshot();
        if let Some(key) = named {
            inner.names.insert(key, id.clone());
        }
        inner.resources.insert(id, entry);
        inner.usage.entry(uid).or_default().add(&add);
        Ok(snap)
    }

    /// Removes resource `id` and uncharges its owner.
    fn remove(&mut self, id: &str) -> Option<Arc<Resource>> {
        let e = self.resources.remove(id)?;
        let uid = e.resource.owner_uid;
        if !e.resource.name.is_empty() {
            self.names.remove(&(uid, e.resource.name.clone()));
        }
        for t in e.grants.tokens() {
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
    fn admit(&self, q: &Quotas, uid: u32, session: Option<&str>, add: &Usage) -> Result<()> {
        let current = self.usage.get(&uid).copied().unwrap_or_default();
        usage::admit_uid(q, uid, current, add)?;
        match session {
            // An unknown session is refused by the insert that follows.
            Some(sid) if self.sessions.get(sid).is_ok() => self.admit_reference(q, sid, add),
            _ => Ok(()),
        }
    }

    /// Refuses one more reference of session `sid` to a resource that counts for `add`.
    fn admit_reference(&self, q: &Quotas, sid: &str, add: &Usage) -> Result<()> {
        let s = self.sessions.get(sid)?;
        let held_bytes = || {
            s.resources
                .iter()
                .filter_map(|id| self.resources.get(id))
                .map(|e| Usage::of(&e.resource.object).buffer_bytes)
                .sum()
        };
        usage::admit_session(q, s.uid(), s.resources.len(), held_bytes, add)
    }

    /// The entry of `id` for an owner's operation: NOT_FOUND unless `caller` reaches it,
    /// PERMISSION_DENIED unless it owns it.
    fn owned(&mut self, id: &str, caller: &Caller) -> Result<&mut Entry> {
        match self.resources.get_mut(id) {
            Some(e) if e.resource.owner_uid == caller.uid() => Ok(e),
            Some(e) if e.reaches(caller) => Err(Error::NotOwner(ids::shown(id))),
            _ => Err(not_found(id)),
        }
    }
}

/// Resources and sessions.
#[derive(Default)]
pub(crate) struct Registry {
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
    pub(crate) fn new(quotas: Quotas) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            quotas,
        }
    }

    /// Checks, before the allocation, that `uid` (and `session`) may add `add`.
    /// [`Registry::insert`] checks again: this is the early answer that spares a doomed
    /// allocation.
    pub(crate) fn admit(&self, uid: u32, session: Option<&str>, add: &Usage) -> Result<()> {
        self.lock().admit(&self.quotas, uid, session, add)
    }

    /// Opens a session for a process and returns its id (`quotas.sessions_per_uid`).
    pub(crate) fn open_session(&self, uid: u32, pid: i32, name: &str) -> Result<String> {
        self.lock()
            .sessions
            .open(uid, pid, name, self.quotas.sessions_per_uid)
    }

    /// Checks that `session` is live and belongs to `uid`.
    pub(crate) fn check_session(&self, session: &str, uid: u32) -> Result<()> {
        self.lock().sessions.check(session, uid)
    }

    /// Ends a session, dropping its references. Returns the resources this freed and the
    /// semaphores whose last signaler it was that live on (pinned or held by other sessions).
    pub(crate) fn end_session(&self, session: &str) -> EndedSession {
        let mut inner = self.lock();
        let Some(s) = inner.sessions.end(session) else {
            return EndedSession::default();
        };
        let mut freed = Vec::new();
        for id in &s.resources {
            if let Some(e) = inner.resources.get_mut(id) {
                e.holders.remove(session);
                if e.holders.is_empty() && !e.pinned {
                    freed.extend(inner.remove_cascade(id));
                }
            }
        }
        let orphaned = s
            .signals
            .iter()
            .filter(|id| !inner.sessions.signaled(id))
            .filter_map(|id| inner.resources.get(id))
            .map(|e| e.resource.clone())
            .collect();
        EndedSession {
            freed,
            orphaned,
            pid: s.pid(),
        }
    }

    /// Adds a new resource referenced by `session` (checked by the caller) and/or pinned. The
    /// session becomes the signaler of a new semaphore.
    pub(crate) fn insert(
        &self,
        resource: Resource,
        session: Option<&str>,
        pin: bool,
    ) -> Result<Snapshot> {
        let mut inner = self.lock();
        inner.insert(&self.quotas, resource, session, pin)
    }

    /// Resource `id`, if `caller` may use it.
    pub(crate) fn get(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        let inner = self.lock();
        match inner.resources.get(id) {
            Some(e) if inner.reaches(e, caller) => Ok(e.snapshot()),
            _ => Err(not_found(id)),
        }
    }

    /// The caller's view of resource `id` for describing and releasing it: like
    /// [`Registry::get`], and the admin group sees every resource.
    pub(crate) fn get_visible(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        let inner = self.lock();
        match inner.resources.get(id) {
            Some(e) if inner.sees(e, caller) => Ok(e.snapshot()),
            _ => Err(not_found(id)),
        }
    }

    /// Resource `id` without an access check: for an export ticket, which was issued after one.
    pub(crate) fn get_unchecked(&self, id: &str) -> Result<Snapshot> {
        match self.lock().resources.get(id) {
            Some(e) => Ok(e.snapshot()),
            None => Err(not_found(id)),
        }
    }

    /// Every resource `caller` sees, oldest first.
    pub(crate) fn list(&self, caller: &Caller) -> Vec<Snapshot> {
        let inner = self.lock();
        let mut out: Vec<_> = inner
            .resources
            .values()
            .filter(|e| inner.sees(e, caller))
            .map(Entry::snapshot)
            .collect();
        out.sort_by_key(|s| s.resource.created);
        out
    }

    /// Every live resource, oldest first (metrics: no caller).
    pub(crate) fn all(&self) -> Vec<Snapshot> {
        let mut out: Vec<_> = self
            .lock()
            .resources
            .values()
            .map(Entry::snapshot)
            .collect();
        out.sort_by_key(|s| s.resource.created);
        out
    }

    /// Grants (`grant`) or revokes the use of `id` to `who`. Owner only.
    pub(crate) fn set_grant(
        &self,
        id: &str,
        caller: &Caller,
        who: Grantee,
        grant: bool,
    ) -> Result<Snapshot> {
        let mut inner = self.lock();
        let e = inner.owned(id, caller)?;
        e.grants.set(who, grant)?;
        Ok(e.snapshot())
    }

    /// Mints a capability token for `id`. Owner only.
    pub(crate) fn mint_token(&self, id: &str, caller: &Caller) -> Result<Token> {
        let mut inner = self.lock();
        let token = inner.owned(id, caller)?.grants.mint()?;
        inner.tokens.insert(token, id.to_owned());
        Ok(token)
    }

    /// Invalidates every token of `id`. Owner only.
    pub(crate) fn revoke_tokens(&self, id: &str, caller: &Caller) -> Result<Snapshot> {
        let mut inner = self.lock();
        let e = inner.owned(id, caller)?;
        let tokens = e.grants.take_tokens();
        let snap = e.snapshot();
        for t in tokens {
            inner.tokens.remove(&t);
        }
        Ok(snap)
    }

    /// Adds a reference of the caller's session to the resource `target` names; with `signal`,
    /// for a semaphore, the session becomes one of its signalers too.
    pub(crate) fn open(
        &self,
        target: &OpenTarget,
        signal: bool,
        caller: &Caller,
    ) -> Result<Snapshot> {
        let sid = caller.session.as_deref().ok_or(Error::NoSession {
            header: gpushare_proto::SESSION_HEADER,
        })?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let id = match target {
            OpenTarget::Id(id) => match inner.resources.get(id) {
                Some(e) if inner.reaches(e, caller) => id.clone(),
                _ => return Err(not_found(id)),
            },
            OpenTarget::Token(t) => {
                let key: Token = t.as_slice().try_into().map_err(|_| Error::BadToken)?;
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
                    Some(e) if inner.reaches(e, caller) => id,
                    _ => return Err(hidden()),
                }
            }
        };
        let object = match inner.resources.get(&id) {
            Some(e) => e.resource.object.clone(),
            None => return Err(not_found(&id)),
        };
        if !inner.sessions.get(sid)?.resources.contains(&id) {
            inner.admit_reference(&self.quotas, sid, &Usage::of(&object))?;
        }
        let s = inner.sessions.get_mut(sid)?;
        s.resources.insert(id.clone());
        if signal && matches!(object, Object::Semaphore(_)) {
            s.signals.insert(id.clone());
        }
        let e = inner.resources.get_mut(&id).ok_or_else(|| not_found(&id))?;
        e.holders.insert(sid.to_owned());
        Ok(e.snapshot())
    }

    /// Drops the reference of the caller's session if it holds one, otherwise the pin (the
    /// owner's; a grantee may not), or for the admin group every reference. Returns what this
    /// freed (a stream frees its parts with it).
    pub(crate) fn release(&self, id: &str, caller: &Caller) -> Result<Vec<Arc<Resource>>> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let visible = inner
            .resources
            .get(id)
            .is_some_and(|e| inner.sees(e, caller));
        let entry = match inner.resources.get_mut(id) {
            Some(e) if visible => e,
            _ => return Err(not_found(id)),
        };
        let by_session = caller
            .session
            .as_deref()
            .filter(|s| entry.holders.contains(*s));
        match by_session {
            Some(sid) => {
                entry.holders.remove(sid);
                inner.sessions.forget([sid.to_owned()], id);
            }
            None if entry.pinned && entry.resource.owner_uid == caller.uid() => {
                entry.pinned = false
            }
            None if caller.admin => {
                // The admin group frees it: every reference goes.
                inner
                    .sessions
                    .forget(std::mem::take(&mut entry.holders), id);
                entry.pinned = false;
                let owner_uid = entry.resource.owner_uid;
                match ADMIN_RELEASE_LOG.admit() {
                    Some(left_out) => tracing::info!(
                        id,
                        admin_uid = caller.uid(),
                        owner_uid,
                        left_out,
                        "resource released by the admin group"
                    ),
                    None => tracing::debug!(
                        id,
                        admin_uid = caller.uid(),
                        owner_uid,
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
        if entry.holders.is_empty() && !entry.pinned {
            return Ok(inner.remove_cascade(id));
        }
        Ok(Vec::new())
    }

    /// Adds a stream and its parts (slots and ready timeline), checking the owner's quotas for
    /// them all at once: the stream is held by `session` and/or pinned, each part by the
    /// stream; `producer` (a session) becomes the signaler of the ready timeline `ready`.
    pub(crate) fn insert_stream(
        &self,
        stream: Resource,
        parts: Vec<Resource>,
        session: Option<&str>,
        pin: bool,
        producer: Option<(&str, &str)>,
    ) -> Result<Snapshot> {
        let mut inner = self.lock();
        let id = stream.id.clone();
        let uid = stream.owner_uid;
        let mut add = Usage::default();
        for p in &parts {
            add.add(&Usage::of(&p.object));
        }
        usage::admit_uid(
            &self.quotas,
            uid,
            inner.usage.get(&uid).copied().unwrap_or_default(),
            &add,
        )?;
        if let Some((sid, _)) = producer {
            inner.sessions.get(sid)?;
        }
        let snap = inner.insert(&self.quotas, stream, session, pin)?;
        if let Some((sid, ready)) = producer {
            inner
                .sessions
                .get_mut(sid)?
                .signals
                .insert(ready.to_owned());
        }
        for p in parts {
            let pid = p.id.clone();
            inner
                .usage
                .entry(p.owner_uid)
                .or_default()
                .add(&Usage::of(&p.object));
            inner.resources.insert(
                pid,
                Entry {
                    resource: Arc::new(p),
                    holders: HashSet::from([id.clone()]),
                    pinned: false,
                    grants: Grants::default(),
                    parent: Some(id.clone()),
                },
            );
        }
        Ok(snap)
    }

    /// Adds a part to live stream `stream` (a consumer's release timeline), charged to its
    /// owner; `signaler` (a session) becomes its signaler.
    pub(crate) fn insert_part(&self, part: Resource, stream: &str, signaler: &str) -> Result<()> {
        let mut inner = self.lock();
        if !inner.resources.contains_key(stream) {
            return Err(not_found(stream));
        }
        let add = Usage::of(&part.object);
        let uid = part.owner_uid;
        usage::admit_uid(
            &self.quotas,
            uid,
            inner.usage.get(&uid).copied().unwrap_or_default(),
            &add,
        )?;
        let pid = part.id.clone();
        inner
            .sessions
            .get_mut(signaler)?
            .signals
            .insert(pid.clone());
        inner.usage.entry(uid).or_default().add(&add);
        inner.resources.insert(
            pid,
            Entry {
                resource: Arc::new(part),
                holders: HashSet::from([stream.to_owned()]),
                pinned: false,
                grants: Grants::default(),
                parent: Some(stream.to_owned()),
            },
        );
        Ok(())
    }

    /// Drops stream `stream`'s hold on its part `part`; returns the part if that freed it.
    pub(crate) fn drop_part(&self, stream: &str, part: &str) -> Vec<Arc<Resource>> {
        let mut inner = self.lock();
        let unheld = match inner.resources.get_mut(part) {
            Some(e) => e.holders.remove(stream) && e.holders.is_empty() && !e.pinned,
            None => false,
        };
        if unheld {
            inner.remove_cascade(part)
        } else {
            Vec::new()
        }
    }

    /// Makes session `session` a signaler of semaphore `id` (a stream's new producer).
    pub(crate) fn add_signaler(&self, session: &str, id: &str) -> Result<()> {
        self.lock()
            .sessions
            .get_mut(session)?
            .signals
            .insert(id.to_owned());
        Ok(())
    }

    /// Records how session `session`, a signaler of semaphore `id`, signals it.
    pub(crate) fn set_signal_path(&self, session: &str, id: &str, path: SignalPath) -> Result<()> {
        let mut inner = self.lock();
        let s = inner.sessions.get_mut(session)?;
        match path {
            SignalPath::Word => s.word_signals.insert(id.to_owned()),
            SignalPath::Semaphore => s.word_signals.remove(id),
        };
        Ok(())
    }

    /// Whether a live session signals semaphore `id` through the semaphore alone.
    pub(crate) fn signaled_without_word(&self, id: &str) -> bool {
        self.lock().sessions.signaled_without_word(id)
    }

    /// Drops every resource and session (shutdown). Returns the resources.
    pub(crate) fn clear(&self) -> Vec<Arc<Resource>> {
        let mut inner = self.lock();
        inner.sessions.clear();
        inner.usage.clear();
        inner.names.clear();
        inner.tokens.clear();
        inner.resources.drain().map(|(_, e)| e.resource).collect()
    }

    /// Live buffers, semaphores, host buffers and their bytes per owner uid.
    pub(crate) fn usage_by_uid(&self) -> BTreeMap<u32, Usage> {
        self.lock()
            .usage
            .iter()
            .map(|(uid, u)| (*uid, *u))
            .collect()
    }

    /// The live sessions `caller` may see, oldest first: its uid's, or everybody's for the
    /// admin group.
    pub(crate) fn sessions(&self, caller: &Caller) -> Vec<SessionView> {
        let inner = self.lock();
        inner
            .sessions
            .views(caller, |id| inner.resources.contains_key(id))
    }

    /// Every semaphore `caller` sees, oldest first, with the id of a live session that
    /// signals it, if any.
    pub(crate) fn semaphores(&self, caller: &Caller) -> Vec<(Snapshot, Option<String>)> {
        let inner = self.lock();
        let signalers = inner.sessions.signalers();
        let mut out: Vec<_> = inner
            .resources
            .values()
            .filter(|e| inner.sees(e, caller) && matches!(e.resource.object, Object::Semaphore(_)))
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
    pub(crate) fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.resources.len(), inner.sessions.len())
    }
}
