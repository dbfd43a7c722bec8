//! Client sessions: one client's presence, from its Session stream's start to its end (however
//! the client went). A session holds references to resources, and is a *signaler* of the
//! semaphores it created or opened to signal: when the last signaler of a semaphore ends, the
//! semaphore is abandoned.
//!
//! The table lives inside the registry, under its lock, so that a session's end and the
//! references it drops are one step; this module keeps the sessions' own bookkeeping.
//!
//! Not here: the resources (`registry`), the stream that keeps a session open (`service`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::access::Caller;
use crate::error::{Error, Result};
use crate::ids;

/// The id prefix of sessions (`ses-…`).
const SESSION_PREFIX: &str = "ses";

/// A client session.
#[derive(Debug)]
pub(crate) struct Session {
    uid: u32,
    pid: i32,
    name: String,
    started: Instant,
    /// The resources it holds a reference to.
    pub(crate) resources: HashSet<String>,
    /// The semaphores it signals: those it created and those it opened to signal.
    pub(crate) signals: HashSet<String>,
    /// Those of `signals` it said it signals through their memop word (`SignalPath::Word`);
    /// the others it signals through the semaphore alone.
    pub(crate) word_signals: HashSet<String>,
}

/// How a session signals a semaphore (the proto's `SignalPath`): it matters for a semaphore
/// with a memop word, which the daemon bridges while a session signals it through the
/// semaphore alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SignalPath {
    /// Through the timeline semaphore alone (unspecified, too).
    #[default]
    Semaphore,
    /// Through the word (a CUDA fast-path signaler), or through the daemon only.
    Word,
}

impl Session {
    /// Its uid.
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// The pid of the process that opened it.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// How it shows in introspection; `live` tells which of its semaphores still exist.
    fn view(&self, id: &str, now: Instant, live: impl Fn(&str) -> bool) -> SessionView {
        SessionView {
            id: id.to_owned(),
            uid: self.uid,
            pid: self.pid,
            client_name: self.name.clone(),
            age: now.saturating_duration_since(self.started),
            references: u32::try_from(self.resources.len()).unwrap_or(u32::MAX),
            semaphores_signaled: u32::try_from(self.signals.iter().filter(|id| live(id)).count())
                .unwrap_or(u32::MAX),
        }
    }
}

/// One live session, as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionView {
    /// Session id.
    pub(crate) id: String,
    /// The opening connection's uid.
    pub(crate) uid: u32,
    /// Its pid (0 when unknown).
    pub(crate) pid: i32,
    /// The client's name for itself.
    pub(crate) client_name: String,
    /// Time since it started.
    pub(crate) age: Duration,
    /// Resources it holds a reference to.
    pub(crate) references: u32,
    /// Live semaphores it signals.
    pub(crate) semaphores_signaled: u32,
}

/// The live sessions, by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session for process `pid` of `uid`, unless `uid` holds `per_uid` already
    /// (`quotas.sessions_per_uid`). Returns its id.
    pub(crate) fn open(&mut self, uid: u32, pid: i32, name: &str, per_uid: u64) -> Result<String> {
        let open = self.map.values().filter(|s| s.uid == uid).count() as u64;
        if open >= per_uid {
            return Err(crate::quota::refused(
                "sessions per uid",
                per_uid,
                format!(", uid {uid}"),
            ));
        }
        let id = ids::new_id(SESSION_PREFIX);
        self.map.insert(
            id.clone(),
            Session {
                uid,
                pid,
                name: name.to_owned(),
                started: Instant::now(),
                resources: HashSet::new(),
                signals: HashSet::new(),
                word_signals: HashSet::new(),
            },
        );
        Ok(id)
    }

    /// Checks that `id` is live and belongs to `uid` (the uid is the boundary, not the
    /// process: see `docs/SECURITY.md`).
    pub(crate) fn check(&self, id: &str, uid: u32) -> Result<()> {
        match self.map.get(id) {
            Some(s) if s.uid == uid => Ok(()),
            _ => Err(Error::UnknownSession(ids::shown(id))),
        }
    }

    /// Session `id`; UNKNOWN_SESSION (FAILED_PRECONDITION) when it is not live.
    pub(crate) fn get(&self, id: &str) -> Result<&Session> {
        self.map
            .get(id)
            .ok_or_else(|| Error::UnknownSession(ids::shown(id)))
    }

    /// Session `id`, to change.
    pub(crate) fn get_mut(&mut self, id: &str) -> Result<&mut Session> {
        self.map
            .get_mut(id)
            .ok_or_else(|| Error::UnknownSession(ids::shown(id)))
    }

    /// Ends session `id`: takes it out of the table.
    pub(crate) fn end(&mut self, id: &str) -> Option<Session> {
        let s = self.map.remove(id)?;
        tracing::debug!(session = id, uid = s.uid, pid = s.pid, name = %s.name, age_ms = s.started.elapsed().as_millis() as u64, "session ended");
        Some(s)
    }

    /// Drops `resource` from every session that references it (it was freed by the admin
    /// group).
    pub(crate) fn forget(&mut self, holders: impl IntoIterator<Item = String>, resource: &str) {
        for sid in holders {
            if let Some(s) = self.map.get_mut(&sid) {
                s.resources.remove(resource);
            }
        }
    }

    /// Whether any live session signals semaphore `id`.
    pub(crate) fn signaled(&self, id: &str) -> bool {
        self.map.values().any(|s| s.signals.contains(id))
    }

    /// Whether a live session signals semaphore `id` through the semaphore alone (the bridge
    /// must run for a semaphore with a word).
    pub(crate) fn signaled_without_word(&self, id: &str) -> bool {
        self.map
            .values()
            .any(|s| s.signals.contains(id) && !s.word_signals.contains(id))
    }

    /// For each semaphore that a live session signals, one such session.
    pub(crate) fn signalers(&self) -> HashMap<&str, &str> {
        self.map
            .iter()
            .flat_map(|(sid, s)| s.signals.iter().map(move |r| (r.as_str(), sid.as_str())))
            .collect()
    }

    /// The sessions `caller` may see, oldest first: its uid's, or everybody's for the admin
    /// group. `live` tells which resources still exist.
    pub(crate) fn views(&self, caller: &Caller, live: impl Fn(&str) -> bool) -> Vec<SessionView> {
        let now = Instant::now();
        let mut out: Vec<(Instant, SessionView)> = self
            .map
            .iter()
            .filter(|(_, s)| caller.admin || s.uid == caller.uid())
            .map(|(id, s)| (s.started, s.view(id, now, &live)))
            .collect();
        out.sort_by_key(|(started, _)| *started);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// How many are live.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Ends them all (shutdown).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_per_uid_and_bounded() {
        let mut s = Sessions::default();
        let a = s.open(1000, 1, "a", 2).unwrap();
        let b = s.open(1000, 2, "b", 2).unwrap();
        assert!(matches!(s.open(1000, 3, "c", 2), Err(Error::Quota { .. })));
        s.open(2000, 4, "d", 2).unwrap();
        assert!(s.check(&a, 1000).is_ok());
        assert!(matches!(s.check(&a, 2000), Err(Error::UnknownSession(_))));
        s.get_mut(&b).unwrap().signals.insert("sem-x".into());
        assert_eq!(s.signalers().get("sem-x"), Some(&b.as_str()));
        assert!(s.end(&b).is_some());
        assert!(!s.signaled("sem-x"));
        let views = s.views(&Caller::of_uid(1000), |_| true);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].client_name, "a");
        assert_eq!(s.len(), 2);
    }
}
