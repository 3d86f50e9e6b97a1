//! What every [`HubStore`] (and [`AuditLog`]) back end must do, as tests both back ends' test
//! modules run against a fresh store (`sqlite.rs`, `postgres/tests.rs`): the SQLite store is
//! the specification, and each function here asserts one part of it.

use super::*;
use crate::audit::{AuditLog, Record};
use crate::projection::Projection;

pub(super) async fn add_store(store: &dyn HubStore, id: &str) {
    assert!(
        store
            .create_store(NewStore {
                id: id.into(),
                name: format!("Store {id}"),
                region: "r".into(),
                token_hash: vec![0; 32],
                token_expires_at_ms: 1,
                now_ms: 1,
            })
            .await
            .unwrap()
    );
}

/// A plain synced round of `doc_key` (origin `store_id`) with `chunk`.
pub(super) fn round(store_id: &str, doc_key: &str, chunk: Vec<u8>) -> SyncWrite {
    SyncWrite {
        store_id: store_id.into(),
        doc_key: doc_key.into(),
        origin_store: store_id.into(),
        chunk,
        heads: vec![7; 32],
        sync_state: vec![0],
        projection: None,
        now_ms: 3,
        replace_chunks: false,
        expected_version: None,
    }
}

pub(super) async fn enrollment_and_documents(store: &dyn HubStore) {
    let token = crate::auth::secret_hash("et_x");
    assert!(
        store
            .create_store(NewStore {
                id: "s1".into(),
                name: "One".into(),
                region: "r".into(),
                token_hash: token.clone(),
                token_expires_at_ms: u64::MAX / 2,
                now_ms: 1,
            })
            .await
            .unwrap()
    );
    let enroll = |t: Vec<u8>| store.enroll("s1".into(), t, vec![1; 32], 2);
    assert_eq!(
        enroll(crate::auth::secret_hash("bad")).await.unwrap(),
        EnrollOutcome::BadToken
    );
    assert_eq!(
        enroll(token.clone()).await.unwrap(),
        EnrollOutcome::Enrolled
    );
    assert_eq!(
        enroll(token.clone()).await.unwrap(),
        EnrollOutcome::TokenUsed
    );
    let write = round("s1", "conversation:x", vec![1, 2]);
    let first = store.save_synced(write.clone()).await.unwrap();
    assert!(first.created && !first.stale, "{first:?}");
    let second = store
        .save_synced(SyncWrite {
            chunk: vec![3],
            expected_version: Some(first.version),
            ..write.clone()
        })
        .await
        .unwrap();
    assert!(!second.created && !second.stale, "{second:?}");
    let stored = store
        .load_document("conversation:x".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.origin_store.as_str(), stored.bytes, stored.version),
        ("s1", vec![1, 2, 3], second.version)
    );
    // A second writer that loaded the first version compacts: the compare-and-swap on the
    // version turns its replacement into an append, so chunk 3 survives, and the stored
    // heads are both writers' heads.
    let racing = store
        .save_synced(SyncWrite {
            chunk: vec![9],
            heads: vec![8; 32],
            replace_chunks: true,
            expected_version: Some(first.version),
            ..write.clone()
        })
        .await
        .unwrap();
    assert!(racing.stale, "{racing:?}");
    let stored = store
        .load_document("conversation:x".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.bytes, vec![1, 2, 3, 9]);
    let manifest = store.manifest("s1".into()).await.unwrap();
    assert_eq!(manifest[0].1, [vec![7; 32], vec![8; 32]].concat());
    // With the version it holds, a compaction replaces every chunk.
    let compacted = store
        .save_synced(SyncWrite {
            chunk: vec![1, 2, 3, 9],
            heads: vec![8; 32],
            replace_chunks: true,
            expected_version: Some(racing.version),
            ..write.clone()
        })
        .await
        .unwrap();
    assert!(!compacted.stale, "{compacted:?}");
    assert_eq!(compacted.version, racing.version + 1);
    let manifest = store.manifest("s1".into()).await.unwrap();
    assert_eq!(manifest[0].1, vec![8; 32]);
    assert_eq!(store.manifest("s1".into()).await.unwrap().len(), 1);
    assert_eq!(store.count_documents().await.unwrap(), 1);
    let stored = store
        .load_document("conversation:x".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.bytes, vec![1, 2, 3, 9]);
    // A round without a chunk still bumps the version and stores the sync state.
    let empty = store
        .save_synced(SyncWrite {
            chunk: vec![],
            sync_state: vec![5, 5],
            expected_version: Some(compacted.version),
            ..write
        })
        .await
        .unwrap();
    assert_eq!(empty.version, compacted.version + 1);
    assert_eq!(
        store
            .sync_state("s1".into(), "conversation:x".into())
            .await
            .unwrap(),
        Some(vec![5, 5])
    );
    assert_eq!(
        store
            .store("s1".into())
            .await
            .unwrap()
            .unwrap()
            .last_sync_at_ms,
        Some(3)
    );
    assert!(
        store
            .load_document("conversation:y".into())
            .await
            .unwrap()
            .is_none()
    );
}

pub(super) async fn accounts_sessions_and_stores(store: &dyn HubStore) {
    assert_eq!(store.count_accounts().await.unwrap(), 0);
    let id = store
        .create_account("ana".into(), "hash".into(), "hq_admin".into())
        .await
        .unwrap();
    assert_eq!(store.count_accounts().await.unwrap(), 1);
    let account = store
        .account_by_username("ana".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (account.id.as_str(), account.role.as_str()),
        (id.as_str(), "hq_admin")
    );
    assert!(
        store
            .account_by_username("bob".into())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .create_account("ana".into(), "h".into(), "hq_viewer".into())
            .await
            .is_err(),
        "usernames are unique"
    );
    store
        .create_session(vec![1; 32], id.clone(), 100)
        .await
        .unwrap();
    let live = store.session_account(vec![1; 32], 50).await.unwrap();
    assert_eq!(live.map(|a| a.username), Some("ana".into()));
    assert!(
        store
            .session_account(vec![1; 32], 100)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .session_account(vec![2; 32], 50)
            .await
            .unwrap()
            .is_none()
    );

    add_store(store, "s2").await;
    add_store(store, "s1").await;
    assert!(
        !store
            .create_store(NewStore {
                id: "s1".into(),
                name: "Again".into(),
                region: "r".into(),
                token_hash: vec![0; 32],
                token_expires_at_ms: 1,
                now_ms: 1,
            })
            .await
            .unwrap(),
        "the id is taken"
    );
    let ids: Vec<String> = store
        .list_stores()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert_eq!(
        store
            .enroll("s1".into(), vec![0; 32], vec![1; 32], 5)
            .await
            .unwrap(),
        EnrollOutcome::TokenExpired
    );
    assert_eq!(
        store
            .enroll("nope".into(), vec![0; 32], vec![1; 32], 0)
            .await
            .unwrap(),
        EnrollOutcome::UnknownStore
    );
    store.touch_store("s1".into(), 42).await.unwrap();
    let s1 = store.store("s1".into()).await.unwrap().unwrap();
    assert_eq!(
        (s1.name.as_str(), s1.last_sync_at_ms, s1.revoked),
        ("Store s1", Some(42), false)
    );
    assert!(store.revoke_store("s1".into()).await.unwrap());
    assert!(!store.revoke_store("nope".into()).await.unwrap());
    let s1 = store.store("s1".into()).await.unwrap().unwrap();
    assert!(s1.revoked && s1.credential_hash.is_none());
    assert_eq!(
        store
            .enroll("s1".into(), vec![0; 32], vec![1; 32], 0)
            .await
            .unwrap(),
        EnrollOutcome::Revoked
    );
    assert!(store.store("nope".into()).await.unwrap().is_none());
}

/// HQ's settings documents: appended at the hub, version 0 when created, bumped after.
pub(super) async fn settings_documents(store: &dyn HubStore) {
    add_store(store, "hq").await;
    let key = "settings:canned".to_owned();
    store
        .save_document(key.clone(), "hq".into(), vec![1], vec![3; 32], 5)
        .await
        .unwrap();
    store
        .save_document(key.clone(), "hq".into(), vec![2], vec![4; 32], 6)
        .await
        .unwrap();
    let stored = store.load_document(key.clone()).await.unwrap().unwrap();
    assert_eq!((stored.bytes, stored.version), (vec![1, 2], 1));
    assert_eq!(
        store.manifest("hq".into()).await.unwrap(),
        vec![(key.clone(), vec![4; 32])]
    );
    assert!(store.unprojected_documents().await.unwrap().is_empty());
}

pub(super) async fn handoffs_are_redeemed_once(store: &dyn HubStore) {
    for s in ["s1", "s2", "s3"] {
        add_store(store, s).await;
    }
    let doc = "conversation:h".to_owned();
    store.save_synced(round("s1", &doc, vec![1])).await.unwrap();
    let code = |n: u8, issuer: &str, doc_key: &str, expires_at_ms: u64| NewHandoff {
        code_hash: vec![n; 32],
        doc_key: doc_key.into(),
        store_id: issuer.into(),
        expires_at_ms,
    };
    store
        .register_handoff(code(1, "s1", &doc, 100))
        .await
        .unwrap();
    store
        .register_handoff(code(1, "s1", &doc, 100))
        .await
        .unwrap();
    store
        .register_handoff(code(2, "s1", &doc, 5))
        .await
        .unwrap();
    store
        .register_handoff(code(3, "s1", &doc, 100))
        .await
        .unwrap();
    store
        .register_handoff(code(4, "s1", "conversation:unsynced", 100))
        .await
        .unwrap();
    let redeem = |n: u8, at: &str, now: u64| store.redeem_handoff(vec![n; 32], at.into(), now);
    let shared = Redeemed::Shared {
        doc_key: doc.clone(),
        origin_store: "s1".into(),
    };
    assert_eq!(redeem(9, "s2", 10).await.unwrap(), Redeemed::Unknown);
    assert_eq!(redeem(1, "s2", 10).await.unwrap(), shared);
    // The same store's retry, even past the expiry: the same answer.
    assert_eq!(redeem(1, "s2", 200).await.unwrap(), shared);
    assert_eq!(redeem(1, "s3", 10).await.unwrap(), Redeemed::Used);
    assert_eq!(redeem(2, "s2", 10).await.unwrap(), Redeemed::Expired);
    assert_eq!(redeem(3, "s1", 10).await.unwrap(), Redeemed::Own);
    assert_eq!(redeem(3, "s2", 10).await.unwrap(), Redeemed::Used);
    assert_eq!(redeem(4, "s2", 10).await.unwrap(), Redeemed::NotSynced);
    // A store the document was shared with may hand it on.
    store
        .register_handoff(code(5, "s2", &doc, 100))
        .await
        .unwrap();
    assert_eq!(redeem(5, "s3", 10).await.unwrap(), shared);
    assert_eq!(store.shared_with(doc.clone()).await.unwrap(), ["s2", "s3"]);
    let mut shares = store.shares().await.unwrap();
    shares.sort();
    assert_eq!(
        shares,
        [
            (doc.clone(), "s2".to_owned()),
            (doc.clone(), "s3".to_owned())
        ]
    );
    assert_eq!(store.manifest("s3".into()).await.unwrap()[0].0, doc);
    assert!(
        store
            .shared_with("conversation:none".into())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A conversation of `store_id` with customer and staff messages, resolved.
pub(super) fn projected(store_id: &str) -> (Projection, Projection) {
    use aisle_sync::*;
    let customer = CustomerId::new();
    let agent = StaffId::new();
    let meta = Meta::new(ConversationId::new(), store_id, customer, 1_000);
    let mut c = Conversation::create(&meta).unwrap();
    let start = c.heads();
    c.put_participant(&ParticipantRecord {
        participant: Participant::Staff(agent),
        display_name: "小王".into(),
        joined_at_ms: 1_000,
    })
    .unwrap();
    let mut add = |sender: Participant, body: &str, at: u64| {
        c.add_message(&MessageRecord {
            id: MessageId::new(),
            client_msg_id: body.into(),
            sender,
            body: body.into(),
            sent_at_ms: at,
            attachment: None,
            intent: None,
        })
        .unwrap();
    };
    add(
        Participant::Customer(customer),
        "我想退货，这件外套太小了",
        2_000,
    );
    add(
        Participant::Staff(agent),
        "好的，请带上收据 (receipt)",
        5_000,
    );
    let first = c.changes_since(&start);
    let first = crate::projection::of_round(&c, first).unwrap();
    let middle = c.heads();
    let claim = Event {
        id: EventId::new(),
        kind: EventKind::Claim { agent },
        actor: Participant::Staff(agent),
        hlc: Hlc::new(3_000, 0),
        prev: None,
    };
    c.add_event(&claim).unwrap();
    c.add_event(&Event {
        id: EventId::new(),
        kind: EventKind::Resolve,
        actor: Participant::Staff(agent),
        hlc: Hlc::new(9_000, 0),
        prev: Some(claim.id),
    })
    .unwrap();
    let second = c.changes_since(&middle);
    (first, crate::projection::of_round(&c, second).unwrap())
}

fn projection_round(projection: &Projection) -> SyncWrite {
    SyncWrite {
        store_id: projection.conversation.store_id.clone(),
        doc_key: format!("conversation:{}", projection.conversation.id),
        origin_store: projection.conversation.store_id.clone(),
        chunk: vec![],
        heads: vec![],
        sync_state: vec![],
        projection: Some(projection.clone()),
        now_ms: 1,
        replace_chunks: false,
        expected_version: None,
    }
}

fn search_query(terms: &[&str]) -> SearchQuery {
    SearchQuery {
        terms: terms.iter().map(|t| t.to_string()).collect(),
        store: None,
        limit: 10,
        scan_messages: 1_000,
    }
}

pub(super) async fn projection_is_idempotent_searchable_and_counted(store: &dyn HubStore) {
    add_store(store, "s1").await;
    let (first, second) = projected("s1");
    let id = first.conversation.id.clone();
    // The first round twice (a repeated record), then the resolve.
    for p in [&first, &first, &second] {
        store.save_synced(projection_round(p)).await.unwrap();
    }
    let detail = store
        .conversation_detail(id.clone())
        .await
        .unwrap()
        .unwrap();
    let c = &detail.conversation;
    assert_eq!(c.message_count, 2);
    assert_eq!(c.status, "resolved");
    assert_eq!(c.agent_name.as_deref(), Some("小王"));
    assert_eq!(
        (c.first_customer_message_at_ms, c.first_response_at_ms),
        (Some(2_000), Some(5_000))
    );
    assert_eq!(c.resolved_at_ms, Some(9_000));
    assert_eq!(c.last_message_at_ms, Some(5_000));
    assert_eq!(detail.messages.len(), 2);
    assert_eq!(detail.participants.len(), 1);
    assert_eq!(
        detail.messages[1].sender.display_name.as_deref(),
        Some("小王")
    );
    assert!(
        store
            .conversation_detail("nope".into())
            .await
            .unwrap()
            .is_none()
    );

    let search = |terms: &[&str]| store.search_messages(search_query(terms));
    let (method, hits) = search(&["外套太小"]).await.unwrap();
    assert_eq!((method, hits.len()), (SearchMethod::Index, 1));
    assert_eq!(hits[0].body, "我想退货，这件外套太小了");
    assert_eq!(hits[0].conversation_id, id);
    let (method, hits) = search(&["退货"]).await.unwrap();
    assert_eq!((method, hits.len()), (SearchMethod::Scan, 1));
    let (_, hits) = search(&["RECEIPT"]).await.unwrap();
    assert_eq!(hits.len(), 1, "case-insensitive for ASCII");
    assert_eq!(hits[0].sender.display_name.as_deref(), Some("小王"));
    let (_, hits) = search(&["receipt", "收据"]).await.unwrap();
    assert_eq!(hits.len(), 1, "a long and a short term together");
    let (_, hits) = search(&["receipt", "退货"]).await.unwrap();
    assert!(hits.is_empty(), "every term in one message");
    let (_, hits) = search(&["100%"]).await.unwrap();
    assert!(hits.is_empty());
    let (_, hits) = search(&["%"]).await.unwrap();
    assert!(hits.is_empty(), "LIKE characters are literal");
    let (_, hits) = search(&["_"]).await.unwrap();
    assert!(hits.is_empty(), "LIKE characters are literal");
    let (_, hits) = store
        .search_messages(SearchQuery {
            store: Some("s2".into()),
            ..search_query(&["receipt"])
        })
        .await
        .unwrap();
    assert!(hits.is_empty(), "another store's messages");
    let (_, hits) = store
        .search_messages(SearchQuery {
            limit: 1,
            ..search_query(&["好", "我"])
        })
        .await
        .unwrap();
    assert!(hits.is_empty());
    let (_, hits) = store
        .search_messages(SearchQuery {
            limit: 1,
            ..search_query(&["，"])
        })
        .await
        .unwrap();
    assert_eq!(hits.len(), 1, "the limit");
    assert!(hits[0].body.starts_with("好的"), "the newest first");

    let listed = store
        .list_conversations(ConversationFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed, vec![c.clone()]);
    for (filter, expected) in [
        (
            ConversationFilter {
                statuses: Some(vec!["resolved"]),
                store: Some("s1".into()),
                intent: Some("unknown".into()),
                from_ms: Some(1_000),
                to_ms: Some(1_001),
                limit: 10,
                ..Default::default()
            },
            1,
        ),
        (
            ConversationFilter {
                statuses: Some(vec!["queued", "active"]),
                limit: 10,
                ..Default::default()
            },
            0,
        ),
        (
            ConversationFilter {
                before: Some((1_000, id.clone())),
                limit: 10,
                ..Default::default()
            },
            0,
        ),
        (
            ConversationFilter {
                agent_id: Some("nobody".into()),
                limit: 10,
                ..Default::default()
            },
            0,
        ),
    ] {
        let listed = store.list_conversations(filter.clone()).await.unwrap();
        assert_eq!(listed.len(), expected, "{filter:?}");
    }

    let figures = store
        .figures(FiguresQuery {
            from_ms: 0,
            to_ms: 2 * HOUR_MS,
            store: None,
        })
        .await
        .unwrap();
    assert_eq!(figures.hours.len(), 2);
    assert_eq!(figures.hours[0].messages, 2);
    assert_eq!(figures.hours[0].new_conversations, 1);
    assert_eq!(figures.totals.new_conversations, 1);
    assert_eq!(figures.totals.first_response.p50_ms, Some(3_000));
    assert_eq!(figures.totals.first_response.count, 1);
    assert_eq!(figures.totals.resolution.avg_ms, Some(8_000));
    assert_eq!(figures.by_store["s1"].messages, 2);
    assert_eq!(figures.by_intent["unknown"].new_conversations, 1);
    assert_eq!(figures.by_intent["unknown"].messages, 2);
    let other = store
        .figures(FiguresQuery {
            from_ms: 0,
            to_ms: HOUR_MS,
            store: Some("s2".into()),
        })
        .await
        .unwrap();
    assert_eq!(other.totals, GroupFigures::default());

    let customer = first.conversation.customer_id.clone();
    assert_eq!(
        store.customer_documents(customer).await.unwrap(),
        [format!("conversation:{id}")]
    );
    assert_eq!(
        store.expired_documents(9_001, 10).await.unwrap(),
        [format!("conversation:{id}")]
    );
    assert!(store.expired_documents(9_000, 10).await.unwrap().is_empty());
}

pub(super) async fn documents_stored_without_a_projection_are_backfilled(store: &dyn HubStore) {
    use aisle_sync::*;
    add_store(store, "s1").await;
    let customer = CustomerId::new();
    let meta = Meta::new(ConversationId::new(), "s1", customer, 1_000);
    let mut c = Conversation::create(&meta).unwrap();
    c.add_message(&MessageRecord {
        id: MessageId::new(),
        client_msg_id: "c1".into(),
        sender: Participant::Customer(customer),
        body: "stored before the projection existed".into(),
        sent_at_ms: 2_000,
        attachment: None,
        intent: None,
    })
    .unwrap();
    // As a hub of schema version 1 stored it: the document, no projection.
    store
        .save_synced(SyncWrite {
            store_id: "s1".into(),
            doc_key: DocumentKey::from(meta.id).to_string(),
            origin_store: "s1".into(),
            chunk: c.save(),
            heads: vec![],
            sync_state: vec![],
            projection: None,
            now_ms: 1,
            replace_chunks: false,
            expected_version: None,
        })
        .await
        .unwrap();
    assert_eq!(store.unprojected_documents().await.unwrap().len(), 1);
    assert_eq!(crate::projection::backfill(store).await.unwrap(), 1);
    assert!(store.unprojected_documents().await.unwrap().is_empty());
    let detail = store
        .conversation_detail(meta.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.conversation.message_count, 1);
    assert_eq!(detail.conversation.status, "queued");
    assert_eq!(crate::projection::backfill(store).await.unwrap(), 0);
}

pub(super) async fn erasure_leaves_tombstones_that_block_writes(
    store: &dyn HubStore,
    audit: &dyn AuditLog,
) {
    add_store(store, "s1").await;
    add_store(store, "s2").await;
    let (first, _) = projected("s1");
    let key = format!("conversation:{}", first.conversation.id);
    store
        .save_synced(SyncWrite {
            chunk: vec![1],
            ..projection_round(&first)
        })
        .await
        .unwrap();
    store
        .register_handoff(NewHandoff {
            code_hash: vec![1; 32],
            doc_key: key.clone(),
            store_id: "s1".into(),
            expires_at_ms: 100,
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .redeem_handoff(vec![1; 32], "s2".into(), 10)
            .await
            .unwrap(),
        Redeemed::Shared { .. }
    ));
    store
        .save_synced(SyncWrite {
            store_id: "s2".into(),
            ..round("s1", &key, vec![])
        })
        .await
        .unwrap();
    let erase = Erasure {
        doc_keys: vec![key.clone(), "conversation:never".into()],
        reason: "customer_request".into(),
        requested_by: "hq:a".into(),
        now_ms: 10,
    };
    let erased = store.erase_documents(erase.clone()).await.unwrap();
    assert_eq!(
        erased,
        [ErasedDocument {
            doc_key: key.clone(),
            holders: vec!["s1".into(), "s2".into()],
        }]
    );
    assert!(store.load_document(key.clone()).await.unwrap().is_none());
    assert!(
        store
            .sync_state("s2".into(), key.clone())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.shared_with(key.clone()).await.unwrap().is_empty());
    assert!(
        store
            .conversation_detail(first.conversation.id.clone())
            .await
            .unwrap()
            .is_none()
    );
    let (_, hits) = store
        .search_messages(search_query(&["外套太小"]))
        .await
        .unwrap();
    assert!(hits.is_empty());
    assert_eq!(
        store
            .redeem_handoff(vec![1; 32], "s2".into(), 10)
            .await
            .unwrap(),
        Redeemed::Unknown
    );
    assert_eq!(
        store
            .erased(vec![
                "conversation:other".into(),
                "conversation:never".into(),
                key.clone()
            ])
            .await
            .unwrap(),
        ["conversation:never", key.as_str()]
    );
    // A round that arrives after the erasure writes nothing.
    let late = store
        .save_synced(SyncWrite {
            chunk: vec![2],
            ..projection_round(&first)
        })
        .await
        .unwrap();
    assert_eq!(
        late,
        SyncSaved {
            created: false,
            version: 0,
            stale: false
        }
    );
    assert!(store.load_document(key.clone()).await.unwrap().is_none());
    assert_eq!(store.count_documents().await.unwrap(), 0);
    assert!(
        store
            .conversation_detail(first.conversation.id.clone())
            .await
            .unwrap()
            .is_none()
    );
    // Erasing again (another sweep) erases nothing and records nothing.
    assert!(store.erase_documents(erase).await.unwrap().is_empty());
    let (entries, _) = audit.page(0, 100).await.unwrap();
    let erasures: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "document_erased")
        .collect();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].target, key);
    assert_eq!(erasures[0].actor, "hq:a");
    assert!(erasures[0].details.contains("customer_request"));
}

pub(super) async fn audited_writes_form_one_chain(store: &dyn HubStore, audit: &dyn AuditLog) {
    let (entries, head) = audit.page(0, 10).await.unwrap();
    assert!(entries.is_empty() && head.is_none());
    let admin = audit
        .audited_create_account("ana".into(), "h".into(), "hq_admin".into(), "system".into())
        .await
        .unwrap();
    audit
        .audited_login(vec![1; 32], admin.clone(), u64::MAX / 2)
        .await
        .unwrap();
    let new_store = |id: &str| NewStore {
        id: id.into(),
        name: "One".into(),
        region: "r".into(),
        token_hash: vec![0; 32],
        token_expires_at_ms: 1,
        now_ms: 1,
    };
    let by = crate::audit::actor::hq(&admin);
    assert!(
        audit
            .audited_create_store(new_store("s1"), by.clone())
            .await
            .unwrap()
    );
    assert!(
        !audit
            .audited_create_store(new_store("s1"), by.clone())
            .await
            .unwrap(),
        "not recorded twice"
    );
    assert_eq!(
        audit
            .audited_enroll("ghost".into(), vec![0; 32], vec![1; 32], 0)
            .await
            .unwrap(),
        EnrollOutcome::UnknownStore
    );
    assert!(
        audit
            .audited_revoke_store("s1".into(), by.clone())
            .await
            .unwrap()
    );
    assert!(
        !audit
            .audited_revoke_store("nope".into(), by.clone())
            .await
            .unwrap()
    );
    add_store(store, "hq").await;
    audit
        .audited_save_document(
            "settings:canned".into(),
            "hq".into(),
            vec![1],
            vec![2; 32],
            5,
            Record::new(
                by.clone(),
                "canned_replies_changed",
                "",
                serde_json::json!({}),
            ),
        )
        .await
        .unwrap();
    let last = audit
        .append(Record::new(
            "anonymous".into(),
            "hq_login_refused",
            "bob",
            serde_json::json!({ "reason": "bad_password" }),
        ))
        .await
        .unwrap();
    assert_eq!(last.seq, 7);
    let (entries, head) = audit.page(0, 100).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "hq_account_created",
            "hq_login",
            "store_created",
            "store_enrollment_refused",
            "store_revoked",
            "canned_replies_changed",
            "hq_login_refused",
        ]
    );
    assert_eq!(entries[3].actor, "anonymous");
    assert_eq!(entries[6], last);
    let head = head.unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (7, last.hash.as_str()));
    let report = aisle_service::audit::verify_entries(entries.clone(), Some(head));
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 7);
    let (page, _) = audit.page(2, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(
        store
            .load_document("settings:canned".into())
            .await
            .unwrap()
            .unwrap()
            .bytes,
        vec![1]
    );
    // An edited entry breaks the chain.
    let mut edited = entries;
    edited[2].details = r#"{"name":"Other","region":"r"}"#.into();
    let report = aisle_service::audit::verify_entries(edited, None);
    assert_eq!(
        (report.ok, report.first_bad_seq, report.reason),
        (false, Some(3), Some(aisle_service::audit::Fault::Edited))
    );
}

fn region_layer(version: u64) -> RegionSettings {
    RegionSettings {
        version,
        layer: format!(r#"{{"version":{version}}}"#),
    }
}

/// HQ's region settings layer: none at first; a write replaces it only with a higher version,
/// so the later of two racing edits stays.
pub(super) async fn region_settings_only_move_forward(store: &dyn HubStore) {
    assert_eq!(store.region_settings().await.unwrap(), None);
    assert!(store.put_region_settings(region_layer(10)).await.unwrap());
    assert_eq!(
        store.region_settings().await.unwrap(),
        Some(region_layer(10))
    );
    for stale in [10, 9] {
        assert!(
            !store
                .put_region_settings(region_layer(stale))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store.region_settings().await.unwrap(),
        Some(region_layer(10))
    );
    assert!(store.put_region_settings(region_layer(11)).await.unwrap());
    assert_eq!(
        store.region_settings().await.unwrap(),
        Some(region_layer(11))
    );
}

/// The audited write of the region layer appends its entry exactly when the layer is stored.
pub(super) async fn region_settings_are_audited_when_stored(
    store: &dyn HubStore,
    audit: &dyn AuditLog,
) {
    let record = |version: u64| {
        Record::new(
            "hq:a".into(),
            "settings_changed",
            "region",
            serde_json::json!({ "scope": "region", "version": version }),
        )
    };
    assert!(
        audit
            .audited_put_region_settings(region_layer(5), record(5))
            .await
            .unwrap()
    );
    assert!(
        !audit
            .audited_put_region_settings(region_layer(4), record(4))
            .await
            .unwrap()
    );
    let (entries, _) = audit.page(0, 10).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (entries[0].action.as_str(), entries[0].target.as_str()),
        ("settings_changed", "region")
    );
    assert!(entries[0].details.contains("\"version\":5"));
    assert_eq!(
        store.region_settings().await.unwrap(),
        Some(region_layer(5))
    );
}
