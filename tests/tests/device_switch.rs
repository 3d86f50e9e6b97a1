//! A customer's conversation follows them: hand-off to a second device with the whole
//! history, and a reconnect that gets exactly the messages it missed.

use std::time::{SystemTime, UNIX_EPOCH};

use aisle_tests::*;

/// What a device shows for one message.
fn view(m: &Value) -> (u64, String, String, String, String) {
    (
        m.u64_("seq"),
        m.str_("id").to_string(),
        m.str_("/sender/kind").to_string(),
        m.str_("/sender/id").to_string(),
        m.str_("body").to_string(),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Device A chats, asks for a hand-off code; device B redeems it over HTTP, connects with the
/// new token, resumes from 0 and sees exactly what A saw; then both devices are live.
#[tokio::test]
async fn handoff_moves_the_whole_conversation_to_a_second_device() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut a = Customer::connect(&edge, "Lin (phone)").await;
    let conv = a.start_conversation().await;
    a.recv_state(&conv, "assigned").await;

    // What device A saw: its own messages (from the acks) and the staff replies.
    let mut seen_a = Vec::new();
    const N: usize = 6;
    for i in 0..N {
        let body = format!("question {i}");
        let ack = a.send_msg(&conv, &cmid(), &body).await;
        seen_a.push((
            ack.u64_("seq"),
            ack.str_("message_id").to_string(),
            "customer".to_string(),
            a.customer_id.clone(),
            body,
        ));
        s.recv_message(&conv).await;
        s.send_msg(&conv, &cmid(), &format!("answer {i}")).await;
        let m = a.recv_message(&conv).await;
        seen_a.push(view(&m));
    }
    assert_eq!(
        seen_a.iter().map(|v| v.0).collect::<Vec<_>>(),
        (1..=2 * N as u64).collect::<Vec<_>>()
    );
    // Staff has read up to the customer's last question (seq 2N - 1).
    s.send(json!({"type":"read","conversation_id":conv,"seq":2 * N as u64 - 1}))
        .await;
    a.recv_reply("read", |v| v["conversation_id"] == conv.as_str())
        .await;

    a.send(json!({"type":"handoff","conversation_id":conv}))
        .await;
    let h = a
        .recv_reply("handoff", |v| v["conversation_id"] == conv.as_str())
        .await;
    assert_eq!(h["type"], "handoff", "{h}");
    let code = h.str_("code").to_string();
    assert_eq!(code.chars().count(), 8, "{h}");
    assert!(code.chars().all(|c| c.is_ascii_alphanumeric()), "{h}");
    assert_eq!(h["url"], format!("/h/{code}"), "{h}");
    assert!(h.u64_("expires_at_ms") > now_ms(), "{h}");

    // Device B redeems the code.
    let r = edge.http().redeem_handoff(&code).await;
    let redeemed = r.expect(200).clone();
    assert_eq!(
        redeemed["customer_id"],
        a.customer_id.as_str(),
        "{redeemed}"
    );
    assert_eq!(redeemed["conversation_id"], conv.as_str(), "{redeemed}");
    let token_b = redeemed.str_("resume_token").to_string();

    // Single use.
    edge.http()
        .redeem_handoff(&code)
        .await
        .expect_error(409, "handoff_used");

    let mut b = Customer::connect_with_token(&edge, &token_b, "Lin (tablet)").await;
    assert_eq!(b.customer_id, a.customer_id, "{}", b.welcome);
    assert!(
        b.welcome["conversations"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["id"] == conv.as_str())),
        "welcome on device B lists the conversation: {}",
        b.welcome
    );
    let res = b.resume_all(&conv, 0).await;
    let seen_b: Vec<_> = res.messages.iter().map(view).collect();
    assert_eq!(
        seen_b, seen_a,
        "device B's history differs from what device A saw"
    );
    assert_eq!(res.resumed["last_seq"], 2 * N as u64, "{}", res.resumed);
    assert!(res.state.is_some(), "resume sends the state before resumed");
    // The new device learns at once how far staff has read (the stored cursor).
    let staff_read: Vec<&Value> = res
        .reads
        .iter()
        .filter(|r| r["by"]["kind"] == "staff")
        .collect();
    assert_eq!(staff_read.len(), 1, "{:?}", res.reads);
    assert_eq!(staff_read[0]["seq"], 2 * N as u64 - 1, "{:?}", res.reads);
    assert_eq!(
        staff_read[0]["by"]["id"],
        staff[0].id.as_str(),
        "{:?}",
        res.reads
    );

    // Both devices are live now.
    let live = s.send_msg(&conv, &cmid(), "anything else?").await;
    for dev in [&mut a, &mut b] {
        let m = dev.recv_message(&conv).await;
        assert_eq!(m["id"], live["message_id"], "{m}");
    }
    let from_b = b.send_msg(&conv, &cmid(), "typed on the tablet").await;
    let m = a.recv_message(&conv).await;
    assert_eq!(
        m["id"], from_b["message_id"],
        "device A sees device B's message: {m}"
    );
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], from_b["message_id"], "{m}");
    let from_a = a.send_msg(&conv, &cmid(), "typed on the phone").await;
    let m = b.recv_message(&conv).await;
    assert_eq!(
        m["id"], from_a["message_id"],
        "device B sees device A's message: {m}"
    );
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], from_a["message_id"], "{m}");

    // Unknown codes are refused.
    edge.http()
        .redeem_handoff("ZZZZZZZZ")
        .await
        .expect_error(404, "not_found");
}

/// A customer disconnected at seq k while staff sent m more: `resume after_seq k` replays
/// exactly k+1..k+m once, then live messages follow with no duplicates.
#[tokio::test]
async fn reconnect_gets_exactly_the_missed_messages() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut cust = Customer::connect(&edge, "Ren").await;
    let token = cust.resume_token.clone();
    let conv = cust.start_conversation().await;
    cust.recv_state(&conv, "assigned").await;

    let mut last_seen = 0;
    for i in 0..3 {
        let ack = cust.send_msg(&conv, &cmid(), &format!("c{i}")).await;
        last_seen = ack.u64_("seq");
        s.recv_message(&conv).await;
        if i < 2 {
            s.send_msg(&conv, &cmid(), &format!("s{i}")).await;
            last_seen = cust.recv_message(&conv).await.u64_("seq");
        }
    }
    let k = last_seen;
    assert_eq!(k, 5);
    cust.ws.close().await;

    const M: u64 = 7;
    let mut missed = Vec::new();
    for i in 0..M {
        let ack = s
            .send_msg(&conv, &cmid(), &format!("while you were away {i}"))
            .await;
        missed.push(ack);
    }
    assert_eq!(
        missed.iter().map(|a| a.u64_("seq")).collect::<Vec<_>>(),
        (k + 1..=k + M).collect::<Vec<_>>()
    );

    let mut back = Customer::connect_with_token(&edge, &token, "Ren reconnected").await;
    let res = back.resume(&conv, k).await;
    assert_eq!(
        res.seqs(),
        (k + 1..=k + M).collect::<Vec<_>>(),
        "replay after seq {k}"
    );
    for (m, a) in res.messages.iter().zip(&missed) {
        assert_eq!(m["id"], a["message_id"], "{m}");
        assert_eq!(m["sender"]["kind"], "staff", "{m}");
    }
    assert_eq!(res.resumed["last_seq"], k + M, "{}", res.resumed);
    assert_eq!(res.resumed["more"], false, "{}", res.resumed);

    // Live from here, nothing twice.
    let live = s.send_msg(&conv, &cmid(), "still there?").await;
    let m = back.recv_message(&conv).await;
    assert_eq!(m["seq"], k + M + 1, "{m}");
    assert_eq!(m["id"], live["message_id"], "{m}");
    back.expect_none(500, "duplicate or extra message", |v| {
        v["type"] == "message"
    })
    .await;
}
