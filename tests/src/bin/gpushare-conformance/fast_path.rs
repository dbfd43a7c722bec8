//! Scenario `fast-path`: the CUDA fast path's surface (GetInfo's `fast_path`, a semaphore made
//! with a memop word, signal paths, an export that asks for the word).

use gpushare_client::{v1, CreateOptions, OpenTarget};
use tonic::Code;

use crate::{expect_code, fail, Context, Env, Outcome, Verdict};

pub(crate) async fn fast_path(env: &Env) -> Outcome {
    let client = env.session().await?;
    let info = client.info().await.ctx("GetInfo")?;
    let mut offered0 = None;
    for d in &info.devices {
        let Some(fast) = &d.fast_path else {
            fail!("GetInfo: device {} has no fast_path", d.index);
        };
        if !fast.offered && fast.unavailable.is_empty() {
            fail!(
                "GetInfo: device {}'s fast path is not offered and says not why",
                d.index
            );
        }
        offered0.get_or_insert(fast.offered);
    }
    let offered0 = offered0.unwrap_or(false);

    let opts = CreateOptions {
        word: true,
        signal_path: v1::SignalPath::Word,
        ..CreateOptions::default()
    };
    let sem = client
        .create_semaphore(2, &opts)
        .await
        .ctx("CreateSemaphore with a word")?;
    let r = client.describe(sem.id()).await.ctx("DescribeResource")?;
    let d = match &r.details {
        Some(v1::resource::Details::Semaphore(s))
            if r.kind == v1::ResourceKind::Semaphore as i32 =>
        {
            s.clone()
        }
        other => fail!(
            "DescribeResource: expected a semaphore, got kind {} {other:?}",
            r.kind
        ),
    };
    if d.value != 2 {
        fail!("DescribeResource: expected value 2, got {}", d.value);
    }
    // A word with no reason given, or no word and a reason: anything else is wrong.
    if d.word != d.word_unavailable.is_empty() {
        fail!(
            "DescribeResource: word {} with word_unavailable {:?}",
            d.word,
            d.word_unavailable
        );
    }
    if d.word != (offered0 && d.exportable) {
        fail!(
            "DescribeResource: word {}, but device 0 offers the fast path: {offered0}, exportable: {}",
            d.word,
            d.exportable
        );
    }

    let bad = v1::CreateSemaphoreRequest {
        signal_path: 7,
        ..Default::default()
    };
    let refused = client
        .grpc()
        .create_semaphore(client.request(bad))
        .await
        .map_err(gpushare_client::Error::from);
    expect_code(
        "CreateSemaphore with signal_path 7",
        refused,
        &[Code::InvalidArgument],
    )?;

    let exported = client.export_with_word(sem.id()).await;
    if !d.exportable {
        expect_code(
            "fd.sock export with word of an unexportable semaphore",
            exported,
            &[Code::FailedPrecondition],
        )?;
    } else {
        let e = exported.ctx("fd.sock export with word")?;
        let Some(v1::exported_fd::Details::Semaphore(s)) = &e.info.details else {
            fail!("fd.sock export with word: not a semaphore: {:?}", e.info);
        };
        if s.word_exists != d.word || s.value != 2 {
            fail!(
                "fd.sock export with word: word_exists {} value {}, expected {} and 2",
                s.word_exists,
                s.value,
                d.word
            );
        }
        match (&e.word, &s.word, s.word_exists) {
            (Some(_), Some(b), true) if b.allocation_size >= 8 => {}
            (None, None, false) => {}
            (fd, b, has) => fail!(
                "fd.sock export with word: word_exists {has}, word descriptor {}, word metadata {b:?}",
                fd.is_some()
            ),
        }
        // Both descriptors close here.
    }

    let other = env.session().await?;
    other
        .open_with(
            OpenTarget::Id(sem.id().to_owned()),
            true,
            v1::SignalPath::Semaphore,
        )
        .await
        .ctx("Open with signal and SIGNAL_PATH_SEMAPHORE")?;
    drop(other);
    client.release(sem.id()).await.ctx("ReleaseResource")?;
    Ok(Verdict::Pass)
}
