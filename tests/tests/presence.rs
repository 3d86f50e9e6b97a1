//! What the other side sees while nobody writes: typing indicators and read receipts
//! (protocol.md §4).

use aisle_tests::*;

/// One staff member online and a customer whose new chat was routed to them.
async fn assigned_chat(
    edge: &Edge,
    staff: &StaffSession,
    name: &str,
) -> (StaffConn, Customer, String) {
    let s = StaffConn::connect(edge, staff, "staff").await;
    let mut c = Customer::connect(edge, name).await;
    let conv = c.start_conversation().await;
    let st = c.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], staff.id.as_str(), "{st}");
    (s, c, conv)
}

fn is_typing(v: &Value) -> bool {
    v["type"] == "typing"
}

/// A customer's typing reaches the assigned staff member with `from`, the staff member's
/// typing reaches the customer, nobody gets their own typing back, and nothing is stored.
#[tokio::test]
async fn typing_reaches_the_other_side_with_who_is_typing() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let (mut s, mut c, conv) = assigned_chat(&edge, &staff[0], "Typist").await;
    // A first message (typing right after `started` is its own test below).
    let ack = c.send_msg(&conv, &cmid(), "hello").await;
    s.recv_message(&conv).await;

    c.send(json!({"type":"typing","conversation_id":conv,"active":true}))
        .await;
    let t = s.recv_type("typing").await;
    assert_eq!(t["conversation_id"], conv.as_str(), "{t}");
    assert_eq!(t["active"], true, "{t}");
    assert_eq!(t["from"]["kind"], "customer", "{t}");
    assert_eq!(t["from"]["id"], c.customer_id.as_str(), "{t}");

    c.send(json!({"type":"typing","conversation_id":conv,"active":false}))
        .await;
    let t = s.recv_type("typing").await;
    assert_eq!(t["active"], false, "{t}");
    assert_eq!(t["from"]["id"], c.customer_id.as_str(), "{t}");

    s.send(json!({"type":"typing","conversation_id":conv,"active":true}))
        .await;
    let t = c.recv_type("typing").await;
    assert_eq!(t["conversation_id"], conv.as_str(), "{t}");
    assert_eq!(t["active"], true, "{t}");
    assert_eq!(t["from"]["kind"], "staff", "{t}");
    assert_eq!(t["from"]["id"], s.id(), "{t}");

    // Nobody is told about their own typing.
    c.expect_none(300, "the customer's own typing echoed back", |v| {
        is_typing(v) && v["from"]["kind"] == "customer"
    })
    .await;
    s.expect_none(300, "the staff member's own typing echoed back", |v| {
        is_typing(v) && v["from"]["kind"] == "staff"
    })
    .await;

    // Typing is ephemeral: the conversation holds only the one message.
    let hist = edge.http().messages(&staff[0].token, &conv).await;
    assert_eq!(hist.len(), 1, "typing was stored as a message: {hist:?}");
    assert_eq!(hist[0]["id"], ack["message_id"]);
    // Both connections still chat normally.
    let ack = c.send_msg(&conv, &cmid(), "done typing").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let m = s.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
}

/// protocol.md §2: after `start` "the customer is subscribed to it". A customer who starts
/// typing the moment `started` arrives must reach the staff member, not get `not_found`.
/// Customers start in groups at the same time (as on a busy Saturday), so several starts
/// share a commit: a subscription that lags behind the `started` answer shows up as a
/// spurious `not_found` for some of them.
#[tokio::test]
async fn typing_right_after_started_reaches_the_staff_member() {
    const ROUNDS: usize = 25;
    const GROUP: usize = 20;
    let (edge, _admin, staff) = edge_with_staff(1, (ROUNDS * GROUP) as u32 + 1).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    // A busy appliance (the race needs the server's writer thread to be preempted between
    // answering `started` and subscribing): keep the cores busy while the customers start.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut refused = Vec::new();
    for round in 0..ROUNDS {
        let mut group = Vec::new();
        for i in 0..GROUP {
            group.push(Customer::connect(&edge, &format!("Eager {round}.{i}")).await);
        }
        let results = futures_util::future::join_all(group.iter_mut().map(|c| async move {
            let conv = c.start_conversation().await;
            c.send(json!({"type":"typing","conversation_id":conv,"active":true}))
                .await;
            // The answer to a frame comes before the answer to the next one: an error for
            // the typing frame would arrive before this pong.
            c.send(json!({"type":"ping"})).await;
            c.recv_type("pong").await;
            let err = c.backlog().iter().find(|v| v["type"] == "error").cloned();
            (conv, err)
        }))
        .await;
        for (c, (conv, err)) in group.iter().zip(results) {
            if let Some(e) = err {
                refused.push(format!("{}: {e}", c.name()));
                continue;
            }
            let t = s
                .recv_where("typing of the new chat", |v| {
                    v["type"] == "typing" && v["conversation_id"] == conv.as_str()
                })
                .await;
            assert_eq!(t["from"]["id"], c.customer_id.as_str(), "{t}");
        }
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    assert!(
        refused.is_empty(),
        "{} of {} customers typing right after `started` were refused (the chat was not \
         subscribed yet):\n{}",
        refused.len(),
        ROUNDS * GROUP,
        refused[..refused.len().min(10)].join("\n")
    );
}

/// A customer cannot type into someone else's conversation: `not_found`, and neither the
/// owner nor the staff member sees it.
#[tokio::test]
async fn typing_into_another_customers_conversation_is_not_found() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let (mut s, mut owner, conv) = assigned_chat(&edge, &staff[0], "Owner").await;

    let mut nosy = Customer::connect(&edge, "Nosy").await;
    let own = nosy.start_conversation().await;
    nosy.send(json!({"type":"typing","conversation_id":conv,"active":true}))
        .await;
    let e = nosy.recv_error("not_found").await;
    assert_eq!(e["conversation_id"], conv.as_str(), "{e}");

    owner
        .expect_none(500, "a stranger's typing", is_typing)
        .await;
    s.expect_none(200, "a stranger's typing in someone else's chat", |v| {
        is_typing(v) && v["conversation_id"] == conv.as_str()
    })
    .await;
    // The stranger's connection still works.
    assert_send_still_acked(&mut nosy.ws, &own).await;
}

/// Staff mark the chat read up to a seq: the customer sees `read` with `by` = that staff
/// member. The cursor only moves forward: a lower seq afterwards is not forwarded, a higher
/// one is. The customer's receipt reaches the staff member the same way.
#[tokio::test]
async fn read_receipts_are_forwarded_and_only_move_forward() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let (mut s, mut c, conv) = assigned_chat(&edge, &staff[0], "Reader").await;

    for i in 1..=3 {
        let ack = c.send_msg(&conv, &cmid(), &format!("question {i}")).await;
        assert_eq!(ack["seq"], i, "{ack}");
        s.recv_message(&conv).await;
    }

    s.send(json!({"type":"read","conversation_id":conv,"seq":2}))
        .await;
    let r = c.recv_type("read").await;
    assert_eq!(r["conversation_id"], conv.as_str(), "{r}");
    assert_eq!(r["seq"], 2, "{r}");
    assert_eq!(r["by"]["kind"], "staff", "{r}");
    assert_eq!(r["by"]["id"], s.id(), "{r}");

    // Backwards: not forwarded. Then forwards again: forwarded. Frames of one conversation
    // arrive in order, so the next receipt the customer sees must be the one for seq 3.
    s.send(json!({"type":"read","conversation_id":conv,"seq":1}))
        .await;
    s.send(json!({"type":"read","conversation_id":conv,"seq":2}))
        .await;
    s.send(json!({"type":"read","conversation_id":conv,"seq":3}))
        .await;
    let r = c.recv_type("read").await;
    assert_eq!(
        r["seq"],
        3,
        "{}",
        c.report(&format!(
            "after read 2, a read of seq 1 (and 2 again) must not be forwarded; got {r}"
        ))
    );
    assert_eq!(r["by"]["id"], s.id(), "{r}");
    c.expect_none(500, "a read receipt moving backwards", |v| {
        v["type"] == "read"
    })
    .await;
    // The reader is not told about its own receipt.
    s.expect_none(200, "an echo of the staff member's own receipt", |v| {
        v["type"] == "read" && v["by"]["kind"] == "staff"
    })
    .await;

    // The staff member replies; the customer marks it read; the staff member sees it.
    let ack = s.send_msg(&conv, &cmid(), "answer").await;
    assert_eq!(ack["seq"], 4, "{ack}");
    c.recv_message(&conv).await;
    c.send(json!({"type":"read","conversation_id":conv,"seq":4}))
        .await;
    let r = s.recv_type("read").await;
    assert_eq!(r["conversation_id"], conv.as_str(), "{r}");
    assert_eq!(r["seq"], 4, "{r}");
    assert_eq!(r["by"]["kind"], "customer", "{r}");
    assert_eq!(r["by"]["id"], c.customer_id.as_str(), "{r}");
}
