//! Export tickets: one-time, short-lived, bound to the uid that asked for them.
//!
//! An `Export` call issues a ticket; redeeming it on fd.sock consumes it. A ticket presented by
//! another uid reads as unknown and stays valid for its owner (so nobody can burn someone
//! else's ticket). Expired tickets are swept whenever one is issued.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ids;

#[derive(Debug)]
struct Ticket {
    resource_id: String,
    uid: u32,
    /// The session of the Export call that issued it: the ticket is revoked when it ends.
    session: Option<String>,
    expires: Instant,
}

/// The outstanding tickets.
#[derive(Debug)]
pub(crate) struct Tickets {
    ttl: Duration,
    map: Mutex<HashMap<[u8; ids::ID_BYTES], Ticket>>,
}

impl Tickets {
    /// Tickets that live for `ttl`.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Issues a ticket for `resource_id`, redeemable by `uid`, unless `uid` already holds
    /// `per_uid` unexpired tickets (`quotas.tickets_per_uid`), or `session` holds `per_session`
    /// (`quotas.tickets_per_session`). A ticket issued in a session is revoked when that session
    /// ends ([`Tickets::revoke_session`]).
    pub(crate) fn issue(
        &self,
        resource_id: &str,
        uid: u32,
        session: Option<&str>,
        per_uid: u64,
        per_session: u64,
    ) -> Result<[u8; ids::ID_BYTES]> {
        let ticket = ids::random16();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, t| t.expires > now);
        if map.values().filter(|t| t.uid == uid).count() as u64 >= per_uid {
            return Err(crate::quota::refused(
                "outstanding export tickets per uid",
                per_uid,
                format!(", uid {uid}"),
            ));
        }
        if let Some(sid) = session {
            if map
                .values()
                .filter(|t| t.session.as_deref() == Some(sid))
                .count() as u64
                >= per_session
            {
                return Err(crate::quota::refused(
                    "outstanding export tickets per session",
                    per_session,
                    format!(", uid {uid}"),
                ));
            }
        }
        map.insert(
            ticket,
            Ticket {
                resource_id: resource_id.to_owned(),
                uid,
                session: session.map(str::to_owned),
                expires: now + self.ttl,
            },
        );
        Ok(ticket)
    }

    /// Consumes `ticket` for `uid` and returns the resource id it names.
    pub(crate) fn redeem(&self, ticket: &[u8], uid: u32) -> Result<String> {
        let key: [u8; ids::ID_BYTES] = ticket
            .try_into()
            .map_err(|_| Error::BadFdRequest("a ticket is 16 bytes"))?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(t) if t.uid == uid => {}
            _ => return Err(Error::UnknownTicket),
        }
        let t = map.remove(&key).ok_or(Error::UnknownTicket)?;
        if t.expires <= Instant::now() {
            return Err(Error::TicketExpired);
        }
        Ok(t.resource_id)
    }

    /// Revokes the unredeemed tickets issued in `session` (it ended: its process is gone).
    /// Returns how many.
    pub(crate) fn revoke_session(&self, session: &str) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, t| t.session.as_deref() != Some(session));
        before - map.len()
    }

    /// Outstanding tickets (expired ones included until the next sweep).
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_and_uid_bound() {
        let t = Tickets::new(Duration::from_secs(10));
        let ticket = t.issue("buf-x", 1000, None, 8, 8).unwrap();
        assert!(matches!(t.redeem(&ticket, 1001), Err(Error::UnknownTicket)));
        assert_eq!(t.redeem(&ticket, 1000).unwrap(), "buf-x");
        assert!(matches!(t.redeem(&ticket, 1000), Err(Error::UnknownTicket)));
        assert!(matches!(
            t.redeem(&[0; 3], 1000),
            Err(Error::BadFdRequest(_))
        ));
        assert!(matches!(
            t.redeem(&[0; 16], 1000),
            Err(Error::UnknownTicket)
        ));
    }

    #[test]
    fn expired_tickets_are_refused_and_swept() {
        let t = Tickets::new(Duration::from_millis(1));
        let ticket = t.issue("buf-x", 0, None, 8, 8).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(t.redeem(&ticket, 0), Err(Error::TicketExpired)));
        let _old = t.issue("buf-y", 0, None, 8, 8).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let _new = t.issue("buf-z", 0, None, 8, 8).unwrap();
        assert_eq!(t.len(), 1, "the expired ticket was swept");
    }

    #[test]
    fn tickets_per_uid_are_capped_until_redeemed() {
        let t = Tickets::new(Duration::from_secs(10));
        let a = t.issue("buf-x", 7, None, 2, 2).unwrap();
        let _b = t.issue("buf-x", 7, None, 2, 2).unwrap();
        assert!(matches!(
            t.issue("buf-x", 7, None, 2, 2),
            Err(Error::Quota { limit: 2, .. })
        ));
        // Another uid has its own quota; a redeemed ticket frees a slot.
        t.issue("buf-y", 8, None, 2, 2).unwrap();
        t.redeem(&a, 7).unwrap();
        t.issue("buf-x", 7, None, 2, 2).unwrap();
    }

    #[test]
    fn tickets_per_session_are_capped_within_the_uids() {
        let t = Tickets::new(Duration::from_secs(10));
        let a = t.issue("buf-x", 7, Some("ses-a"), 3, 1).unwrap();
        let e = t.issue("buf-x", 7, Some("ses-a"), 3, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("outstanding export tickets per session (limit 1"),
            "{e}"
        );
        // Another session of the uid, and calls without a session, still get theirs.
        t.issue("buf-x", 7, Some("ses-b"), 3, 1).unwrap();
        t.issue("buf-x", 7, None, 3, 1).unwrap();
        t.redeem(&a, 7).unwrap();
        t.issue("buf-x", 7, Some("ses-a"), 3, 1).unwrap();
    }

    #[test]
    fn a_sessions_tickets_go_with_it() {
        let t = Tickets::new(Duration::from_secs(10));
        let mine = t.issue("buf-x", 7, Some("ses-a"), 8, 8).unwrap();
        let other = t.issue("buf-x", 7, Some("ses-b"), 8, 8).unwrap();
        let sessionless = t.issue("buf-x", 7, None, 8, 8).unwrap();
        assert_eq!(t.revoke_session("ses-a"), 1);
        assert!(matches!(t.redeem(&mine, 7), Err(Error::UnknownTicket)));
        assert_eq!(t.redeem(&other, 7).unwrap(), "buf-x");
        assert_eq!(t.redeem(&sessionless, 7).unwrap(), "buf-x");
    }
}
