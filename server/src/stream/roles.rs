//! Role handles: which stream and session each producer or consumer handle belongs to, so that
//! a frame call naming a handle finds its stream in one lookup, and a session's end finds the
//! roles it held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::Stream;
use crate::error::{Error, Result};
use crate::ids;

#[derive(Debug)]
struct Role {
    stream: Arc<Stream>,
    session: String,
    uid: u32,
}

/// Every live role handle.
#[derive(Debug, Default)]
pub(crate) struct Roles {
    map: Mutex<HashMap<String, Role>>,
}

impl Roles {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Role>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `handle` as a role of `session` (of `uid`) in `stream`.
    pub(crate) fn insert(&self, handle: &str, stream: Arc<Stream>, session: &str, uid: u32) {
        self.lock().insert(
            handle.to_owned(),
            Role {
                stream,
                session: session.to_owned(),
                uid,
            },
        );
    }

    /// The stream of `handle`, for a caller of `uid`: NOT_FOUND for an unknown handle and for
    /// another uid's, alike.
    pub(crate) fn stream(&self, handle: &str, uid: u32) -> Result<Arc<Stream>> {
        match self.lock().get(handle) {
            Some(r) if r.uid == uid => Ok(r.stream.clone()),
            _ => Err(Error::NotFound {
                what: "stream handle",
                id: ids::shown(handle),
            }),
        }
    }

    /// Forgets `handle`.
    pub(crate) fn remove(&self, handle: &str) {
        self.lock().remove(handle);
    }

    /// Takes out the roles `session` held: (handle, stream).
    pub(crate) fn take_session(&self, session: &str) -> Vec<(String, Arc<Stream>)> {
        let mut map = self.lock();
        let handles: Vec<String> = map
            .iter()
            .filter(|(_, r)| r.session == session)
            .map(|(h, _)| h.clone())
            .collect();
        handles
            .into_iter()
            .filter_map(|h| map.remove(&h).map(|r| (h, r.stream)))
            .collect()
    }

    /// Forgets every role in stream `id` (it was freed).
    pub(crate) fn forget_stream(&self, id: &str) {
        self.lock().retain(|_, r| r.stream.id() != id);
    }
}
