//! Session actions staff use beside claim/transfer/resolve (protocol.md §5): snooze and its
//! three ways of ending (the timer, the customer writing, `wake` by hand), and release back
//! to the queue.

use aisle_tests::*;

/// A server with `n` staff accounts, the first one online, and a customer whose new chat
/// was routed to that first staff member (the initial `state` is consumed).
async fn setup(n: usize) -> (Edge, Vec<StaffSession>, StaffConn, Customer, String) {
    let (edge, _admin, staff) = edge_with_staff(n, 8).await;
    let s = StaffConn::connect(&edge, &staff[0], "staff1").await;
    let mut c = Customer::connect(&edge, "Sleepy").await;
    let conv = c.start_conversation().await;
    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");
    (edge, staff, s, c, conv)
}

fn snooze(conv: &str, rid: &str, until_ms: u64) -> Value {
    json!({"type":"snooze","request_id":rid,"conversation_id":conv,"until_ms":until_ms})
}

/// Snoozed until now + 1.5 s: everyone sees `snoozed` with the wake-up time, and the server
/// wakes the chat by itself (not before the time) back to the same staff member.
#[tokio::test]
async fn snoozed_chat_wakes_by_itself() {
    let (edge, staff, mut s, mut c, conv) = setup(1).await;
    c.send_msg(&conv, &cmid(), "call me back later").await;
    s.recv_message(&conv).await;

    let until = now_ms() + 1500;
    s.action_ok(snooze(&conv, "z1", until)).await;
    for ws in [&mut c.ws, &mut s.ws] {
        let st = ws.recv_state(&conv, "snoozed").await;
        assert_eq!(st["snoozed_until_ms"], until, "{st}");
        assert_eq!(st["event"]["kind"], "snooze", "{st}");
        assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");
    }
    let listed = edge
        .http()
        .list_conversations(&staff[0].token, "status=snoozed")
        .await;
    assert!(
        listed.iter().any(|x| x["id"] == conv.as_str()),
        "GET /api/conversations?status=snoozed does not list the snoozed chat: {listed:?}"
    );

    // The server wakes it (RECV_TIMEOUT = 10 s is only a hang guard).
    let st = c.recv_state(&conv, "assigned").await;
    let woke_at = now_ms();
    assert!(
        woke_at >= until,
        "woke {} ms before snoozed_until_ms: {st}",
        until - woke_at
    );
    assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");
    assert_eq!(st["snoozed_until_ms"], Value::Null, "{st}");
    assert_eq!(st["event"]["kind"], "wake", "{st}");
    let st = s.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");

    // Awake: messages flow as before.
    let ack = c.send_msg(&conv, &cmid(), "I'm back").await;
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
    let detail = edge.http().conversation(&staff[0].token, &conv).await;
    assert_eq!(detail["state"]["status"], "assigned", "{detail}");
}

/// A customer writing into a chat snoozed for an hour wakes it at once: the message is
/// stored and delivered, and the state goes back to assigned.
#[tokio::test]
async fn customer_message_wakes_a_snoozed_chat() {
    let (edge, staff, mut s, mut c, conv) = setup(1).await;
    let until = now_ms() + 3_600_000;
    s.action_ok(snooze(&conv, "z1", until)).await;
    c.recv_state(&conv, "snoozed").await;
    s.recv_state(&conv, "snoozed").await;

    let ack = c.send_msg(&conv, &cmid(), "are you still there?").await;
    // An hour-long snooze ending within the hang guard can only be the customer's doing.
    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");
    assert_eq!(st["snoozed_until_ms"], Value::Null, "{st}");
    s.recv_state(&conv, "assigned").await;
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
    let detail = edge.http().conversation(&staff[0].token, &conv).await;
    assert_eq!(detail["state"]["status"], "assigned", "{detail}");
}

/// `wake` by hand ends a snooze early; waking a chat that is not snoozed is illegal.
#[tokio::test]
async fn staff_wake_ends_a_snooze_early() {
    let (edge, staff, mut s, mut c, conv) = setup(1).await;
    let until = now_ms() + 3_600_000;
    s.action_ok(snooze(&conv, "z1", until)).await;
    c.recv_state(&conv, "snoozed").await;

    s.action_ok(json!({"type":"wake","request_id":"w1","conversation_id":conv}))
        .await;
    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], staff[0].id.as_str(), "{st}");
    assert_eq!(st["event"]["kind"], "wake", "{st}");
    assert_eq!(st["event"]["actor"]["id"], staff[0].id.as_str(), "{st}");
    let detail = edge.http().conversation(&staff[0].token, &conv).await;
    assert_eq!(detail["state"]["status"], "assigned", "{detail}");
    assert_eq!(detail["state"]["snoozed_until_ms"], Value::Null, "{detail}");

    let again = s
        .action(json!({"type":"wake","request_id":"w2","conversation_id":conv}))
        .await;
    assert_eq!(again["type"], "error", "{again}");
    assert_eq!(again["code"], "illegal_transition", "{again}");
    assert_eq!(again["request_id"], "w2", "{again}");

    // A customer cannot snooze.
    let e = c.action(snooze(&conv, "z-cust", until)).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "forbidden", "{e}");
}

/// A released chat goes back to the queue and is routed to another online staff member,
/// never back to the one who released it, even when the releaser is now the least loaded.
#[tokio::test]
async fn released_chat_goes_to_a_colleague_not_back_to_the_releaser() {
    let (edge, _admin, staff) = edge_with_staff(2, 8).await;
    // B comes online first and gets a chat: B holds one.
    let mut b = StaffConn::connect(&edge, &staff[1], "staff B").await;
    let mut other = Customer::connect(&edge, "Other").await;
    let other_conv = other.start_conversation().await;
    let st = other.recv_state(&other_conv, "assigned").await;
    assert_eq!(st["agent"]["id"], b.id(), "{st}");

    // A comes online; the next chat goes to A (least loaded): A and B hold one each.
    let mut a = StaffConn::connect(&edge, &staff[0], "staff A").await;
    let mut c = Customer::connect(&edge, "Released").await;
    let conv = c.start_conversation().await;
    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], a.id(), "A was the least loaded: {st}");
    c.send_msg(&conv, &cmid(), "I need the manager").await;
    a.recv_message(&conv).await;

    // A releases it. A now holds none, B one: least-loaded routing alone would pick A.
    a.action_ok(json!({"type":"release","request_id":"rel1","conversation_id":conv}))
        .await;
    let st = a
        .recv_where("state of the released chat", |v| {
            v["type"] == "state"
                && v["conversation_id"] == conv.as_str()
                && v["event"]["kind"] == "release"
        })
        .await;
    assert_eq!(
        st["status"], "queued",
        "release puts the chat back in the queue: {st}"
    );

    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(
        st["agent"]["id"],
        b.id(),
        "{}",
        c.report("the released chat must go to the colleague, not back to the releaser")
    );
    let st = b.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], b.id(), "{st}");

    // The customer's next message goes to B, not to A; A may no longer write into it.
    let ack = c.send_msg(&conv, &cmid(), "hello?").await;
    let m = b.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
    a.expect_none(500, "a message of a chat A released", |v| {
        v["type"] == "message" && v["conversation_id"] == conv.as_str()
    })
    .await;
    let denied = a.send_and_wait(&conv, &cmid(), "me again").await;
    assert_eq!(denied["type"], "error", "A wrote into B's chat: {denied}");
    assert_eq!(denied["code"], "forbidden", "{denied}");

    let detail = edge.http().conversation(&staff[0].token, &conv).await;
    assert_eq!(detail["state"]["agent"]["id"], b.id(), "{detail}");
    let listed = edge.http().list_staff(&staff[0].token).await;
    let entry = |id: &str| listed.iter().find(|e| e["id"] == id).cloned();
    assert_eq!(entry(a.id()).unwrap()["open_chats"], 0, "{listed:?}");
    assert_eq!(entry(b.id()).unwrap()["open_chats"], 2, "{listed:?}");
}
