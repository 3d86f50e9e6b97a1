//! PostgreSQL tests: the shared semantics (`store/conformance.rs`) and what only replicas on one
//! database have (concurrent writers, notifications, concurrent migrations, one audit chain).
//!
//! They need `HUB_TEST_POSTGRES_URL`, a superuser URL (`ci/postgres start DIR` prints one);
//! without it each test says it was skipped and passes. Each test creates its own database.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use super::super::conformance::{self, add_store, round};
use super::*;

/// How long a test's request waits for a pooled connection.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn superuser_url() -> Option<String> {
    std::env::var("HUB_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// `url` with its database replaced by `name`.
fn database_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// A new, empty database, or `None` (and a line saying the test was skipped) without a server.
async fn fresh_database(test: &str) -> Option<String> {
    let Some(url) = superuser_url() else {
        eprintln!("{test}: skipped (HUB_TEST_POSTGRES_URL is not set)");
        return None;
    };
    let name = format!("aisle_t_{}", ulid::Ulid::new().to_string().to_lowercase());
    execute(&url, &format!("CREATE DATABASE {name}")).await;
    Some(database_url(&url, &name))
}

async fn open(url: &str, replica: &str) -> PostgresStore {
    PostgresStore::connect(url, 4, POOL_WAIT, replica.into(), 1024)
        .await
        .unwrap()
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(url) = fresh_database(stringify!($name)).await else { return };
            let store = open(&url, "r1").await;
            conformance::$name(&store).await;
            store.stop();
        }
    )*};
}

macro_rules! audited_conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(url) = fresh_database(stringify!($name)).await else { return };
            let store = open(&url, "r1").await;
            conformance::$name(&store, &store).await;
            store.stop();
        }
    )*};
}

conformance!(
    enrollment_and_documents,
    accounts_sessions_and_stores,
    settings_documents,
    handoffs_are_redeemed_once,
    projection_is_idempotent_searchable_and_counted,
    documents_stored_without_a_projection_are_backfilled,
    region_settings_only_move_forward,
);
audited_conformance!(
    erasure_leaves_tombstones_that_block_writes,
    audited_writes_form_one_chain,
    region_settings_are_audited_when_stored,
);

#[test]
fn database_urls() {
    assert_eq!(
        database_url("postgres://aisle@127.0.0.1:5/postgres", "x"),
        "postgres://aisle@127.0.0.1:5/x"
    );
    assert_eq!(
        database_url("postgres://a@h:5/db?sslmode=disable", "x"),
        "postgres://a@h:5/x?sslmode=disable"
    );
    assert_eq!(database_url("postgres://a@h:5", "x"), "postgres://a@h:5/x");
}

/// Chinese text is indexed by pg_trgm (in a UTF-8 locale CJK characters are word characters),
/// so a Chinese term is found through the index, not only by a scan.
#[tokio::test]
async fn chinese_terms_are_found_through_the_trigram_index() {
    let Some(url) = fresh_database("chinese_terms_are_found_through_the_trigram_index").await
    else {
        return;
    };
    let store = open(&url, "r1").await;
    add_store(&store, "s1").await;
    let (first, _) = conformance::projected("s1");
    store.save_projection(first).await.unwrap();
    let (method, hits) = store
        .search_messages(SearchQuery {
            terms: vec!["这件外套".into()],
            store: Some("s1".into()),
            limit: 10,
            scan_messages: 0,
        })
        .await
        .unwrap();
    assert_eq!(method, SearchMethod::Index);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body, "我想退货，这件外套太小了");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let trigrams: i32 = client
        .query_one("SELECT cardinality(show_trgm('这件外套'))", &[])
        .await
        .unwrap()
        .get(0);
    assert!(trigrams >= 2, "CJK characters give trigrams ({trigrams})");
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT id FROM messages WHERE body ILIKE '%这件外套%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|line| line.contains("messages_body_trgm")),
        "{plan:#?}"
    );
    store.stop();
}

/// Two replicas write one conversation at once: the row lock serialises them, the
/// compare-and-swap turns the stale writes into appends, and no chunk is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_from_two_replicas_lose_no_chunk() {
    let Some(url) = fresh_database("concurrent_writes_from_two_replicas_lose_no_chunk").await
    else {
        return;
    };
    let r1 = Arc::new(open(&url, "r1").await);
    let r2 = Arc::new(open(&url, "r2").await);
    add_store(&*r1, "s1").await;
    let key = "conversation:busy";
    let first = r1
        .save_synced(round("s1", key, vec![255, 255]))
        .await
        .unwrap();
    assert!(first.created);
    const WRITES: u8 = 50;
    let writer = |store: Arc<PostgresStore>, task: u8, follow: bool| {
        tokio::spawn(async move {
            let mut expected = first.version;
            let mut stale = 0;
            for i in 0..WRITES {
                let saved = store
                    .save_synced(SyncWrite {
                        expected_version: Some(expected),
                        // The stale writer's compactions are never honoured (appended instead).
                        replace_chunks: !follow && i > 0,
                        ..round("s1", key, vec![task, i])
                    })
                    .await
                    .unwrap();
                stale += usize::from(saved.stale);
                // One writer follows the versions it wrote (stale only when the other wrote
                // in between), the other keeps the version of its first load.
                if follow {
                    expected = saved.version;
                }
            }
            stale
        })
    };
    let (a, b) = tokio::join!(
        writer(Arc::clone(&r1), 1, true),
        writer(Arc::clone(&r2), 2, false)
    );
    let stale = a.unwrap() + b.unwrap();
    assert!(stale >= 1, "{stale}");
    let stored = r2.load_document(key.into()).await.unwrap().unwrap();
    assert_eq!(stored.version, first.version + 2 * i64::from(WRITES));
    let chunks: std::collections::HashSet<&[u8]> = stored.bytes.chunks(2).collect();
    for task in [1u8, 2] {
        for i in 0..WRITES {
            assert!(chunks.contains(&[task, i][..]), "chunk {task}/{i} was lost");
        }
    }
    assert!(chunks.contains(&[255, 255][..]));
    assert_eq!(stored.bytes.len(), 2 * (2 * usize::from(WRITES) + 1));

    // Two replicas creating one document at once: one creates it, neither fails.
    let key = "conversation:new";
    let (a, b) = tokio::join!(
        r1.save_synced(round("s1", key, vec![1])),
        r2.save_synced(round("s1", key, vec![2]))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.created != b.created, "{a:?} {b:?}");
    let stored = r1.load_document(key.into()).await.unwrap().unwrap();
    assert_eq!((stored.bytes.len(), stored.version), (2, 2));
    r1.stop();
    r2.stop();
}

async fn next(rx: &mut broadcast::Receiver<ReplicaEvent>) -> ReplicaEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the channel is open")
}

#[tokio::test]
async fn replicas_hear_each_others_changes_and_not_their_own() {
    let Some(url) = fresh_database("replicas_hear_each_others_changes_and_not_their_own").await
    else {
        return;
    };
    let r1 = open(&url, "r1").await;
    let r2 = open(&url, "r2").await;
    let mut from_r2 = r1.events().unwrap();
    let mut from_r1 = r2.events().unwrap();
    for s in ["s1", "s2", "s3"] {
        add_store(&r1, s).await;
    }
    let key = "conversation:e".to_owned();
    // A store's own, unshared conversation concerns no other replica: no notification (the
    // first event heard below is the share).
    r1.save_synced(round("s1", &key, vec![1])).await.unwrap();
    // A round without a chunk changes no document.
    r1.save_synced(round("s1", &key, vec![])).await.unwrap();
    r1.register_handoff(NewHandoff {
        code_hash: vec![1; 32],
        doc_key: key.clone(),
        store_id: "s1".into(),
        expires_at_ms: 100,
    })
    .await
    .unwrap();
    r1.redeem_handoff(vec![1; 32], "s2".into(), 10)
        .await
        .unwrap();
    assert_eq!(
        next(&mut from_r1).await,
        ReplicaEvent::Shared {
            doc_key: key.clone(),
            store_id: "s2".into()
        }
    );
    // Shared now: the origin's rounds and the other store's are heard.
    r1.save_synced(round("s1", &key, vec![2])).await.unwrap();
    r1.save_synced(round("s2", &key, vec![3])).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            next(&mut from_r1).await,
            ReplicaEvent::DocumentChanged {
                doc_key: key.clone(),
                origin_store: "s1".into()
            }
        );
    }
    assert!(r1.revoke_store("s3".into()).await.unwrap());
    assert_eq!(
        next(&mut from_r1).await,
        ReplicaEvent::Revoked {
            store_id: "s3".into()
        }
    );
    r1.erase_documents(Erasure {
        doc_keys: vec![key.clone()],
        reason: "retention".into(),
        requested_by: "system".into(),
        now_ms: 20,
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut from_r1).await,
        ReplicaEvent::Erased {
            doc_key: key.clone(),
            holders: vec!["s1".into(), "s2".into()]
        }
    );
    assert!(
        AuditLog::audited_revoke_store(&r1, "s2".into(), "system".into())
            .await
            .unwrap()
    );
    assert_eq!(
        next(&mut from_r1).await,
        ReplicaEvent::Revoked {
            store_id: "s2".into()
        }
    );
    // r1 heard none of its own: the first thing it hears is r2's settings write.
    r2.save_document("settings:x".into(), "s1".into(), vec![1], vec![], 30)
        .await
        .unwrap();
    assert_eq!(
        next(&mut from_r2).await,
        ReplicaEvent::DocumentChanged {
            doc_key: "settings:x".into(),
            origin_store: "s1".into()
        }
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(from_r2.try_recv().is_err());
    assert!(from_r1.try_recv().is_err());

    // r2's listening connection is cut: it reconnects and asks for a resync, then hears again.
    execute(
        &url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'aisle-hub-listen r2' AND datname = current_database()",
    )
    .await;
    assert_eq!(next(&mut from_r1).await, ReplicaEvent::Resync);
    // (A round of a store other than the origin: heard by the replicas.)
    r1.save_synced(round("s1", "conversation:after", vec![1]))
        .await
        .unwrap();
    r1.save_synced(round("s2", "conversation:after", vec![2]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut from_r1).await,
        ReplicaEvent::DocumentChanged {
            doc_key: "conversation:after".into(),
            origin_store: "s1".into()
        }
    );
    r1.stop();
    r2.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once() {
    let Some(url) = fresh_database("replicas_starting_at_once_migrate_once").await else {
        return;
    };
    let (r1, r2) = tokio::join!(
        PostgresStore::connect(&url, 2, POOL_WAIT, "r1".into(), 16),
        PostgresStore::connect(&url, 2, POOL_WAIT, "r2".into(), 16)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let versions: Vec<i64> = client
        .query("SELECT version FROM schema_migrations ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=6).collect::<Vec<i64>>());
    // A third start finds the schema current.
    let r3 = open(&url, "r3").await;
    // One identity for every replica: the first proposal stored.
    assert_eq!(r2.identity("b".into()).await.unwrap(), "b");
    assert_eq!(r1.identity("a".into()).await.unwrap(), "b");
    assert_eq!(r3.identity("c".into()).await.unwrap(), "b");
    // A database newer than this hub is refused.
    client
        .batch_execute("INSERT INTO schema_migrations VALUES (99, 0)")
        .await
        .unwrap();
    assert!(matches!(
        PostgresStore::connect(&url, 1, POOL_WAIT, "r4".into(), 1).await,
        Err(StoreError::Schema(_))
    ));
    for r in [r1, r2, r3] {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_appends_from_two_replicas_form_one_chain() {
    let Some(url) = fresh_database("audit_appends_from_two_replicas_form_one_chain").await else {
        return;
    };
    let r1 = Arc::new(open(&url, "r1").await);
    let r2 = Arc::new(open(&url, "r2").await);
    let appender = |store: Arc<PostgresStore>, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..25 {
                AuditLog::append(
                    &*store,
                    Record::new(name.into(), "test", &i.to_string(), serde_json::json!({})),
                )
                .await
                .unwrap();
            }
        })
    };
    let (a, b) = tokio::join!(
        appender(Arc::clone(&r1), "r1"),
        appender(Arc::clone(&r2), "r2")
    );
    a.unwrap();
    b.unwrap();
    let report = verify_audit(&url).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 50);
    let (entries, head) = AuditLog::page(&*r2, 0, 100).await.unwrap();
    assert_eq!(entries.len(), 50);
    assert_eq!(head.unwrap().hash, report.head);
    execute(&url, "UPDATE audit_log SET target = 'x' WHERE seq = 17").await;
    let report = verify_audit(&url).await.unwrap();
    assert_eq!(
        (report.ok, report.first_bad_seq, report.reason),
        (false, Some(17), Some(aisle_service::audit::Fault::Edited))
    );
    execute(&url, "DROP TABLE audit_log").await;
    assert!(verify_audit(&url).await.is_err());
    r1.stop();
    r2.stop();
}

/// Two replicas sweeping the same expired documents, redeeming one code, and a replica writing
/// a document while another erases it: each document is erased once, the code redeemed once,
/// and nothing is written back after the erasure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_erasures_and_redemptions() {
    let Some(url) = fresh_database("replicas_racing_erasures_and_redemptions").await else {
        return;
    };
    let r1 = Arc::new(open(&url, "r1").await);
    let r2 = Arc::new(open(&url, "r2").await);
    for s in ["s1", "s2", "s3"] {
        add_store(&*r1, s).await;
    }
    let keys: Vec<String> = (0..10).map(|i| format!("conversation:k{i}")).collect();
    for key in &keys {
        r1.save_synced(round("s1", key, vec![1])).await.unwrap();
    }
    let sweep = |store: Arc<PostgresStore>, keys: Vec<String>| async move {
        store
            .erase_documents(Erasure {
                doc_keys: keys,
                reason: "retention".into(),
                requested_by: "system".into(),
                now_ms: 5,
            })
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(
        tokio::spawn(sweep(Arc::clone(&r1), keys.clone())),
        tokio::spawn(sweep(Arc::clone(&r2), keys.iter().rev().cloned().collect()))
    );
    assert_eq!(a.unwrap().len() + b.unwrap().len(), keys.len());
    assert_eq!(r1.count_documents().await.unwrap(), 0);

    let key = "conversation:handed".to_owned();
    r1.save_synced(round("s1", &key, vec![1])).await.unwrap();
    r1.register_handoff(NewHandoff {
        code_hash: vec![7; 32],
        doc_key: key.clone(),
        store_id: "s1".into(),
        expires_at_ms: 100,
    })
    .await
    .unwrap();
    let (a, b) = tokio::join!(
        r1.redeem_handoff(vec![7; 32], "s2".into(), 10),
        r2.redeem_handoff(vec![7; 32], "s3".into(), 10)
    );
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, Redeemed::Used));
    assert!(
        matches!(outcomes[0], Redeemed::Shared { .. }),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Redeemed::Used);
    assert_eq!(r1.shared_with(key.clone()).await.unwrap().len(), 1);

    // Rounds keep coming from r1 while r2 erases the document.
    let writer = {
        let r1 = Arc::clone(&r1);
        let key = key.clone();
        tokio::spawn(async move {
            for i in 0..40u8 {
                r1.save_synced(round("s1", &key, vec![i])).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let erased = sweep(Arc::clone(&r2), vec![key.clone()]).await;
    writer.await.unwrap();
    assert_eq!(erased.len(), 1);
    assert!(r1.load_document(key.clone()).await.unwrap().is_none());
    assert_eq!(r1.count_documents().await.unwrap(), 0);
    let report = verify_audit(&url).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, keys.len() as u64 + 1);
    r1.stop();
    r2.stop();
}

/// The public futures can be spawned (server.rs and main.rs run them on the runtime), and the
/// store is shared as both traits.
#[test]
fn the_public_api_is_send() {
    fn send<T: Send>(_: &T) {}
    let connect = PostgresStore::connect("postgres://x@127.0.0.1:1/x", 1, POOL_WAIT, "r".into(), 1);
    send(&connect);
    let verify = verify_audit("postgres://x@127.0.0.1:1/x");
    send(&verify);
    fn shared(store: Arc<PostgresStore>) -> (Arc<dyn HubStore>, Arc<dyn AuditLog>) {
        (store.clone(), store)
    }
    let _ = shared;
}
