//! What holds resources and what ends when: sessions (started by a Session stream, ended with
//! it), Open, ReleaseResource, grants and tokens; and what the end of a holder sets off: a
//! freed semaphore is ended (poisoned first: other processes may have imported it, and their
//! GPU waits on it must not hang), a semaphore whose last signaler session ended is abandoned,
//! and the tickets a session issued are revoked.

use std::sync::Arc;

use super::Daemon;
use crate::access::{Caller, Grantee, OpenTarget, Token};
use crate::error::Result;
use crate::log_budget::LogBudget;
use crate::registry::{EndedSession, Snapshot};
use crate::resource::{check_resource_id, Object, Resource};
use crate::semaphore::{Ended, Semaphore};
use crate::session::SignalPath;

/// INFO lines for abandoned semaphores: a few a second (`left_out` counts the rest).
static ABANDONED_LOG: LogBudget = LogBudget::new(10);

/// A live client session; dropping it ends the session, however its holder goes (the Session
/// stream owns one: client close, a connection reset by a dead process, daemon shutdown).
#[derive(Debug)]
pub(crate) struct SessionGuard {
    d: Arc<Daemon>,
    id: String,
}

impl SessionGuard {
    /// The session's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.d.end_session(&self.id);
    }
}

impl Daemon {
    /// Starts a session for `caller`'s process, named `client_name` (introspection).
    pub(crate) fn start_session(
        self: &Arc<Self>,
        caller: &Caller,
        client_name: &str,
    ) -> Result<SessionGuard> {
        Self::check_name("client_name", client_name)?;
        if self.shutdown.is_cancelled() {
            return Err(crate::error::Error::ShuttingDown);
        }
        let id = self
            .registry
            .open_session(caller.uid(), caller.peer.pid, client_name)?;
        tracing::debug!(session = %id, uid = caller.uid(), pid = caller.peer.pid, client = %client_name, "session started");
        Ok(SessionGuard {
            d: self.clone(),
            id,
        })
    }

    /// Ends session `id`: its references go, what nothing holds any more is freed, the
    /// semaphores it was the last signaler of are abandoned, its unredeemed tickets revoked.
    fn end_session(&self, id: &str) {
        let ended = self.registry.end_session(id);
        let revoked = self.tickets.revoke_session(id);
        if revoked > 0 {
            tracing::debug!(session = %id, revoked, "unredeemed tickets of an ended session revoked");
        }
        self.session_ended(ended);
        self.streams_session_ended(id);
    }

    /// What a session end left: abandons the semaphores that live on without a signaler, then
    /// frees what it freed.
    fn session_ended(&self, ended: EndedSession) {
        // Worded semaphores of a signaler that ended: raised again once its process is gone.
        let worded: Vec<Arc<Semaphore>> = ended
            .orphaned
            .iter()
            .chain(&ended.freed)
            .filter_map(|r| match &r.object {
                Object::Semaphore(s) if s.word().is_some() => Some(s.clone()),
                _ => None,
            })
            .collect();
        self.raise_after_exit(ended.pid, worded);
        for r in ended.orphaned {
            if let Object::Semaphore(sem) = &r.object {
                if let Some(value) = sem.end(Ended::Abandoned) {
                    if let Some(left_out) = ABANDONED_LOG.admit() {
                        tracing::info!(id = %r.id, value, left_out, "semaphore abandoned: its last signaler session ended");
                    } else {
                        tracing::debug!(id = %r.id, value, "semaphore abandoned: its last signaler session ended");
                    }
                }
            }
        }
        self.freed(ended.freed);
    }

    /// Called with what a release, a session end or shutdown freed.
    pub(crate) fn freed(&self, freed: impl IntoIterator<Item = Arc<Resource>>) {
        for r in freed {
            tracing::debug!(id = %r.id, "resource freed");
            match &r.object {
                Object::Semaphore(sem) => {
                    sem.end(Ended::Freed);
                }
                Object::Stream(stream) => self.stream_freed(stream),
                _ => {}
            }
        }
    }

    /// ReleaseResource: drops the caller's reference (or the pin); true when that freed it.
    pub(crate) fn release(&self, caller: &Caller, id: &str) -> Result<bool> {
        self.resource_visible(id, caller)?;
        let freed = self.registry.release(id, caller)?;
        let was_freed = freed.iter().any(|r| r.id == id);
        self.freed(freed);
        Ok(was_freed)
    }

    /// Open: a reference of the caller's session to what `target` names; with `signal`, the
    /// session becomes a signaler of the semaphore.
    pub(crate) fn open(
        &self,
        caller: &Caller,
        target: &OpenTarget,
        signal: bool,
        path: SignalPath,
    ) -> Result<Snapshot> {
        match target {
            OpenTarget::Id(id) => check_resource_id(id)?,
            OpenTarget::Named { name, .. } => Self::check_name("name", name)?,
            OpenTarget::Token(_) => {}
        }
        let snap = self.registry.open(target, signal, caller)?;
        if let (true, Object::Semaphore(sem)) = (signal, &snap.resource.object) {
            self.declare_signal_path(caller, sem, path)?;
        }
        tracing::debug!(id = %snap.resource.id, uid = caller.uid(), "opened");
        Ok(snap)
    }

    /// Grant (`grant`) or Revoke: owner only.
    pub(crate) fn set_grant(
        &self,
        caller: &Caller,
        id: &str,
        who: Grantee,
        grant: bool,
    ) -> Result<Snapshot> {
        check_resource_id(id)?;
        let snap = self.registry.set_grant(id, caller, who, grant)?;
        tracing::debug!(id, owner_uid = caller.uid(), ?who, grant, "access changed");
        Ok(snap)
    }

    /// CreateToken: owner only.
    pub(crate) fn create_token(&self, caller: &Caller, id: &str) -> Result<Token> {
        check_resource_id(id)?;
        let token = self.registry.mint_token(id, caller)?;
        tracing::debug!(id, uid = caller.uid(), "capability token minted");
        Ok(token)
    }

    /// RevokeTokens: owner only.
    pub(crate) fn revoke_tokens(&self, caller: &Caller, id: &str) -> Result<Snapshot> {
        check_resource_id(id)?;
        self.registry.revoke_tokens(id, caller)
    }

    /// Ends every session and frees every resource (shutdown).
    pub(crate) fn clear(&self) {
        let freed = self.registry.clear();
        self.freed(freed);
    }
}
