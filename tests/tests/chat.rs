//! Live chat between a customer and store staff: delivery, replies, a staff member's second
//! tablet, transfer to a colleague, resolve and reopen.

use aisle_tests::*;

/// A customer's message is acked (stored) and delivered to the staff member the chat was
/// routed to; the staff reply reaches the customer; nobody gets a copy of their own message.
#[tokio::test]
async fn customer_message_reaches_assigned_staff_and_reply_reaches_customer() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut wang = StaffConn::connect(&edge, &staff[0], "staff1").await;

    let mut lin = Customer::connect(&edge, "Lin").await;
    assert!(is_ulid(&lin.customer_id), "customer_id: {}", lin.welcome);
    assert_eq!(
        lin.welcome["conversations"],
        json!([]),
        "first visit has no conversations"
    );

    let started = lin.start("r1").await;
    assert_eq!(started["created"], true, "{started}");
    let conv = started.str_("conversation_id").to_string();
    assert!(is_ulid(&conv), "{started}");
    let state = lin.recv_state(&conv, "assigned").await;
    assert_eq!(
        state["agent"]["id"],
        wang.id(),
        "the only online staff member gets the chat: {state}"
    );

    // A retried start returns the open conversation instead of opening a second one.
    let again = lin.start("r2").await;
    assert_eq!(again["conversation_id"], conv.as_str(), "{again}");
    assert_eq!(again["created"], false, "{again}");

    let body = "Do you have the blue one in size 40?";
    let id = cmid();
    let ack = lin.send_msg(&conv, &id, body).await;
    assert_eq!(ack["conversation_id"], conv.as_str());
    assert_eq!(ack["client_msg_id"], id.as_str());
    assert!(is_ulid(ack.str_("message_id")), "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(ack["duplicate"], false, "{ack}");
    assert!(ack.u64_("sent_at_ms") > 1_600_000_000_000, "{ack}");

    let m = wang.recv_message(&conv).await;
    assert_eq!(m["seq"], 1, "{m}");
    assert_eq!(m["id"], ack["message_id"], "{m}");
    assert_eq!(m["client_msg_id"], id.as_str(), "{m}");
    assert_eq!(m["sender"]["kind"], "customer", "{m}");
    assert_eq!(m["sender"]["id"], lin.customer_id.as_str(), "{m}");
    assert_eq!(m["body"], body, "{m}");
    assert_eq!(m["sent_at_ms"], ack["sent_at_ms"], "{m}");

    let reply = "Yes, aisle 4. Shall I put one aside?";
    let rid = cmid();
    let rack = wang.send_msg(&conv, &rid, reply).await;
    assert_eq!(rack["seq"], 2, "{rack}");
    assert_eq!(rack["duplicate"], false, "{rack}");

    let r = lin.recv_message(&conv).await;
    assert_eq!(r["seq"], 2, "{r}");
    assert_eq!(r["id"], rack["message_id"], "{r}");
    assert_eq!(r["sender"]["kind"], "staff", "{r}");
    assert_eq!(r["sender"]["id"], wang.id(), "{r}");
    assert_eq!(r["body"], reply, "{r}");

    // The sender's own connection gets the ack, not a message copy.
    lin.expect_none(300, "copy of the customer's own message", |v| {
        v["type"] == "message" && v["seq"] == 1
    })
    .await;
    wang.expect_none(300, "copy of the staff member's own message", |v| {
        v["type"] == "message" && v["seq"] == 2
    })
    .await;

    // Both are in the stored history, in order.
    let hist = edge.http().messages(&staff[0].token, &conv).await;
    let got: Vec<(u64, &str, &str)> = hist
        .iter()
        .map(|m| (m.u64_("seq"), m.str_("body"), m.str_("/sender/kind")))
        .collect();
    assert_eq!(got, vec![(1, body, "customer"), (2, reply, "staff")]);

    // The staff member's conversation list shows it as theirs.
    let open = edge
        .http()
        .list_conversations(&staff[0].token, "status=open")
        .await;
    let summary = open
        .iter()
        .find(|c| c["id"] == conv.as_str())
        .unwrap_or_else(|| panic!("conversation missing from GET /api/conversations: {open:?}"));
    assert_eq!(summary["agent"]["id"], wang.id(), "{summary}");
    assert_eq!(summary["last_seq"], 2, "{summary}");
}

/// The same staff account on two tablets: both get the same live frames, and the first
/// keeps working after the second logs in.
#[tokio::test]
async fn staff_second_tablet_receives_the_same_live_messages() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut tab1 = StaffConn::connect(&edge, &staff[0], "tablet 1").await;

    let mut cust = Customer::connect(&edge, "Mei").await;
    let conv = cust.start_conversation().await;
    let st = cust.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], tab1.id(), "{st}");
    let a1 = cust.send_msg(&conv, &cmid(), "hello?").await;
    let m = tab1.recv_message(&conv).await;
    assert_eq!(m["id"], a1["message_id"]);

    // Second tablet: a new login of the same account.
    let session2 = edge
        .http()
        .login(
            &staff[0].username,
            &format!("pw-{}-12345", staff[0].username),
        )
        .await;
    assert_eq!(session2.id, staff[0].id);
    assert_ne!(
        session2.token, staff[0].token,
        "each login is its own session"
    );
    let mut tab2 = StaffConn::connect(&edge, &session2, "tablet 2").await;
    assert!(
        tab2.welcome_conversations().contains(&conv),
        "the second tablet's welcome lists the open chat: {}",
        tab2.welcome
    );

    // A customer message reaches both tablets.
    let a2 = cust.send_msg(&conv, &cmid(), "are you there?").await;
    for tab in [&mut tab1, &mut tab2] {
        let m = tab.recv_message(&conv).await;
        assert_eq!(m["seq"], a2["seq"], "{m}");
        assert_eq!(m["id"], a2["message_id"], "{m}");
    }

    // A reply from tablet 1 reaches the customer and tablet 2 (another connection of the
    // assigned staff member), not tablet 1 itself.
    let r1 = tab1.send_msg(&conv, &cmid(), "yes, one moment").await;
    let m = cust.recv_message(&conv).await;
    assert_eq!(m["id"], r1["message_id"], "{m}");
    let m = tab2.recv_message(&conv).await;
    assert_eq!(m["id"], r1["message_id"], "{m}");

    // And the other way round.
    let r2 = tab2.send_msg(&conv, &cmid(), "found it").await;
    let m = cust.recv_message(&conv).await;
    assert_eq!(m["id"], r2["message_id"], "{m}");
    let m = tab1.recv_message(&conv).await;
    assert_eq!(m["id"], r2["message_id"], "{m}");

    // The first tablet still works on its own after all that.
    let r3 = tab1.send_msg(&conv, &cmid(), "it is in aisle 7").await;
    assert_eq!(r3["seq"], r2.u64_("seq") + 1);
    let m = cust.recv_message(&conv).await;
    assert_eq!(m["id"], r3["message_id"], "{m}");
    for tab in [&mut tab1, &mut tab2] {
        tab.expect_none(300, "duplicate message", |v| {
            v["type"] == "message" && v["seq"] == a2["seq"]
        })
        .await;
    }
}

/// Staff A transfers the chat to staff B: B is told (state `transferred`), can read the full
/// history, and the customer's next message goes to B and no longer to A.
#[tokio::test]
async fn transfer_hands_the_chat_and_its_history_to_a_colleague() {
    let (edge, _admin, staff) = edge_with_staff(2, 8).await;
    let mut a = StaffConn::connect(&edge, &staff[0], "staff A").await;

    let mut cust = Customer::connect(&edge, "Chen").await;
    let conv = cust.start_conversation().await;
    let st = cust.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], a.id(), "only A was online: {st}");

    let mut b = StaffConn::connect(&edge, &staff[1], "staff B").await;

    cust.send_msg(&conv, &cmid(), "I want to return these shoes")
        .await;
    a.recv_message(&conv).await;
    a.send_msg(&conv, &cmid(), "Do you have the receipt?").await;
    cust.recv_message(&conv).await;
    cust.send_msg(&conv, &cmid(), "yes, paid by card").await;
    a.recv_message(&conv).await;

    let ok = a
        .action_ok(
            json!({"type":"transfer","request_id":"t1","conversation_id":conv,
                          "to":b.id(),"note":"wants a refund"}),
        )
        .await;
    assert_eq!(ok["request_id"], "t1");

    let st = b.recv_state(&conv, "transferred").await;
    assert_eq!(st["agent"]["id"], b.id(), "{st}");
    assert_eq!(st["previous_agent"]["id"], a.id(), "{st}");
    assert_eq!(st["event"]["kind"], "transfer", "{st}");
    assert_eq!(st["event"]["note"], "wants a refund", "{st}");
    let st = cust.recv_state(&conv, "transferred").await;
    assert_eq!(st["agent"]["id"], b.id(), "{st}");
    let st = a.recv_state(&conv, "transferred").await;
    assert_eq!(st["agent"]["id"], b.id(), "{st}");

    // B sees the whole history on resume, identical to the stored one.
    let res = b.resume(&conv, 0).await;
    assert_eq!(res.seqs(), vec![1, 2, 3]);
    let stored = edge.http().messages(&staff[1].token, &conv).await;
    let key = |m: &Value| (m["seq"].clone(), m["id"].clone(), m["body"].clone());
    assert_eq!(
        res.messages.iter().map(key).collect::<Vec<_>>(),
        stored.iter().map(key).collect::<Vec<_>>()
    );
    assert_eq!(res.resumed["last_seq"], 3, "{}", res.resumed);

    // The customer's next message goes to B, not to A.
    let ack = cust.send_msg(&conv, &cmid(), "so, the refund?").await;
    let m = b.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");

    // B answers; A may no longer write into it.
    let r = b.send_msg(&conv, &cmid(), "Refund done.").await;
    let m = cust.recv_message(&conv).await;
    assert_eq!(m["id"], r["message_id"]);
    let denied = a.send_and_wait(&conv, &cmid(), "me again").await;
    assert_eq!(denied["type"], "error", "A wrote into B's chat: {denied}");
    assert_eq!(denied["code"], "forbidden", "{denied}");

    // A, no longer the agent, got none of the messages after the transfer.
    a.expect_none(500, "message of a chat transferred away", |v| {
        v["type"] == "message" && v["conversation_id"] == conv.as_str()
    })
    .await;
}

/// A resolved chat reopens when the customer writes into it; staff resolve and reopen by
/// action, and a resolve of a resolved chat is an illegal transition.
#[tokio::test]
async fn resolved_chat_reopens_when_the_customer_writes() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut cust = Customer::connect(&edge, "Zhou").await;
    let conv = cust.start_conversation().await;
    cust.recv_state(&conv, "assigned").await;
    cust.send_msg(&conv, &cmid(), "where are the batteries?")
        .await;
    s.recv_message(&conv).await;
    s.send_msg(&conv, &cmid(), "aisle 2").await;
    cust.recv_message(&conv).await;

    s.action_ok(json!({"type":"resolve","request_id":"res1","conversation_id":conv}))
        .await;
    let st = cust.recv_state(&conv, "resolved").await;
    assert_eq!(st["event"]["kind"], "resolve", "{st}");
    s.recv_state(&conv, "resolved").await;

    let again = s
        .action(json!({"type":"resolve","request_id":"res2","conversation_id":conv}))
        .await;
    assert_eq!(again["type"], "error", "{again}");
    assert_eq!(again["code"], "illegal_transition", "{again}");
    assert_eq!(again["conversation_id"], conv.as_str(), "{again}");

    // The customer writes again: stored, the chat reopens, the staff member hears of it.
    let ack = cust.send_msg(&conv, &cmid(), "sorry, one more thing").await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let st = cust.recv_state(&conv, "reopened").await;
    assert_eq!(st["conversation_id"], conv.as_str());
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");

    let detail = edge.http().conversation(&staff[0].token, &conv).await;
    assert_ne!(
        detail["state"]["status"], "resolved",
        "the chat must be open again: {detail}"
    );

    // Staff resolve it and reopen it by hand.
    s.action_ok(json!({"type":"resolve","request_id":"res3","conversation_id":conv}))
        .await;
    cust.recv_state(&conv, "resolved").await;
    s.action_ok(json!({"type":"reopen","request_id":"reo1","conversation_id":conv}))
        .await;
    cust.recv_state(&conv, "reopened").await;
}
