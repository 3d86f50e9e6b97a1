//! Routing of chats to staff: least-loaded assignment, returning customers, queueing when
//! nobody is online, and manual claims racing each other.

use std::collections::HashMap;

use aisle_tests::*;

/// New chats go to the least-loaded online staff member: four chats over two staff end up
/// two each, and each chat's messages reach the staff member it went to.
#[tokio::test]
async fn chats_are_spread_over_the_least_loaded_staff() {
    let (edge, _admin, staff) = edge_with_staff(2, 8).await;
    let mut conns = [
        StaffConn::connect(&edge, &staff[0], "staff1").await,
        StaffConn::connect(&edge, &staff[1], "staff2").await,
    ];

    let mut agents = Vec::new();
    let mut customers = Vec::new();
    for i in 0..4 {
        let mut c = Customer::connect(&edge, &format!("customer {i}")).await;
        let conv = c.start_conversation().await;
        let st = c.recv_state(&conv, "assigned").await;
        agents.push(st.str_("/agent/id").to_string());
        customers.push((c, conv));
    }
    assert_ne!(
        agents[1], agents[0],
        "the second chat must go to the idle colleague: {agents:?}"
    );
    assert_ne!(
        agents[3], agents[2],
        "the fourth chat must even out the load: {agents:?}"
    );
    let mut load: HashMap<&str, usize> = HashMap::new();
    for a in &agents {
        *load.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(load.get(staff[0].id.as_str()), Some(&2), "{agents:?}");
    assert_eq!(load.get(staff[1].id.as_str()), Some(&2), "{agents:?}");

    // Each customer's message reaches the staff member the chat went to.
    for ((c, conv), agent) in customers.iter_mut().zip(&agents) {
        let ack = c.send_msg(conv, &cmid(), "hello").await;
        let s = conns.iter_mut().find(|s| s.id() == agent).unwrap();
        let m = s.recv_message(conv).await;
        assert_eq!(m["id"], ack["message_id"], "{m}");
    }

    let listed = edge.http().list_staff(&staff[0].token).await;
    for s in &staff {
        let entry = listed
            .iter()
            .find(|e| e["id"] == s.id.as_str())
            .unwrap_or_else(|| panic!("{} missing from GET /api/staff: {listed:?}", s.id));
        assert_eq!(entry["online"], true, "{entry}");
        assert_eq!(entry["open_chats"], 2, "{entry}");
    }
}

/// A returning customer goes back to the staff member who served them, even when a
/// colleague has fewer open chats.
#[tokio::test]
async fn returning_customer_goes_back_to_the_same_staff_member() {
    let (edge, _admin, staff) = edge_with_staff(2, 8).await;
    let mut s1 = StaffConn::connect(&edge, &staff[0], "staff1").await;
    let mut s2 = StaffConn::connect(&edge, &staff[1], "staff2").await;

    let mut cust = Customer::connect(&edge, "Returning").await;
    let token = cust.resume_token.clone();
    let conv1 = cust.start_conversation().await;
    let st = cust.recv_state(&conv1, "assigned").await;
    let served_by = st.str_("/agent/id").to_string();
    let (x, y) = if served_by == s1.id() {
        (&mut s1, &mut s2)
    } else {
        (&mut s2, &mut s1)
    };
    cust.send_msg(&conv1, &cmid(), "do you repair bikes?").await;
    x.recv_message(&conv1).await;
    x.send_msg(&conv1, &cmid(), "yes, bring it in").await;
    cust.recv_message(&conv1).await;
    x.action_ok(json!({"type":"resolve","request_id":"r1","conversation_id":conv1}))
        .await;
    cust.recv_state(&conv1, "resolved").await;
    cust.ws.close().await;

    // Make X the busier one: another chat ends up with X (transferred if routed to Y).
    let mut other = Customer::connect(&edge, "Other").await;
    let conv2 = other.start_conversation().await;
    let st = other.recv_state(&conv2, "assigned").await;
    if st["agent"]["id"] != x.id() {
        let to = x.id().to_string();
        y.action_ok(json!({"type":"transfer","request_id":"t1","conversation_id":conv2,"to":to}))
            .await;
        other.recv_state(&conv2, "transferred").await;
    }
    let listed = edge.http().list_staff(&staff[0].token).await;
    let open = |id: &str| {
        listed.iter().find(|e| e["id"] == id).unwrap()["open_chats"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((open(x.id()), open(y.id())), (1, 0), "{listed:?}");

    // The customer comes back later and starts a new chat: it goes to X, not to idle Y.
    let mut back = Customer::connect_with_token(&edge, &token, "Returning again").await;
    let started = back.start("again").await;
    assert_eq!(
        started["created"], true,
        "the old chat is resolved: {started}"
    );
    let conv3 = started.str_("conversation_id").to_string();
    assert_ne!(conv3, conv1);
    let st = back.recv_state(&conv3, "assigned").await;
    assert_eq!(
        st["agent"]["id"],
        x.id(),
        "a returning customer goes back to who served them: {st}"
    );
    let ack = back.send_msg(&conv3, &cmid(), "it's me again").await;
    let m = x.recv_message(&conv3).await;
    assert_eq!(m["id"], ack["message_id"]);
}

/// With nobody online a chat stays queued; the first staff member to come online gets it.
#[tokio::test]
async fn queued_chat_is_assigned_when_staff_come_online() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut cust = Customer::connect(&edge, "Early bird").await;
    let conv = cust.start_conversation().await;
    let st = cust.recv_state(&conv, "queued").await;
    assert!(st["agent"].is_null(), "{st}");
    let ack = cust.send_msg(&conv, &cmid(), "anyone there?").await;
    assert_eq!(ack["seq"], 1);

    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let st = cust.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], s.id(), "{st}");
    // The queued message is in the history the staff member can read.
    let res = s.resume(&conv, 0).await;
    assert_eq!(res.seqs(), vec![1]);
    let r = s.send_msg(&conv, &cmid(), "good morning!").await;
    let m = cust.recv_message(&conv).await;
    assert_eq!(m["id"], r["message_id"]);
}

/// Two staff claim the same queued chat at the same moment: exactly one `ok`, the other
/// `already_claimed`, and everyone sees the state naming the winner. Capacity 0 keeps
/// automatic routing away so the chat stays queued for the claim.
#[tokio::test]
async fn two_concurrent_claims_have_exactly_one_winner() {
    let (edge, admin, staff) = edge_with_staff(2, 8).await;
    for s in &staff {
        let updated = edge
            .http()
            .patch_staff(&admin, &s.id, &json!({"capacity":0}))
            .await;
        assert_eq!(updated["capacity"], 0, "{updated}");
    }
    let mut a = StaffConn::connect(&edge, &staff[0], "staff A").await;
    let mut b = StaffConn::connect(&edge, &staff[1], "staff B").await;

    let mut cust = Customer::connect(&edge, "Queued").await;
    let conv = cust.start_conversation().await;
    cust.recv_state(&conv, "queued").await;
    // A queued chat is offered to every online staff member.
    a.recv_state(&conv, "queued").await;
    b.recv_state(&conv, "queued").await;

    let claim_a = json!({"type":"claim","request_id":"claim-a","conversation_id":conv});
    let claim_b = json!({"type":"claim","request_id":"claim-b","conversation_id":conv});
    tokio::join!(a.send(claim_a), b.send(claim_b));
    let (ra, rb) = tokio::join!(
        a.recv_reply("ok", |v| v["request_id"] == "claim-a"),
        b.recv_reply("ok", |v| v["request_id"] == "claim-b"),
    );
    let oks = [&ra, &rb].iter().filter(|r| r["type"] == "ok").count();
    assert_eq!(oks, 1, "exactly one claim wins: A got {ra}, B got {rb}");
    let (winner, loser_reply) = if ra["type"] == "ok" {
        (a.id().to_string(), &rb)
    } else {
        (b.id().to_string(), &ra)
    };
    assert_eq!(loser_reply["type"], "error", "{loser_reply}");
    assert_eq!(loser_reply["code"], "already_claimed", "{loser_reply}");
    assert_eq!(
        loser_reply["conversation_id"],
        conv.as_str(),
        "{loser_reply}"
    );

    let (winner_ws, loser_ws) = if ra["type"] == "ok" {
        (&mut a.ws, &mut b.ws)
    } else {
        (&mut b.ws, &mut a.ws)
    };
    let detail = edge.http().conversation(&admin.token, &conv).await;
    assert_eq!(detail["state"]["agent"]["id"], winner.as_str(), "{detail}");
    // Everyone concerned sees the state naming the winner: the winner, the customer and
    // (protocol.md §5) the loser too.
    for ws in [winner_ws, &mut cust.ws, loser_ws] {
        let st = ws.recv_state(&conv, "assigned").await;
        assert_eq!(st["agent"]["id"], winner.as_str(), "{st}");
    }
}
