//! A region on PostgreSQL with two hub replicas behind load balancers: two real `aisle-hub`
//! processes on one database, two real stores, each store's uplink preferring another replica.
//! What a user would notice: a conversation continued from one store at the other works both
//! ways although the stores sit on different replicas, HQ finds every message on either
//! replica, and when a replica dies its store carries on through the other with nothing lost
//! and nothing doubled.
//!
//! Runs only when the hubs are on PostgreSQL (`HUB_TEST_POSTGRES_URL`, set by ci/test);
//! otherwise it says so and passes.

use std::collections::BTreeMap;
use std::time::Duration;

use aisle_tests::balancer::Balancer;
use aisle_tests::*;

/// Generous bound for anything that should take well under a second on an idle machine.
const DEADLINE: Duration = Duration::from_secs(15);

async fn staffed(edge: &Edge, store_id: &str) -> (StaffSession, StaffConn) {
    let admin = edge.http().login_admin().await;
    let session = edge
        .http()
        .create_and_login_staff(&admin, "staff1", &format!("Staff of {store_id}"), 8)
        .await;
    let staff = StaffConn::connect(edge, &session, &format!("staff@{store_id}")).await;
    (admin, staff)
}

/// The store's hub link as its `/healthz` shows it, once connected.
async fn connected_stores(hub: &Hub) -> f64 {
    metric_value(&hub.http().metrics().await, "aisle_hub_connected_stores")
}

/// Waits until the database holds exactly `expected` (message id → body) in `conv`'s document,
/// each once.
async fn hub_holds_exactly(hub: &Hub, conv: &str, expected: &BTreeMap<String, String>) {
    eventually(
        &format!(
            "the region's database holds exactly the {} messages of {conv}",
            expected.len()
        ),
        DEADLINE,
        async || {
            let records = hub.message_records(conv);
            let got: BTreeMap<String, String> = records
                .iter()
                .map(|m| (m.id.to_string(), m.body.clone()))
                .collect();
            if got == *expected && records.len() == expected.len() {
                Ok(())
            } else {
                Err(format!("{} records: {got:?}", records.len()))
            }
        },
    )
    .await;
}

/// HQ's search on `hub` finds message `id` for `q`.
async fn hq_finds(hub: &mut Hub, q: &str, id: &str) {
    let token = hub.admin_token().await;
    let path = format!("/api/search?q={}", q.replace(' ', "%20"));
    eventually(
        &format!("HQ search for {q:?} on {} finds {id}", hub.url()),
        DEADLINE,
        async || {
            let r = hub.http().get(&path, Some(&token)).await;
            if r.status != 200 {
                return Err(format!("{} {}", r.status, r.text));
            }
            let results = r.body["results"].clone();
            if results
                .as_array()
                .is_some_and(|hits| hits.iter().any(|h| h["message_id"] == id))
            {
                Ok(())
            } else {
                Err(results.to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn two_replicas_serve_one_region_and_a_dead_one_loses_nothing() {
    if !Hub::on_postgres() {
        eprintln!("skipped: hub replicas need PostgreSQL (set HUB_TEST_POSTGRES_URL)");
        return;
    }
    let mut r1 = Hub::start("eu-west").await;
    let mut r2 = r1.start_replica().await;
    // Store A's balancer prefers replica 1, store B's replica 2; each falls back to the other.
    let lb_a = Balancer::start(vec![r1.addr(), r2.addr()]).await.unwrap();
    let lb_b = Balancer::start(vec![r2.addr(), r1.addr()]).await.unwrap();
    // Registered at either replica: the accounts and stores are the database's.
    let token_a = r1.register_store("store-a").await;
    let token_b = r2.register_store("store-b").await;
    let a = Edge::start_with(EdgeOptions::default().enrolled_at(&lb_a.url(), "store-a", &token_a))
        .await;
    let b = Edge::start_with(EdgeOptions::default().enrolled_at(&lb_b.url(), "store-b", &token_b))
        .await;
    let hub_a = wait_connected(&a, DEADLINE).await;
    let hub_b = wait_connected(&b, DEADLINE).await;
    assert_eq!(
        hub_a["hub_id"], hub_b["hub_id"],
        "both replicas are one hub to the stores"
    );
    assert_eq!(connected_stores(&r1).await, 1.0, "store A is on replica 1");
    assert_eq!(connected_stores(&r2).await, 1.0, "store B is on replica 2");

    let (a_admin, mut a_staff) = staffed(&a, "store-a").await;
    let (b_admin, _b_staff) = staffed(&b, "store-b").await;
    let mut history = BTreeMap::new();

    // A customer chats at store A (replica 1).
    let mut ca = Customer::connect(&a, "Lin").await;
    let conv = ca.start_conversation().await;
    ca.recv_state(&conv, "assigned").await;
    let body = "do you have the 蓝色 jacket in size 42".to_string();
    let ack = ca.send_msg(&conv, &cmid(), &body).await;
    a_staff.recv_message(&conv).await;
    let first = ack.str_("message_id").to_string();
    history.insert(first.clone(), body);
    hub_holds_exactly(&r1, &conv, &history).await;

    // The customer continues at store B (replica 2) with a hand-off code registered through
    // replica 1: the code, the share and the document are the database's.
    ca.send(json!({"type":"handoff","conversation_id":conv}))
        .await;
    let h = ca
        .recv_reply("handoff", |v| v["conversation_id"] == conv.as_str())
        .await;
    assert_eq!(h["type"], "handoff", "{h}");
    let code = h.str_("code").to_string();
    let redeemed = eventually("store B redeems the hand-off code", DEADLINE, async || {
        let r = b.http().redeem_handoff(&code).await;
        if r.status == 200 {
            Ok(r.body.clone())
        } else {
            Err(format!("{} {}", r.status, r.text))
        }
    })
    .await;
    let mut cb = Customer::connect_with_token(&b, redeemed.str_("resume_token"), "Lin at B").await;
    let seen = cb.resume_all(&conv, 0).await;
    assert_eq!(seen.messages.len(), 1, "B has A's history");

    // B → A: stored by replica 2, pushed to store A by replica 1.
    let body = "I'm at store B now".to_string();
    let ack = cb.send_msg(&conv, &cmid(), &body).await;
    let from_b = ack.str_("message_id").to_string();
    let m = ca.recv_message(&conv).await;
    assert_eq!(m["id"], from_b.as_str(), "A's customer device got {m}");
    history.insert(from_b.clone(), body);

    // A → B: stored by replica 1, pushed to store B by replica 2.
    let body = "typed on the phone still at store A".to_string();
    let ack = ca.send_msg(&conv, &cmid(), &body).await;
    let from_a = ack.str_("message_id").to_string();
    let m = cb.recv_message(&conv).await;
    assert_eq!(m["id"], from_a.as_str(), "B's customer device got {m}");
    history.insert(from_a.clone(), body);
    hub_holds_exactly(&r2, &conv, &history).await;

    // An HQ session opened at one replica is good at the other (the balancer may send the
    // dashboard's next request anywhere).
    let token = r1.admin_token().await;
    r2.http()
        .get("/api/conversations", Some(&token))
        .await
        .expect(200);
    // HQ finds messages of both stores on either replica (Chinese included).
    for hub in [&mut r1, &mut r2] {
        hq_finds(hub, "蓝色 jacket", &first).await;
        hq_finds(hub, "store B now", &from_b).await;
        hq_finds(hub, "still at store A", &from_a).await;
    }

    // Replica 1 dies. Store A keeps serving, reconnects through its balancer to replica 2,
    // and what it took meanwhile arrives, once.
    r1.kill();
    let mut during = Vec::new();
    for i in 0..5 {
        let body = format!("sent at A while replica 1 is down #{i}");
        let ack = ca.send_msg(&conv, &cmid(), &body).await;
        let id = ack.str_("message_id").to_string();
        during.push(id.clone());
        history.insert(id, body);
    }
    eventually(
        "store A is connected again, to replica 2",
        DEADLINE,
        async || match connected_stores(&r2).await {
            2.0 => Ok(()),
            n => Err(format!("replica 2 has {n} stores connected")),
        },
    )
    .await;
    hub_holds_exactly(&r2, &conv, &history).await;
    // Store B, on replica 2 all along, got them too; and both stores' histories agree.
    for id in &during {
        let m = cb.recv_message(&conv).await;
        assert_eq!(m["id"], id.as_str(), "B's customer device got {m}");
    }
    let ids = |messages: Vec<Value>| -> Vec<String> {
        let mut ids: Vec<String> = messages.iter().map(|m| m.str_("id").to_string()).collect();
        ids.sort();
        ids
    };
    let want: Vec<String> = history.keys().cloned().collect();
    eventually("both stores hold the whole history", DEADLINE, async || {
        let at_a = ids(a.http().messages(&a_admin.token, &conv).await);
        let at_b = ids(b.http().messages(&b_admin.token, &conv).await);
        if at_a == want && at_b == want {
            Ok(())
        } else {
            Err(format!("A {at_a:?}, B {at_b:?}"))
        }
    })
    .await;
    r2.http().assert_healthy().await;
}
