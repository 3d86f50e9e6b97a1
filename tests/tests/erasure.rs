//! Erasure: a customer's data deleted on request, and resolved conversations past the region's
//! retention period, at the store, the hub and every other store holding a copy. Automerge
//! keeps history, so the check is the one a regulator would make: the text is gone from every
//! file on disk (database, WAL, attachments), not just from the API's answers — and it does not
//! come back when a store that held a copy syncs again.
//!
//! Every wait is a poll with a bounded deadline ([`eventually`]).

use std::path::Path;
use std::time::Duration;

use aisle_tests::*;

const DEADLINE: Duration = Duration::from_secs(15);

struct Store {
    edge: Edge,
    admin: StaffSession,
    staff: StaffConn,
}

async fn open_store_with(hub: &mut Hub, store_id: &str, options: EdgeOptions) -> Store {
    let token = hub.register_store(store_id).await;
    let edge = Edge::start_with(options.enrolled_at(&hub.url(), store_id, &token)).await;
    let admin = edge.http().login_admin().await;
    let session = edge
        .http()
        .create_and_login_staff(&admin, "staff1", &format!("Staff of {store_id}"), 8)
        .await;
    let staff = StaffConn::connect(&edge, &session, &format!("staff@{store_id}")).await;
    wait_connected(&edge, DEADLINE).await;
    Store { edge, admin, staff }
}

async fn open_store(hub: &mut Hub, store_id: &str) -> Store {
    open_store_with(hub, store_id, EdgeOptions::default()).await
}

/// A customer with a chat assigned to the store's staff, one message each way; returns the
/// customer and the conversation id once the hub holds both messages.
async fn chat(hub: &Hub, store: &mut Store, name: &str, says: &str) -> (Customer, String) {
    let mut c = Customer::connect(&store.edge, name).await;
    let conv = c.start_conversation().await;
    c.recv_state(&conv, "assigned").await;
    c.send_msg(&conv, &cmid(), says).await;
    store.staff.recv_message(&conv).await;
    store
        .staff
        .send_msg(&conv, &cmid(), &format!("re: {says}"))
        .await;
    c.recv_message(&conv).await;
    eventually("the hub holds both messages", DEADLINE, async || {
        let n = hub.messages_of(&conv).len();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} messages"))
        }
    })
    .await;
    (c, conv)
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

async fn gone_from_disk(what: &str, dir: &Path, needle: &str) {
    eventually(
        &format!("{needle:?} is in no file of {what}"),
        DEADLINE,
        async || {
            let files = files_containing(dir, needle);
            if files.is_empty() {
                Ok(())
            } else {
                Err(format!("{files:?}"))
            }
        },
    )
    .await;
}

async fn on_disk(what: &str, dir: &Path, needle: &str) {
    eventually(
        &format!("{needle:?} is on {what}'s disk"),
        DEADLINE,
        async || {
            if files_containing(dir, needle).is_empty() {
                Err("not found".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

async fn conversation_status(edge: &Edge, admin: &StaffSession, conv: &str) -> u16 {
    edge.http()
        .get(&format!("/api/conversations/{conv}"), Some(&admin.token))
        .await
        .status
}

async fn gone_at(edge: &Edge, admin: &StaffSession, conv: &str, what: &str) {
    eventually(
        &format!("{conv} is gone at {what}"),
        DEADLINE,
        async || match conversation_status(edge, admin, conv).await {
            404 => Ok(()),
            other => Err(format!("GET answered {other}")),
        },
    )
    .await;
}

fn marker(what: &str) -> String {
    format!("{what}-{}", &cmid()[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customers_deletion_at_a_store_erases_every_copy_in_the_region() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let b = open_store(&mut hub, "store-b").await;

    let secret = marker("loyalty-card-4929");
    let (mut ca, conv) = chat(&hub, &mut a, "Lin", &secret).await;
    let kept = marker("keep-this");
    let (_other, other_conv) = chat(&hub, &mut a, "Wu", &kept).await;

    // The customer continued the conversation at store B: B holds a copy too.
    ca.send(json!({"type":"handoff","conversation_id":conv}))
        .await;
    let code = ca
        .recv_reply("handoff", |v| v["conversation_id"] == conv.as_str())
        .await
        .str_("code")
        .to_string();
    eventually("store B redeems the hand-off code", DEADLINE, async || {
        let r = b.edge.http().redeem_handoff(&code).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;

    // Before: the text is on every disk (so the checks below can fail).
    on_disk("store A", a.edge.data_dir(), &secret).await;
    on_disk("store B", b.edge.data_dir(), &secret).await;
    on_disk("the hub", hub.data_dir(), &secret).await;

    // A store admin erases the customer; staff may not.
    let staff_try = a
        .edge
        .http()
        .request(
            "DELETE",
            &format!("/api/customers/{}", ca.customer_id),
            Some(&a.staff.session.token),
            None,
        )
        .await;
    staff_try.expect_error(403, "forbidden");
    let erased = a
        .edge
        .http()
        .request(
            "DELETE",
            &format!("/api/customers/{}", ca.customer_id),
            Some(&a.admin.token),
            None,
        )
        .await;
    let body = erased.expect(200);
    assert_eq!(body["erased"], json!([conv]), "{body}");

    gone_at(&a.edge, &a.admin, &conv, "store A").await;
    eventually("the hub no longer holds it", DEADLINE, async || {
        if hub.conversation(&conv).is_none() && hub.messages_of(&conv).is_empty() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    gone_at(&b.edge, &b.admin, &conv, "store B").await;

    gone_from_disk("store A", a.edge.data_dir(), &secret).await;
    gone_from_disk("store B", b.edge.data_dir(), &secret).await;
    gone_from_disk("the hub", hub.data_dir(), &secret).await;

    // The erasure is in both audit logs (who asked, which conversation, why; no content).
    let entries = a
        .edge
        .http()
        .get("/api/audit?limit=500", Some(&a.admin.token))
        .await;
    let entries = entries.expect(200).to_string();
    assert!(entries.contains("conversation_erased") && entries.contains(&conv));
    assert!(
        !entries.contains(&secret),
        "the audit log holds the erased text"
    );
    let hq = hub.admin_token().await;
    let hub_entries = hub.http().get("/api/audit?limit=500", Some(&hq)).await;
    let hub_entries = hub_entries.expect(200).to_string();
    assert!(hub_entries.contains("document_erased") && hub_entries.contains(&conv));

    // Store B's admin cannot erase a conversation of store A that B never held: 404 at B, and
    // nothing travels to the hub (A's conversation stays there and at A).
    b.edge
        .http()
        .request(
            "DELETE",
            &format!("/api/conversations/{other_conv}"),
            Some(&b.admin.token),
            None,
        )
        .await
        .expect_error(404, "not_found");

    // The other customer's conversation is untouched everywhere.
    assert_eq!(
        conversation_status(&a.edge, &a.admin, &other_conv).await,
        200
    );
    assert_eq!(hub.messages_of(&other_conv).len(), 2);
    assert!(!files_containing(a.edge.data_dir(), &kept).is_empty());

    // A restarted store syncs again: nothing comes back.
    a.edge.restart().await;
    wait_connected(&a.edge, DEADLINE).await;
    let admin = a.edge.http().login_admin().await;
    let other = marker("after-restart");
    let mut a = reconnect_staff(a, admin).await;
    let (_c, _conv2) = chat(&hub, &mut a, "Zhao", &other).await;
    assert!(hub.conversation(&conv).is_none(), "the hub took it back");
}

/// Reconnects the store's staff member after a restart.
async fn reconnect_staff(store: Store, admin: StaffSession) -> Store {
    let session = store.edge.http().login("staff1", "pw-staff1-12345").await;
    let staff = StaffConn::connect(&store.edge, &session, "staff again").await;
    Store {
        edge: store.edge,
        admin,
        staff,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_erases_a_customer_and_a_store_that_was_offline_erases_its_copy_when_it_returns() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let secret = marker("passport-E1234");
    let (ca, conv) = chat(&hub, &mut a, "Lin", &secret).await;
    on_disk("store A", a.edge.data_dir(), &secret).await;
    on_disk("the hub", hub.data_dir(), &secret).await;

    a.edge.terminate().await;
    let token = hub.admin_token().await;
    let r = hub
        .http()
        .request(
            "DELETE",
            &format!("/api/customers/{}", ca.customer_id),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.expect(200)["erased"], json!([conv]), "{}", r.text);
    gone_from_disk("the hub", hub.data_dir(), &secret).await;
    hub.http()
        .get(&format!("/api/conversations/{conv}"), Some(&token))
        .await
        .expect_error(404, "not_found");

    // The store was offline: it learns it when it comes back, and erases its copy.
    a.edge.restart().await;
    wait_connected(&a.edge, DEADLINE).await;
    let admin = a.edge.http().login_admin().await;
    gone_at(&a.edge, &admin, &conv, "store A").await;
    gone_from_disk("store A", a.edge.data_dir(), &secret).await;
    assert!(
        hub.conversation(&conv).is_none(),
        "the store synced it back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolved_conversations_past_the_regions_retention_period_are_erased_everywhere() {
    let mut hub = Hub::start("eu-west").await;
    hub.set_env("AISLE_HUB_RETENTION__RESOLVED_CONVERSATION_SECS", 2);
    hub.set_env("AISLE_HUB_RETENTION__SWEEP_INTERVAL_SECS", 1);
    hub.restart().await;
    let options = EdgeOptions::default().env("AISLE_RETENTION__SWEEP_INTERVAL_SECS", 1);
    let mut a = open_store_with(&mut hub, "store-a", options).await;

    let old = marker("resolved-long-ago");
    let (_c1, resolved) = chat(&hub, &mut a, "Lin", &old).await;
    let open = marker("still-open");
    let (_c2, open_conv) = chat(&hub, &mut a, "Wu", &open).await;
    a.staff
        .action_ok(json!({"type":"resolve","request_id":"r1","conversation_id":resolved}))
        .await;

    gone_at(&a.edge, &a.admin, &resolved, "store A").await;
    eventually("the hub erased it", DEADLINE, async || {
        if hub.conversation(&resolved).is_none() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    gone_from_disk("store A", a.edge.data_dir(), &old).await;
    gone_from_disk("the hub", hub.data_dir(), &old).await;

    // The open conversation is kept, however old.
    assert_eq!(
        conversation_status(&a.edge, &a.admin, &open_conv).await,
        200
    );
    assert_eq!(hub.messages_of(&open_conv).len(), 2);
    let metrics = a.edge.http().metrics().await;
    assert!(
        metrics.contains("aisle_erased_conversations_total{reason=\"retention\"} 1")
            || metrics.contains("aisle_erased_conversations_total{reason=\"hub\"} 1"),
        "{metrics}"
    );
}
