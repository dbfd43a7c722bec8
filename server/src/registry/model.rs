//! A state-machine test of the registry against a reference model (proptest): random sequences
//! of session opens and ends, creations (session-held, pinned, named), grants, Opens by id,
//! name and token, export tickets issued and redeemed, and releases, by several uids. After
//! every step the registry and the model agree on what exists, each resource's references, what
//! each uid owns, and what each step freed; references never go negative, nothing is freed
//! while referenced, and after everything ends nothing is left.
//!
//! Resources are host buffers (memfds), so that the test needs no GPU.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::Registry;
use crate::access::{Caller, Grantee, OpenTarget};
use crate::config::Quotas;
use crate::host_buffer::HostBuffer;
use crate::resource::{Object, Resource};
use crate::tickets::Tickets;

const UIDS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    OpenSession {
        uid: u32,
    },
    EndSession {
        s: usize,
    },
    Create {
        s: usize,
        pin: bool,
        named: bool,
        uid: u32,
        sessionless: bool,
    },
    Grant {
        r: usize,
        to: u32,
    },
    OpenById {
        s: usize,
        r: usize,
    },
    OpenByName {
        s: usize,
        r: usize,
    },
    MintAndOpenToken {
        s: usize,
        r: usize,
    },
    ExportRedeem {
        r: usize,
        by: u32,
    },
    Release {
        s: usize,
        r: usize,
        by_session: bool,
        uid: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ix = 0usize..64;
    prop_oneof![
        3 => (0..UIDS).prop_map(|uid| Op::OpenSession { uid }),
        1 => ix.clone().prop_map(|s| Op::EndSession { s }),
        6 => (ix.clone(), any::<bool>(), any::<bool>(), 0..UIDS, any::<bool>()).prop_map(
            |(s, pin, named, uid, sessionless)| Op::Create { s, pin, named, uid, sessionless }
        ),
        1 => (ix.clone(), 0..UIDS).prop_map(|(r, to)| Op::Grant { r, to }),
        2 => (ix.clone(), ix.clone()).prop_map(|(s, r)| Op::OpenById { s, r }),
        1 => (ix.clone(), ix.clone()).prop_map(|(s, r)| Op::OpenByName { s, r }),
        1 => (ix.clone(), ix.clone()).prop_map(|(s, r)| Op::MintAndOpenToken { s, r }),
        1 => (ix.clone(), 0..UIDS).prop_map(|(r, by)| Op::ExportRedeem { r, by }),
        3 => (ix.clone(), ix, any::<bool>(), 0..UIDS)
            .prop_map(|(s, r, by_session, uid)| Op::Release { s, r, by_session, uid }),
    ]
}

#[derive(Debug, Default)]
struct ModelRes {
    owner: u32,
    name: Option<String>,
    sessions: BTreeSet<String>,
    pinned: bool,
    granted: BTreeSet<u32>,
}

#[derive(Debug, Default)]
struct Model {
    sessions: BTreeMap<String, u32>,
    res: BTreeMap<String, ModelRes>,
    /// Every id ever created, in order (ops pick from it, freed ones included).
    ever: Vec<String>,
    names: u64,
}

impl Model {
    fn reaches(&self, r: &ModelRes, uid: u32, session: Option<&str>) -> bool {
        r.owner == uid
            || r.granted.contains(&uid)
            || session.is_some_and(|s| r.sessions.contains(s))
    }
}

fn caller(uid: u32, session: Option<&str>) -> Caller {
    let mut c = Caller::of_uid(uid);
    c.session = session.map(str::to_owned);
    c
}

fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()].clone())
}

fn check(reg: &Registry, m: &Model) {
    let (resources, sessions) = reg.counts();
    assert_eq!(resources, m.res.len(), "live resources");
    assert_eq!(sessions, m.sessions.len(), "live sessions");
    for (id, r) in &m.res {
        let snap = reg
            .get_unchecked(id)
            .expect("a live resource in the model is in the registry");
        let refs = r.sessions.len() as u32 + u32::from(r.pinned);
        assert!(refs > 0, "the model keeps a resource without references");
        assert_eq!(snap.references, refs, "references of {id}");
        assert_eq!(snap.pinned, r.pinned);
        assert_eq!(snap.resource.owner_uid, r.owner);
    }
    for id in &m.ever {
        if !m.res.contains_key(id) {
            assert!(
                reg.get_unchecked(id).is_err(),
                "{id} freed in the model, alive in the registry"
            );
        }
    }
    let usage = reg.usage_by_uid();
    for uid in 0..UIDS {
        let n = m.res.values().filter(|r| r.owner == uid).count() as u64;
        let got = usage.get(&uid).map(|u| u.host_buffers).unwrap_or(0);
        assert_eq!(got, n, "host buffers of uid {uid}");
        assert_eq!(
            usage.get(&uid).map(|u| u.host_buffer_bytes).unwrap_or(0),
            n * 4096
        );
    }
}

fn run(ops: Vec<Op>) {
    let reg = Registry::new(Quotas::default());
    let tickets = Tickets::new(Duration::from_secs(60));
    let mut m = Model::default();
    for op in ops {
        let sessions: Vec<String> = m.sessions.keys().cloned().collect();
        match op {
            Op::OpenSession { uid } => {
                let s = reg.open_session(uid, 1, "model").unwrap();
                m.sessions.insert(s, uid);
            }
            Op::EndSession { s } => {
                let Some(s) = pick(&sessions, s) else {
                    continue;
                };
                let ended = reg.end_session(&s);
                m.sessions.remove(&s);
                let mut expect = BTreeSet::new();
                for (id, r) in m.res.iter_mut() {
                    r.sessions.remove(&s);
                    if r.sessions.is_empty() && !r.pinned {
                        expect.insert(id.clone());
                    }
                }
                m.res.retain(|id, _| !expect.contains(id));
                let freed: BTreeSet<String> = ended.freed.iter().map(|r| r.id.clone()).collect();
                assert_eq!(freed, expect, "what ending {s} freed");
            }
            Op::Create {
                s,
                pin,
                named,
                uid,
                sessionless,
            } => {
                let session = if sessionless {
                    None
                } else {
                    pick(&sessions, s)
                };
                let owner = session.as_ref().map_or(uid, |s| m.sessions[s]);
                if session.is_none() && !pin {
                    continue; // the service refuses this before the registry sees it
                }
                m.names += 1;
                let name = named.then(|| format!("n{}", m.names));
                let id = format!("host-{:032x}", m.ever.len());
                let object =
                    Object::HostBuffer(std::sync::Arc::new(HostBuffer::create(4096).unwrap()));
                let res = Resource::new(
                    id.clone(),
                    name.clone().unwrap_or_default(),
                    0,
                    owner,
                    object,
                );
                reg.insert(res, session.as_deref(), pin).unwrap();
                m.ever.push(id.clone());
                m.res.insert(
                    id,
                    ModelRes {
                        owner,
                        name,
                        sessions: session.into_iter().collect(),
                        pinned: pin,
                        granted: BTreeSet::new(),
                    },
                );
            }
            Op::Grant { r, to } => {
                let Some(id) = pick(&m.ever, r) else { continue };
                let Some(owner) = m.res.get(&id).map(|r| r.owner) else {
                    assert!(reg
                        .set_grant(&id, &caller(to, None), Grantee::Uid(to), true)
                        .is_err());
                    continue;
                };
                reg.set_grant(&id, &caller(owner, None), Grantee::Uid(to), true)
                    .unwrap();
                m.res.get_mut(&id).unwrap().granted.insert(to);
            }
            Op::OpenById { s, r } | Op::OpenByName { s, r } | Op::MintAndOpenToken { s, r } => {
                let (Some(sid), Some(id)) = (pick(&sessions, s), pick(&m.ever, r)) else {
                    continue;
                };
                let uid = m.sessions[&sid];
                let c = caller(uid, Some(&sid));
                let (target, allowed) = match (&op, m.res.get(&id)) {
                    (_, None) => (OpenTarget::Id(id.clone()), false),
                    (Op::OpenById { .. }, Some(mr)) => {
                        (OpenTarget::Id(id.clone()), m.reaches(mr, uid, Some(&sid)))
                    }
                    (Op::OpenByName { .. }, Some(mr)) => match &mr.name {
                        Some(n) => (
                            OpenTarget::Named {
                                owner_uid: mr.owner,
                                name: n.clone(),
                            },
                            m.reaches(mr, uid, Some(&sid)),
                        ),
                        None => continue,
                    },
                    (_, Some(mr)) => {
                        let token = reg.mint_token(&id, &caller(mr.owner, None)).unwrap();
                        (OpenTarget::Token(token.to_vec()), true)
                    }
                };
                let got = reg.open(&target, false, &c);
                assert_eq!(got.is_ok(), allowed, "{op:?}: {got:?}");
                if allowed {
                    m.res.get_mut(&id).unwrap().sessions.insert(sid);
                }
            }
            Op::ExportRedeem { r, by } => {
                let Some(id) = pick(&m.ever, r) else { continue };
                let reachable = m.res.get(&id).is_some_and(|mr| m.reaches(mr, by, None));
                assert_eq!(reg.get(&id, &caller(by, None)).is_ok(), reachable);
                if !reachable {
                    continue;
                }
                let t = tickets.issue(&id, by, None, 1024, 1024).unwrap();
                // Another uid cannot redeem it; the uid it was issued to can, once.
                assert!(tickets.redeem(&t, by + 100).is_err());
                assert_eq!(tickets.redeem(&t, by).unwrap(), id);
                assert!(tickets.redeem(&t, by).is_err());
            }
            Op::Release {
                s,
                r,
                by_session,
                uid,
            } => {
                let Some(id) = pick(&m.ever, r) else { continue };
                let session = if by_session { pick(&sessions, s) } else { None };
                let uid = session.as_ref().map_or(uid, |s| m.sessions[s]);
                let c = caller(uid, session.as_deref());
                let got = reg.release(&id, &c);
                let Some(mr) = m.res.get_mut(&id) else {
                    assert!(got.is_err(), "released a freed resource");
                    continue;
                };
                let reach = mr.owner == uid
                    || mr.granted.contains(&uid)
                    || session.as_ref().is_some_and(|s| mr.sessions.contains(s));
                let held = session
                    .as_ref()
                    .filter(|s| mr.sessions.contains(*s))
                    .cloned();
                let expect_ok = reach && (held.is_some() || (mr.pinned && mr.owner == uid));
                assert_eq!(
                    got.is_ok(),
                    expect_ok,
                    "release {id} by uid {uid} {session:?}: {got:?}"
                );
                if !expect_ok {
                    continue;
                }
                match held {
                    Some(s) => {
                        mr.sessions.remove(&s);
                    }
                    None => mr.pinned = false,
                }
                let gone = mr.sessions.is_empty() && !mr.pinned;
                assert_eq!(
                    !got.unwrap().is_empty(),
                    gone,
                    "whether releasing {id} freed it"
                );
                if gone {
                    m.res.remove(&id);
                }
            }
        }
        check(&reg, &m);
    }
    // Everything ends: every session, then every pin.
    for s in m.sessions.keys().cloned().collect::<Vec<_>>() {
        reg.end_session(&s);
    }
    for (id, r) in &m.res {
        if r.pinned {
            assert!(!reg.release(id, &caller(r.owner, None)).unwrap().is_empty());
        }
    }
    assert_eq!(reg.counts(), (0, 0), "something was left");

    assert!(
        reg.usage_by_uid().is_empty(),
        "usage left after everything was freed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]
    #[test]
    fn registry_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        run(ops);
    }
}
