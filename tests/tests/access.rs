//! Access control: deny by default, grants to a uid or a gid, capability tokens, names unique per
//! owner, owner-only operations, and the admin group. The cross-uid cases need root (CI runs as
//! root): the other process is `gpushare-peer` started as uid/gid 65534 (or 65533 for the admin
//! group), with supplementary groups where a case needs them; without root they print `SKIP:`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use gpushare_client::{Client, CreateOptions, Grantee, OpenTarget, Sync};
use gpushare_tests::{bin, run, TestDaemon};
use tonic::Code;

const OTHER: u32 = 65534;
const ADMIN: u32 = 65533;
/// A group that OTHER is a supplementary member of, in the cases that say so.
const TEAM: u32 = 65532;

fn named(name: &str) -> CreateOptions {
    CreateOptions {
        name: name.into(),
        ..Default::default()
    }
}

/// Runs the peer as `uid`/`gid`, in no supplementary group: `(success, stdout, stderr)`.
fn peer_as(d: &TestDaemon, uid: u32, gid: u32, args: &[&str]) -> (bool, String, String) {
    peer_in_groups(d, uid, gid, &[], args)
}

/// Runs the peer as `uid` with primary gid `gid` and the supplementary `groups`.
fn peer_in_groups(
    d: &TestDaemon,
    uid: u32,
    gid: u32,
    groups: &[u32],
    args: &[&str],
) -> (bool, String, String) {
    // The peer binary may sit in a directory the other uid cannot enter: copy it out.
    let exe = gpushare_tests::bin_copy_in("gpushare-peer", d.scratch());
    let mut all = vec![d.runtime_dir().to_str().unwrap()];
    all.extend_from_slice(args);
    let mut cmd = Command::new(&exe);
    cmd.args(&all);
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the closure runs in the forked child before exec. It makes only the setgroups,
    // setgid and setuid system calls (async-signal-safe), on memory moved into it, and allocates
    // nothing. Std's `uid`/`gid` cannot be used: they run before the closure, and setgroups
    // needs the root they give up.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (status, out, err) = run(&mut cmd, Duration::from_secs(60));
    (status.success(), out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_tokens_and_open_within_one_uid() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "owner")
        .await
        .unwrap();
    let buf = c.create_buffer(4096, &named("frames")).await.unwrap();
    // Names are unique per owner among live resources.
    let e = c.create_semaphore(0, &named("frames")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
    let uid = c.describe(buf.id()).await.unwrap().owner_uid;

    // Another session of the same uid opens it by name, by id and by token; each Open adds a
    // reference of that session, once.
    let other = Client::connect_with_session(d.runtime_dir(), "opener")
        .await
        .unwrap();
    let by_name = other
        .open(
            OpenTarget::Named {
                owner_uid: uid,
                name: "frames".into(),
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(by_name.id, buf.id());
    assert_eq!(by_name.references, 2);
    let again = other
        .open(OpenTarget::Id(buf.id().into()), false)
        .await
        .unwrap();
    assert_eq!(again.references, 2, "Open is idempotent per session");
    let token = c.create_token(buf.id()).await.unwrap();
    assert_eq!(token.len(), 16);
    let third = Client::connect_with_session(d.runtime_dir(), "token holder")
        .await
        .unwrap();
    assert_eq!(
        third
            .open(OpenTarget::Token(token.clone()), false)
            .await
            .unwrap()
            .references,
        3
    );
    // The owner's session goes; the openers keep the buffer alive.
    assert!(!buf.release().await.unwrap());
    drop(third);
    let r = other.describe(buf.id()).await.unwrap();
    assert!(r.references >= 1);
    // Revoked tokens open nothing; malformed requests are INVALID_ARGUMENT.
    c.revoke_tokens(buf.id()).await.unwrap();
    let fresh = Client::connect_with_session(d.runtime_dir(), "late")
        .await
        .unwrap();
    let e = fresh
        .open(OpenTarget::Token(token), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = fresh
        .open(OpenTarget::Token(vec![1, 2, 3]), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let e = fresh
        .open(
            OpenTarget::Named {
                owner_uid: uid,
                name: "nope".into(),
            },
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // Open needs a session.
    let sessionless = Client::connect(d.runtime_dir()).await.unwrap();
    let e = sessionless
        .open(OpenTarget::Id(buf.id().into()), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    // When the last opener's session ends, the buffer is freed, and its name is free again.
    drop(other);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.create_buffer(4096, &named("frames")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "the name stayed taken"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A semaphore opened to signal by a second session is abandoned only when the last signaler
/// session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_is_abandoned_when_its_last_signaler_ends() {
    let d = gpushare_tests::daemon_or_skip!();
    let keeper = Client::connect(d.runtime_dir()).await.unwrap();
    let creator = Client::connect_with_session(d.runtime_dir(), "creator")
        .await
        .unwrap();
    let pinned = CreateOptions {
        pin: true,
        ..Default::default()
    };
    // Only the id is kept: a handle would keep the creator's client, and its session, alive.
    let sem = creator
        .create_semaphore(0, &pinned)
        .await
        .unwrap()
        .id()
        .to_owned();
    let helper = Client::connect_with_session(d.runtime_dir(), "second signaler")
        .await
        .unwrap();
    helper
        .open(OpenTarget::Id(sem.clone()), true)
        .await
        .unwrap();
    drop(creator);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still a live signaler: not abandoned, signals work.
    let s = keeper.semaphore(&sem);
    assert_eq!(s.signal(1).await.unwrap(), 1);
    drop(helper);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.signal(2).await {
            Err(e) if e.code() == Some(Code::Aborted) => break,
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never abandoned: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_uids_reach_only_what_they_are_granted() {
    if !rustix::process::getuid().is_root() {
        println!("SKIP: the other-uid cases need root to run a process as another uid");
        return;
    }
    let d = gpushare_tests::daemon_or_skip!(&format!("socket_mode = 0o666\nadmin_gid = {ADMIN}\n"));
    let c = Client::connect_with_session(d.runtime_dir(), "owner")
        .await
        .unwrap();
    let buf = c.create_buffer(4096, &named("shared")).await.unwrap();
    buf.write(0, b"grant me", &Sync::none()).await.unwrap();
    let uid = c.describe(buf.id()).await.unwrap().owner_uid;
    let id_target = format!("id:{}", buf.id());
    let read = |target: &str| peer_as(&d, OTHER, OTHER, &["open-read", target, "0", "8"]);
    let want = hex::encode(b"grant me");

    // Deny by default: NOT_FOUND, the same as an id that does not exist.
    let (ok, _, err) = read(&id_target);
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // A uid grant opens it; revoking closes it again.
    let r = c.grant(buf.id(), Grantee::Uid(OTHER)).await.unwrap();
    assert_eq!(r.granted_uids, vec![OTHER]);
    let (ok, out, err) = read(&id_target);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    // By name, too.
    let (ok, out, err) = read(&format!("name:{uid}:shared"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    // A grantee may not do what only the owner may.
    let (ok, _, err) = peer_as(&d, OTHER, OTHER, &["try-grant", buf.id(), "4242"]);
    assert!(!ok && err.contains("error Some(PermissionDenied)"), "{err}");
    // Dropping the owner's pin is the owner's too.
    let pinned = c
        .create_buffer(
            4096,
            &CreateOptions {
                pin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.grant(pinned.id(), Grantee::Uid(OTHER)).await.unwrap();
    let (ok, _, err) = peer_as(&d, OTHER, OTHER, &["admin-release", pinned.id()]);
    assert!(!ok && err.contains("error Some(PermissionDenied)"), "{err}");
    assert!(c.describe(pinned.id()).await.unwrap().pinned);
    // The owner's session reference, then its pin.
    assert!(!pinned.release().await.unwrap());
    assert!(pinned.release().await.unwrap());
    c.revoke(buf.id(), Grantee::Uid(OTHER)).await.unwrap();
    let (ok, _, err) = read(&id_target);
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // A gid grant: the peer's primary gid.
    c.grant(buf.id(), Grantee::Gid(OTHER)).await.unwrap();
    let (ok, out, err) = read(&id_target);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    c.revoke(buf.id(), Grantee::Gid(OTHER)).await.unwrap();
    // A gid grant reaches the group's supplementary members too (SO_PEERGROUPS), and only them.
    let read_in_team = || {
        peer_in_groups(
            &d,
            OTHER,
            OTHER,
            &[TEAM],
            &["open-read", &id_target, "0", "8"],
        )
    };
    c.grant(buf.id(), Grantee::Gid(TEAM)).await.unwrap();
    let (ok, out, err) = read_in_team();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    let (ok, _, err) = read(&id_target);
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    c.revoke(buf.id(), Grantee::Gid(TEAM)).await.unwrap();
    let (ok, _, err) = read_in_team();
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // A capability token works for whoever holds it, until revoked.
    let token = hex::encode(c.create_token(buf.id()).await.unwrap());
    let (ok, out, err) = read(&format!("token:{token}"));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), want);
    c.revoke_tokens(buf.id()).await.unwrap();
    let (ok, _, err) = read(&format!("token:{token}"));
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // Without a grant nothing of it shows: by name either.
    let (ok, _, err) = read(&format!("name:{uid}:shared"));
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");

    // The admin group sees and releases, but does not use: reading another uid's buffer is
    // NOT_FOUND for it too.
    let (ok, _, err) = peer_as(&d, ADMIN, ADMIN, &["open-read", &id_target, "0", "8"]);
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // The admin group lists everything and frees what it releases.
    let (ok, out, err) = peer_as(&d, ADMIN, ADMIN, &["admin-release", buf.id()]);
    assert!(ok, "{err}");
    assert!(out.contains("listed 1"), "{out}");
    assert!(out.contains("freed true"), "{out}");
    let e = c.describe(buf.id()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // Anybody else releasing someone else's resource gets NOT_FOUND.
    let other_buf = c
        .create_buffer(4096, &CreateOptions::default())
        .await
        .unwrap();
    let (ok, _, err) = peer_as(&d, OTHER, OTHER, &["admin-release", other_buf.id()]);
    assert!(!ok && err.contains("error Some(NotFound)"), "{err}");
    // A supplementary member of the admin group is an admin too.
    let (ok, out, err) = peer_in_groups(
        &d,
        OTHER,
        OTHER,
        &[ADMIN],
        &["admin-release", other_buf.id()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("freed true"), "{out}");
}

/// `gpusharectl grant`, `revoke` and `token` against the real daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpusharectl_grants_revokes_and_mints_tokens() {
    let d = gpushare_tests::daemon_or_skip!();
    let c = Client::connect_with_session(d.runtime_dir(), "owner")
        .await
        .unwrap();
    let buf = c
        .create_buffer(4096, &CreateOptions::default())
        .await
        .unwrap();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--runtime-dir", d.runtime_dir().to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        run(
            Command::new(bin("gpusharectl")).args(&all),
            Duration::from_secs(30),
        )
    };
    let (status, out, err) = ctl(&["grant", buf.id(), "--uid", "4242"]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["granted_uids"], serde_json::json!([4242]), "{out}");
    let (status, out, err) = ctl(&["revoke", buf.id(), "--uid", "4242"]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["granted_uids"], serde_json::json!([]), "{out}");
    let (status, out, err) = ctl(&["token", buf.id()]);
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = hex::decode(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(token.len(), 16);
    let opener = Client::connect_with_session(d.runtime_dir(), "opener")
        .await
        .unwrap();
    opener
        .open(OpenTarget::Token(token.clone()), false)
        .await
        .unwrap();
    let (status, _, err) = ctl(&["token", buf.id(), "--revoke"]);
    assert!(status.success(), "{err}");
    let e = opener
        .open(OpenTarget::Token(token), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    // Neither --uid nor --gid: a usage error.
    let (status, _, _) = ctl(&["grant", buf.id()]);
    assert!(!status.success());
}

/// A user the sockets do not admit (not the owner, not in the group; `socket_mode` 0660 by
/// default) is told so, with the group to ask for, and gets exit code 6 (PERMISSION_DENIED), not
/// "daemon not reachable" (8). Needs root to run the CLI as another uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_sockets_refuse_is_told_which_group_to_join() {
    if !rustix::process::getuid().is_root() {
        println!("SKIP: running the CLI as another uid needs root");
        return;
    }
    let d = gpushare_tests::daemon_or_skip!();
    let exe = gpushare_tests::bin_copy_in("gpusharectl", d.scratch());
    for args in [
        &["info"][..],
        &["export", "buf-0123456789abcdef0123456789abcdef"][..],
    ] {
        let mut cmd = Command::new(&exe);
        cmd.arg("--runtime-dir").arg(d.runtime_dir()).args(args);
        // SAFETY: the closure runs in the forked child before exec and makes only the
        // setgroups, setgid and setuid system calls (async-signal-safe), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(OTHER) != 0
                    || libc::setuid(OTHER) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (status, _, err) = run(&mut cmd, Duration::from_secs(30));
        assert_eq!(status.code(), Some(6), "{args:?}: {err}");
        assert!(
            err.contains("permission denied on") && err.contains("ask to be added to group root"),
            "{args:?}: {err}"
        );
    }
}
