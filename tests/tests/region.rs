//! A region: one real `aisle-hub` and real `aisle-edge` stores enrolled at it. What a user
//! would notice: chats reach the hub, survive a hub outage without loss or duplicates, a
//! store of another region or a revoked store is refused but keeps serving its customers, and
//! a customer continues a conversation at another store with a hand-off code.
//!
//! What the hub holds is read from its database (read-only), not from HQ endpoints. Every
//! wait is a poll with a bounded deadline ([`eventually`]).

use std::collections::BTreeMap;
use std::time::Duration;

use aisle_tests::*;

/// Generous bound for anything that should take well under a second on an idle machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A store of the region with one logged-in staff member (capacity 8) connected.
struct Store {
    edge: Edge,
    admin: StaffSession,
    staff: StaffConn,
}

async fn open_store(hub: &mut Hub, store_id: &str) -> Store {
    let edge = hub.start_store(store_id).await;
    let admin = edge.http().login_admin().await;
    let session = edge
        .http()
        .create_and_login_staff(&admin, "staff1", &format!("Staff of {store_id}"), 8)
        .await;
    let staff = StaffConn::connect(&edge, &session, &format!("staff@{store_id}")).await;
    Store { edge, admin, staff }
}

/// A customer with a conversation assigned to the store's staff member.
async fn customer_with_chat(store: &mut Store, name: &str) -> (Customer, String) {
    let mut c = Customer::connect(&store.edge, name).await;
    let conv = c.start_conversation().await;
    c.recv_state(&conv, "assigned").await;
    (c, conv)
}

/// Customer sends, staff receives: returns the message id.
async fn customer_says(c: &mut Customer, staff: &mut StaffConn, conv: &str, body: &str) -> String {
    let ack = c.send_msg(conv, &cmid(), body).await;
    let m = staff.recv_message(conv).await;
    assert_eq!(m["id"], ack["message_id"], "staff got another message: {m}");
    ack.str_("message_id").to_string()
}

/// Staff replies, customer receives: returns the message id.
async fn staff_says(staff: &mut StaffConn, c: &mut Customer, conv: &str, body: &str) -> String {
    let ack = staff.send_msg(conv, &cmid(), body).await;
    let m = c.recv_message(conv).await;
    assert_eq!(
        m["id"], ack["message_id"],
        "customer got another message: {m}"
    );
    ack.str_("message_id").to_string()
}

/// Waits until the hub's copy of `conv` holds exactly the messages `expected` (by id, each
/// once): none missing, none extra, no message stored twice under two ids.
async fn hub_holds_exactly(hub: &Hub, conv: &str, expected: &[(String, String)]) {
    let want: BTreeMap<&str, &str> = expected
        .iter()
        .map(|(id, body)| (id.as_str(), body.as_str()))
        .collect();
    assert_eq!(
        want.len(),
        expected.len(),
        "test bug: duplicate expected ids"
    );
    eventually(
        &format!(
            "the hub holds exactly the {} messages of {conv}",
            want.len()
        ),
        DEADLINE,
        async || {
            let records = hub.message_records(conv);
            let ids: Vec<String> = records.iter().map(|m| m.id.to_string()).collect();
            let got: BTreeMap<&str, &str> = ids
                .iter()
                .zip(&records)
                .map(|(id, m)| (id.as_str(), m.body.as_str()))
                .collect();
            let mut client_ids: Vec<&str> =
                records.iter().map(|m| m.client_msg_id.as_str()).collect();
            client_ids.sort();
            client_ids.dedup();
            if got == want && client_ids.len() == records.len() && records.len() == want.len() {
                Ok(())
            } else {
                Err(format!(
                    "{} records on the hub: {:?}",
                    records.len(),
                    records
                        .iter()
                        .map(|m| (m.id.to_string(), m.client_msg_id.clone(), m.body.clone()))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
}

/// What the store's `/healthz` says about its hub link, once `code` shows up as the error.
async fn wait_hub_error(edge: &Edge, code: &str) -> Value {
    eventually(
        &format!("the store shows hub error {code:?} in /healthz"),
        DEADLINE,
        async || {
            let h = hub_status(edge).await;
            if h["error"]["code"] == code {
                Ok(h)
            } else {
                Err(h.to_string())
            }
        },
    )
    .await
}

/// (a) A message sent at a store is in the hub's copy within a second.
#[tokio::test]
async fn a_message_sent_at_a_store_reaches_the_hub_within_a_second() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let h = wait_connected(&a.edge, DEADLINE).await;
    assert_eq!(h["region"], "eu-west", "{h}");
    assert_eq!(h["enrolled"], true, "{h}");

    let (mut c, conv) = customer_with_chat(&mut a, "Lin").await;
    let body = "do you have this in blue?";
    let id = customer_says(&mut c, &mut a.staff, &conv, body).await;

    let sent = std::time::Instant::now();
    eventually(
        "the hub's copy holds the message",
        Duration::from_secs(1),
        async || {
            let msgs = hub.messages_of(&conv);
            if msgs.contains(&(id.clone(), body.to_string())) {
                Ok(())
            } else {
                Err(format!("{msgs:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "message at the hub {:?} after the staff saw it",
        sent.elapsed()
    );
    // And HQ finds it by full-text search (the projection is written with the chunk).
    let token = hub.admin_token().await;
    let hits = hub
        .http()
        .get("/api/search?q=in%20blue", Some(&token))
        .await;
    let results = hits.expect(200)["results"].clone();
    assert!(
        results
            .as_array()
            .is_some_and(|r| r.iter().any(|h| h["message_id"] == id.as_str())),
        "HQ search misses the message: {results}"
    );
    assert_eq!(
        hub.documents(),
        vec![(format!("conversation:{conv}"), "store-a".to_string())]
    );

    // The HQ view of stores agrees: store-a is online and has synced.
    let stores = hub.stores().await;
    let s = stores
        .iter()
        .find(|s| s["id"] == "store-a")
        .unwrap_or_else(|| panic!("{stores:?}"));
    assert_eq!(s["online"], true, "{s}");
    assert!(s["last_sync_at_ms"].as_u64().is_some(), "{s}");
}

/// (b) The hub goes down (SIGKILL) while both stores keep chatting and a chat is resolved;
/// the hub comes back on the same data: every message is there exactly once, and the resolve.
#[tokio::test]
async fn a_hub_outage_loses_nothing_and_duplicates_nothing() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let mut b = open_store(&mut hub, "store-b").await;
    wait_connected(&a.edge, DEADLINE).await;
    wait_connected(&b.edge, DEADLINE).await;

    let (mut ca, conv_a) = customer_with_chat(&mut a, "Lin").await;
    let (mut cb, conv_b) = customer_with_chat(&mut b, "Sam").await;
    let mut sent_a = Vec::new();
    let mut sent_b = Vec::new();
    let body = "hello from A".to_string();
    sent_a.push((
        customer_says(&mut ca, &mut a.staff, &conv_a, &body).await,
        body,
    ));
    let body = "hello from B".to_string();
    sent_b.push((
        customer_says(&mut cb, &mut b.staff, &conv_b, &body).await,
        body,
    ));
    hub_holds_exactly(&hub, &conv_a, &sent_a).await;
    hub_holds_exactly(&hub, &conv_b, &sent_b).await;

    hub.kill();
    for store in [&a, &b] {
        eventually("the store notices the hub is gone", DEADLINE, async || {
            let h = hub_status(&store.edge).await;
            if h["connected"] == false {
                Ok(())
            } else {
                Err(h.to_string())
            }
        })
        .await;
    }

    // Both stores keep serving their customers while the hub is down.
    for i in 0..5 {
        let body = format!("A customer, offline {i}");
        sent_a.push((
            customer_says(&mut ca, &mut a.staff, &conv_a, &body).await,
            body,
        ));
        let body = format!("A staff, offline {i}");
        sent_a.push((
            staff_says(&mut a.staff, &mut ca, &conv_a, &body).await,
            body,
        ));
        let body = format!("B customer, offline {i}");
        sent_b.push((
            customer_says(&mut cb, &mut b.staff, &conv_b, &body).await,
            body,
        ));
        let body = format!("B staff, offline {i}");
        sent_b.push((
            staff_says(&mut b.staff, &mut cb, &conv_b, &body).await,
            body,
        ));
    }
    b.staff
        .action_ok(json!({"type":"resolve","request_id":"res-offline","conversation_id":conv_b}))
        .await;
    cb.recv_state(&conv_b, "resolved").await;
    // A second conversation started at A while the hub is down.
    let mut ca2 = Customer::connect(&a.edge, "Kim").await;
    let conv_a2 = ca2.start_conversation().await;
    ca2.recv_state(&conv_a2, "assigned").await;
    let body = "first contact while the hub is down".to_string();
    let sent_a2 = vec![(
        customer_says(&mut ca2, &mut a.staff, &conv_a2, &body).await,
        body,
    )];
    assert_eq!(hub_status(&a.edge).await["connected"], false);

    hub.restart().await;
    wait_connected(&a.edge, DEADLINE).await;
    wait_connected(&b.edge, DEADLINE).await;
    hub_holds_exactly(&hub, &conv_a, &sent_a).await;
    hub_holds_exactly(&hub, &conv_b, &sent_b).await;
    hub_holds_exactly(&hub, &conv_a2, &sent_a2).await;
    eventually(
        "the hub's copy of B's chat is resolved",
        DEADLINE,
        async || match hub.status_of(&conv_b) {
            Some(s) if s == "resolved" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(hub.status_of(&conv_a).as_deref(), Some("assigned"));
    assert_eq!(hub.conversation_count(), 3, "{:?}", hub.documents());
    let origins: BTreeMap<String, String> = hub.documents().into_iter().collect();
    assert_eq!(origins[&format!("conversation:{conv_a}")], "store-a");
    assert_eq!(origins[&format!("conversation:{conv_a2}")], "store-a");
    assert_eq!(origins[&format!("conversation:{conv_b}")], "store-b");

    // After the catch-up, live sync works again.
    let body = "back online".to_string();
    sent_a.push((
        customer_says(&mut ca, &mut a.staff, &conv_a, &body).await,
        body,
    ));
    hub_holds_exactly(&hub, &conv_a, &sent_a).await;
}

/// (c) A store enrolled in region X, pointed at region Y's hub, is refused with
/// `wrong_region`, keeps serving its customers, and Y stores none of its documents.
#[tokio::test]
async fn a_store_of_another_region_is_refused_and_keeps_serving() {
    let mut hub_x = Hub::start("eu-west").await;
    let mut hub_y = Hub::start("us-east").await;
    let mut a = open_store(&mut hub_x, "store-a").await;
    wait_connected(&a.edge, DEADLINE).await;
    let (mut c, conv) = customer_with_chat(&mut a, "Lin").await;
    let body = "enrolled in eu-west".to_string();
    let sent = vec![(
        customer_says(&mut c, &mut a.staff, &conv, &body).await,
        body,
    )];
    hub_holds_exactly(&hub_x, &conv, &sent).await;
    drop(c);

    // Y even knows a store of that id: only the region tells them apart.
    hub_y.register_store("store-a").await;
    // The same box (same data directory and credential), now configured with Y's URL.
    let y_url = hub_y.url();
    let opts = a.edge.options_mut().clone().with_hub_url(&y_url);
    *a.edge.options_mut() = opts;
    a.edge.restart().await;

    let h = wait_hub_error(&a.edge, "wrong_region").await;
    assert_eq!(h["connected"], false, "{h}");
    assert_eq!(h["url"], y_url, "{h}");

    // The store still serves: the old chat resumes, a new chat works both ways.
    let session = a.edge.http().login("staff1", "pw-staff1-12345").await;
    let mut staff = StaffConn::connect(&a.edge, &session, "staff again").await;
    let mut c2 = Customer::connect(&a.edge, "Ana").await;
    let conv2 = c2.start_conversation().await;
    c2.recv_state(&conv2, "assigned").await;
    customer_says(&mut c2, &mut staff, &conv2, "still open for business?").await;
    staff_says(&mut staff, &mut c2, &conv2, "yes").await;
    a.edge.http().assert_healthy().await;

    assert_eq!(hub_y.documents(), Vec::<(String, String)>::new());
    assert_eq!(hub_y.conversation_count(), 0);
    let stores = hub_y.stores().await;
    assert_eq!(stores.len(), 1, "{stores:?}");
    assert_eq!(stores[0]["enrolled"], false, "{stores:?}");
    assert_eq!(stores[0]["online"], false, "{stores:?}");
    let metrics = a.edge.http().metrics().await;
    assert!(
        metrics.contains("aisle_sync_errors_total{code=\"wrong_region\"}"),
        "{metrics}"
    );
}

/// (d) A customer continues at store B with a hand-off code from store A: B shows the whole
/// history; a message at B reaches A's customer device and A's history, and back.
#[tokio::test]
async fn a_conversation_continues_at_another_store_with_a_handoff_code() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let b = open_store(&mut hub, "store-b").await;
    wait_connected(&a.edge, DEADLINE).await;
    wait_connected(&b.edge, DEADLINE).await;

    let (mut ca, conv) = customer_with_chat(&mut a, "Lin").await;
    let mut history = Vec::new();
    let body = "I need a size 42".to_string();
    history.push((
        customer_says(&mut ca, &mut a.staff, &conv, &body).await,
        body,
    ));
    let body = "we have it at our other store".to_string();
    history.push((staff_says(&mut a.staff, &mut ca, &conv, &body).await, body));
    hub_holds_exactly(&hub, &conv, &history).await;

    ca.send(json!({"type":"handoff","conversation_id":conv}))
        .await;
    let h = ca
        .recv_reply("handoff", |v| v["conversation_id"] == conv.as_str())
        .await;
    assert_eq!(h["type"], "handoff", "{h}");
    let code = h.str_("code").to_string();

    // Store A registers the code at the hub before it answers (bounded wait); a redemption
    // is still retried, as the customer's page would on a 503.
    let mut attempts = 0;
    let redeemed = eventually("store B redeems the hand-off code", DEADLINE, async || {
        attempts += 1;
        let r = b.edge.http().redeem_handoff(&code).await;
        if r.status == 200 {
            Ok(r.body.clone())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;
    eprintln!("hand-off redeemed at B after {attempts} attempt(s)");
    assert_eq!(
        redeemed["customer_id"],
        ca.customer_id.as_str(),
        "{redeemed}"
    );
    assert_eq!(redeemed["conversation_id"], conv.as_str(), "{redeemed}");
    let token = redeemed.str_("resume_token").to_string();
    b.edge
        .http()
        .redeem_handoff(&code)
        .await
        .expect_error(409, "handoff_used");
    // Single use across the region: the issuing store refuses it too now.
    a.edge
        .http()
        .redeem_handoff(&code)
        .await
        .expect_error(409, "handoff_used");

    let mut cb = Customer::connect_with_token(&b.edge, &token, "Lin at B").await;
    assert_eq!(cb.customer_id, ca.customer_id, "{}", cb.welcome);
    let r = cb.resume_all(&conv, 0).await;
    let seen: Vec<(String, String)> = r
        .messages
        .iter()
        .map(|m| (m.str_("id").to_string(), m.str_("body").to_string()))
        .collect();
    assert_eq!(seen, history, "the history at B differs from A's");

    // B → A: the customer's phone still connected at A gets it, and A's history has it.
    let at_b = cb.send_msg(&conv, &cmid(), "I'm at store B now").await;
    let at_b_id = at_b.str_("message_id").to_string();
    let m = ca.recv_message(&conv).await;
    assert_eq!(
        m["id"],
        at_b_id.as_str(),
        "A's customer device got another message: {m}"
    );
    assert_eq!(m["body"], "I'm at store B now", "{m}");
    history.push((at_b_id.clone(), "I'm at store B now".into()));
    let in_a: Vec<String> = a
        .edge
        .http()
        .messages(&a.admin.token, &conv)
        .await
        .iter()
        .map(|m| m.str_("id").to_string())
        .collect();
    assert!(
        in_a.contains(&at_b_id),
        "A's history lacks B's message: {in_a:?}"
    );

    // A → B: the phone still connected at store A writes; the customer's device at B gets it.
    // (Store B's staff took the chat over when it was continued there, and that assignment
    // reached A: A's staff may no longer write into it.)
    let body = "typed on the phone still connected at A".to_string();
    let ack = ca.send_msg(&conv, &cmid(), &body).await;
    let from_a = ack.str_("message_id").to_string();
    let m = cb.recv_message(&conv).await;
    assert_eq!(
        m["id"],
        from_a.as_str(),
        "B's customer device got another message: {m}"
    );
    history.push((from_a.clone(), body));
    let in_b: Vec<String> = b
        .edge
        .http()
        .messages(&b.admin.token, &conv)
        .await
        .iter()
        .map(|m| m.str_("id").to_string())
        .collect();
    assert!(
        in_b.contains(&from_a),
        "B's history lacks A's message: {in_b:?}"
    );

    // A shows who holds the chat now: B's staff member, by name (from the document).
    let listed = a
        .edge
        .http()
        .list_conversations(&a.admin.token, "status=open")
        .await;
    let summary = listed
        .iter()
        .find(|c| c["id"] == conv.as_str())
        .unwrap_or_else(|| panic!("the conversation is missing at A: {listed:?}"));
    assert_eq!(summary["agent"]["name"], "Staff of store-b", "{summary}");

    hub_holds_exactly(&hub, &conv, &history).await;
    assert_eq!(hub.conversation_count(), 1, "{:?}", hub.documents());
}

/// (e) A revoked store is refused (`revoked`) and keeps serving; an enrollment token cannot
/// be used twice (`token_used`).
#[tokio::test]
async fn a_revoked_store_is_refused_and_a_used_token_cannot_enroll_again() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    wait_connected(&a.edge, DEADLINE).await;
    let (mut c, conv) = customer_with_chat(&mut a, "Lin").await;
    let body = "before the revocation".to_string();
    let sent = vec![(
        customer_says(&mut c, &mut a.staff, &conv, &body).await,
        body,
    )];
    hub_holds_exactly(&hub, &conv, &sent).await;

    hub.revoke("store-a").await;
    let h = wait_hub_error(&a.edge, "revoked").await;
    assert_eq!(h["connected"], false, "{h}");
    // The store keeps serving its customers.
    let after = customer_says(&mut c, &mut a.staff, &conv, "after the revocation").await;
    staff_says(&mut a.staff, &mut c, &conv, "still here").await;
    a.edge.http().assert_healthy().await;
    assert_eq!(hub_status(&a.edge).await["error"]["code"], "revoked");
    assert!(
        !hub.messages_of(&conv).iter().any(|(id, _)| *id == after),
        "a revoked store's message reached the hub"
    );
    let stores = hub.stores().await;
    let s = stores.iter().find(|s| s["id"] == "store-a").unwrap();
    assert_eq!(s["revoked"], true, "{s}");
    assert_eq!(s["online"], false, "{s}");

    // A token enrolls one box once.
    let token = hub.register_store("store-b").await;
    let b =
        Edge::start_with(EdgeOptions::default().enrolled_at(&hub.url(), "store-b", &token)).await;
    wait_connected(&b, DEADLINE).await;
    let copy =
        Edge::start_with(EdgeOptions::default().enrolled_at(&hub.url(), "store-b", &token)).await;
    let h = wait_hub_error(&copy, "token_used").await;
    assert_eq!(h["enrolled"], false, "{h}");
    assert_eq!(h["connected"], false, "{h}");
    // The refused box still serves.
    let mut c2 = Customer::connect(&copy, "Ana").await;
    let conv2 = c2.start_conversation().await;
    let ack = c2.send_msg(&conv2, &cmid(), "anyone?").await;
    assert_eq!(ack["type"], "ack");
    assert!(hub.messages_of(&conv2).is_empty());
    // The first box is unaffected.
    assert_eq!(hub_status(&b).await["connected"], true);
}

/// (d′) A continued conversation survives a hub outage: messages written at B while the hub is
/// down reach A's customer device once the hub is back, and A's at B.
#[tokio::test]
async fn a_continued_conversation_catches_up_after_a_hub_outage() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    let b = open_store(&mut hub, "store-b").await;
    wait_connected(&a.edge, DEADLINE).await;
    wait_connected(&b.edge, DEADLINE).await;
    let (mut ca, conv) = customer_with_chat(&mut a, "Lin").await;
    let body = "hello".to_string();
    let mut history = vec![(
        customer_says(&mut ca, &mut a.staff, &conv, &body).await,
        body,
    )];
    hub_holds_exactly(&hub, &conv, &history).await;
    ca.send(json!({"type":"handoff","conversation_id":conv}))
        .await;
    let h = ca
        .recv_reply("handoff", |v| v["conversation_id"] == conv.as_str())
        .await;
    let code = h.str_("code").to_string();
    let redeemed = eventually("store B redeems the hand-off code", DEADLINE, async || {
        let r = b.edge.http().redeem_handoff(&code).await;
        if r.status == 200 {
            Ok(r.body.clone())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;
    let mut cb =
        Customer::connect_with_token(&b.edge, redeemed.str_("resume_token"), "Lin at B").await;
    cb.resume_all(&conv, 0).await;

    hub.kill();
    for store in [&a, &b] {
        eventually("the store notices the hub is gone", DEADLINE, async || {
            let h = hub_status(&store.edge).await;
            if h["connected"] == false {
                Ok(())
            } else {
                Err(h.to_string())
            }
        })
        .await;
    }
    let at_b = cb.send_msg(&conv, &cmid(), "written at B, hub down").await;
    history.push((
        at_b.str_("message_id").to_string(),
        "written at B, hub down".into(),
    ));
    let at_a = ca.send_msg(&conv, &cmid(), "written at A, hub down").await;
    history.push((
        at_a.str_("message_id").to_string(),
        "written at A, hub down".into(),
    ));

    hub.restart().await;
    let m = ca.recv_message(&conv).await;
    assert_eq!(m["id"], at_b["message_id"], "{m}");
    let m = cb.recv_message(&conv).await;
    assert_eq!(m["id"], at_a["message_id"], "{m}");
    hub_holds_exactly(&hub, &conv, &history).await;
}

/// HQ's canned replies reach a connected store at once and an offline store when it comes
/// back; the store shows them read-only.
#[tokio::test]
async fn hq_canned_replies_reach_every_store_and_are_read_only_there() {
    let mut hub = Hub::start("eu-west").await;
    let a = open_store(&mut hub, "store-a").await;
    let mut b = open_store(&mut hub, "store-b").await;
    wait_connected(&a.edge, DEADLINE).await;
    wait_connected(&b.edge, DEADLINE).await;
    let token = hub.admin_token().await;

    b.edge.kill();
    let put = hub
        .http()
        .request(
            "PUT",
            "/api/canned-replies/hours",
            Some(&token),
            Some(&json!({"shortcut":"/hours","title":"营业时间","body":"我们 9 点开门 · We open at 9."})),
        )
        .await;
    put.expect(200);

    let replies_at = async |edge: &Edge, admin: &str| -> Vec<Value> {
        let r = edge.http().get("/api/canned-replies", Some(admin)).await;
        r.expect(200)["canned_replies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eventually("store A has HQ's reply", DEADLINE, async || {
        let replies = replies_at(&a.edge, &a.admin.token).await;
        match replies.iter().find(|r| r["source"] == "hq") {
            Some(r) if r["body"] == "我们 9 点开门 · We open at 9." => Ok(()),
            _ => Err(format!("{replies:?}")),
        }
    })
    .await;
    // Read only at the store.
    a.edge
        .http()
        .request(
            "DELETE",
            "/api/canned-replies/hq:hours",
            Some(&a.admin.token),
            None,
        )
        .await
        .expect_error(403, "forbidden");

    // Store B was offline: it gets the reply when it reconnects.
    b.edge.restart().await;
    let admin_b = b.edge.http().login_admin().await;
    eventually(
        "store B has HQ's reply after reconnecting",
        DEADLINE,
        async || {
            let replies = replies_at(&b.edge, &admin_b.token).await;
            if replies.iter().any(|r| r["id"] == "hq:hours") {
                Ok(())
            } else {
                Err(format!("{replies:?}"))
            }
        },
    )
    .await;

    // Removed at HQ: gone at the stores.
    hub.http()
        .request("DELETE", "/api/canned-replies/hours", Some(&token), None)
        .await
        .expect(200);
    eventually("store A no longer has the reply", DEADLINE, async || {
        let replies = replies_at(&a.edge, &a.admin.token).await;
        if replies.iter().all(|r| r["source"] != "hq") {
            Ok(())
        } else {
            Err(format!("{replies:?}"))
        }
    })
    .await;
}

/// A long conversation is compacted at the hub: after many live rounds its stored chunks are
/// far fewer than the rounds, and the stored copy still holds every message.
#[tokio::test]
async fn a_long_conversation_is_compacted_at_the_hub_and_loses_nothing() {
    let mut hub = Hub::start("eu-west").await;
    let mut a = open_store(&mut hub, "store-a").await;
    wait_connected(&a.edge, DEADLINE).await;
    let (mut c, conv) = customer_with_chat(&mut a, "Lin").await;
    let mut sent = Vec::new();
    for i in 0..150 {
        let body = format!("message {i}");
        let id = customer_says(&mut c, &mut a.staff, &conv, &body).await;
        sent.push((id.clone(), body));
        // One round per message: wait until the hub holds it before the next.
        eventually("the hub holds the message", DEADLINE, async || {
            if hub.messages_of(&conv).iter().any(|(m, _)| *m == id) {
                Ok(())
            } else {
                Err(format!(
                    "{} messages at the hub",
                    hub.messages_of(&conv).len()
                ))
            }
        })
        .await;
    }
    hub_holds_exactly(&hub, &conv, &sent).await;
    let chunks = hub.chunk_count(&conv);
    assert!(
        chunks < 100,
        "150 rounds left {chunks} chunks at the hub: not compacted"
    );
}

/// (f) The enrollment token is single-use, so it does not stay on the box: once the store
/// enrolled, `hub.enroll_token` is gone from the config file it came from, and everything
/// else (comments included) is kept. `/healthz` shows the region, `enrolled` and `syncing`.
#[tokio::test]
async fn the_used_enrollment_token_is_removed_from_the_config_file() {
    let mut hub = Hub::start("eu-west").await;
    let token = hub.register_store("store-f").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aisle.toml");
    let text = format!(
        "# written by aisle-image provision\nstore_id = \"store-f\"\nregion = \"eu-west\"\n\n\
         [hub]\n# the region's hub\nurl = \"{}\"\nenroll_token = \"{token}\"\n\n\
         [limits]\nsync_retry_min_ms = 50\nsync_retry_max_ms = 500\n",
        hub.url()
    );
    std::fs::write(&file, &text).unwrap();
    let edge = Edge::start_with(EdgeOptions {
        args: vec!["--config".into(), file.display().to_string()],
        ..EdgeOptions::default()
    })
    .await;
    wait_connected(&edge, DEADLINE).await;
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        text.replace(&format!("enroll_token = \"{token}\"\n"), ""),
        "only the token line goes"
    );
    let h = eventually("healthz says syncing", DEADLINE, async || {
        let h = edge.http().healthz().await.expect(200).clone();
        if h["syncing"] == true {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert_eq!(h["region"], "eu-west", "{h}");
    assert_eq!(h["enrolled"], true, "{h}");
    assert_eq!(h["hub"]["connected"], true, "existing keys kept: {h}");
}

/// (g) A box provisioned for another region refuses the hub before spending its token
/// (`wrong_region` in `/healthz`, the configured region shown); the token still enrolls the
/// right box.
#[tokio::test]
async fn a_box_of_another_region_does_not_spend_its_token() {
    let mut hub = Hub::start("eu-west").await;
    let token = hub.register_store("store-g").await;
    let wrong = Edge::start_with(
        EdgeOptions::default()
            .enrolled_at(&hub.url(), "store-g", &token)
            .env("AISLE_REGION", "us-east"),
    )
    .await;
    let h = wait_hub_error(&wrong, "wrong_region").await;
    assert!(
        h["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("us-east") && m.contains("eu-west")),
        "{h}"
    );
    let health = wrong.http().healthz().await.expect(200).clone();
    assert_eq!(health["region"], "us-east", "{health}");
    assert_eq!(health["enrolled"], false, "{health}");
    drop(wrong);
    let right = Edge::start_with(
        EdgeOptions::default()
            .enrolled_at(&hub.url(), "store-g", &token)
            .env("AISLE_REGION", "eu-west"),
    )
    .await;
    wait_connected(&right, DEADLINE).await;
}
