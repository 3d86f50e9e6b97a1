//! What was acked is on disk: a crash (SIGKILL) right after the acks, a graceful shutdown
//! (SIGTERM), and retried sends that must never duplicate.

use std::collections::BTreeMap;

use aisle_tests::*;

/// Sends `n` messages without waiting between them (all frames first, then the acks) and
/// returns (client_msg_id, body, ack) in sending order.
async fn send_burst(ws: &mut Ws, conv: &str, n: usize) -> Vec<(String, String, Value)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let id = cmid();
        let body = format!("message {i} — 第{i}条");
        ws.send(json!({"type":"send","conversation_id":conv,"client_msg_id":id,"body":body}))
            .await;
        sent.push((id, body));
    }
    let mut out = Vec::new();
    for (id, body) in sent {
        let ack = ws
            .recv_reply("ack", |v| v["client_msg_id"] == id.as_str())
            .await;
        assert_eq!(ack["type"], "ack", "{}", ws.report(&format!("got {ack}")));
        out.push((id, body, ack));
    }
    out
}

/// Asserts that `msgs` are exactly the acked messages, once each, in seq order 1..=n.
fn assert_history(what: &str, msgs: &[Value], acks: &[(String, String, Value)]) {
    let by_seq: BTreeMap<u64, &(String, String, Value)> =
        acks.iter().map(|a| (a.2.u64_("seq"), a)).collect();
    assert_eq!(by_seq.len(), acks.len(), "two acks share a seq: {acks:?}");
    let got: Vec<u64> = msgs.iter().map(|m| m.u64_("seq")).collect();
    let want: Vec<u64> = (1..=acks.len() as u64).collect();
    assert_eq!(got, want, "{what}: seqs");
    for m in msgs {
        let (cm, body, ack) = by_seq[&m.u64_("seq")];
        assert_eq!(m["client_msg_id"], cm.as_str(), "{what}: {m}");
        assert_eq!(m["body"], body.as_str(), "{what}: {m}");
        assert_eq!(m["id"], ack["message_id"], "{what}: {m}");
    }
}

/// SIGKILL right after the acks; after a restart every acked message is there, exactly once
/// and in seq order, over HTTP and over `resume after_seq 0`; new messages continue the seq.
#[tokio::test]
async fn acked_messages_survive_a_crash() {
    let mut edge = Edge::start().await;
    let mut cust = Customer::connect(&edge, "Ana").await;
    let token = cust.resume_token.clone();
    let conv = cust.start_conversation().await;
    const N: usize = 40;
    let acks = send_burst(&mut cust.ws, &conv, N).await;

    edge.kill();
    drop(cust);
    edge.restart().await;

    let admin = edge.http().login_admin().await;
    let hist = edge.http().messages(&admin.token, &conv).await;
    assert_history("HTTP history after SIGKILL + restart", &hist, &acks);

    // The resume token is signed with a key kept in the data directory: still valid.
    let mut again = Customer::connect_with_token(&edge, &token, "Ana after restart").await;
    let listed: Vec<&Value> = again.welcome["conversations"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    assert!(
        listed.iter().any(|c| c["id"] == conv.as_str()),
        "welcome lists the conversation: {}",
        again.welcome
    );
    let res = again.resume_all(&conv, 0).await;
    assert_history("resume after_seq 0 after restart", &res.messages, &acks);
    assert_eq!(res.resumed["last_seq"], N as u64, "{}", res.resumed);

    let next = again.send_msg(&conv, &cmid(), "after the crash").await;
    assert_eq!(
        next["seq"],
        N as u64 + 1,
        "seq continues without a gap: {next}"
    );
}

/// SIGTERM with clients connected: each gets `bye` (`shutting_down`) and a 1012 close, the
/// process exits 0, and the acked messages are there after a restart.
#[tokio::test]
async fn sigterm_says_bye_and_keeps_acked_messages() {
    let (mut edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut cust = Customer::connect(&edge, "Bo").await;
    let conv = cust.start_conversation().await;
    let acks = send_burst(&mut cust.ws, &conv, 5).await;
    for _ in 0..5 {
        s.recv_message(&conv).await;
    }

    edge.send_sigterm();
    for ws in [&mut cust.ws, &mut s.ws] {
        let bye = ws.recv_type("bye").await;
        assert_eq!(bye["code"], "shutting_down", "{bye}");
        let close = ws.wait_close().await;
        assert_eq!(
            close.as_ref().map(|c| c.0),
            Some(1012),
            "close frame after bye: {close:?}"
        );
    }
    let status = edge.wait_exit().await;
    assert!(
        status.success(),
        "aisle-edge exited with {status} on SIGTERM"
    );

    edge.restart().await;
    let admin = edge.http().login_admin().await;
    let hist = edge.http().messages(&admin.token, &conv).await;
    assert_history("history after SIGTERM + restart", &hist, &acks);
}

/// A retried send (same client_msg_id) is stored once: the retry is answered with the
/// original ack marked `duplicate`, also from a new connection after a reconnect, and the
/// staff member sees the message once.
#[tokio::test]
async fn retried_send_is_stored_once() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut cust = Customer::connect(&edge, "Ivo").await;
    let conv = cust.start_conversation().await;
    cust.recv_state(&conv, "assigned").await;

    let id = cmid();
    let body = "is the café open?";
    let first = cust.send_msg(&conv, &id, body).await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["seq"], 1, "{first}");

    let retry = cust.send_msg(&conv, &id, body).await;
    assert_eq!(retry["duplicate"], true, "{retry}");
    for k in [
        "message_id",
        "seq",
        "sent_at_ms",
        "conversation_id",
        "client_msg_id",
    ] {
        assert_eq!(
            retry[k], first[k],
            "{k} of the retry's ack: {retry} vs {first}"
        );
    }

    // The phone loses its connection before it saw the ack, reconnects and retries.
    let token = cust.resume_token.clone();
    cust.ws.abort();
    let mut cust2 = Customer::connect_with_token(&edge, &token, "Ivo reconnected").await;
    let res = cust2.resume(&conv, 0).await;
    assert_eq!(
        res.seqs(),
        vec![1],
        "one stored message: {:?}",
        res.messages
    );
    let retry2 = cust2.send_msg(&conv, &id, body).await;
    assert_eq!(retry2["duplicate"], true, "{retry2}");
    assert_eq!(retry2["message_id"], first["message_id"], "{retry2}");
    assert_eq!(retry2["seq"], 1, "{retry2}");

    let next = cust2.send_msg(&conv, &cmid(), "hello?").await;
    assert_eq!(next["seq"], 2, "the retries took no seq: {next}");
    assert_eq!(next["duplicate"], false, "{next}");

    // The staff member got seq 1 once, then seq 2.
    let m1 = s.recv_message(&conv).await;
    assert_eq!(m1["seq"], 1, "{m1}");
    let m2 = s.recv_message(&conv).await;
    assert_eq!(m2["seq"], 2, "the retry was delivered again: {m2}");
    s.expect_none(300, "another message", |v| v["type"] == "message")
        .await;

    let hist = edge.http().messages(&staff[0].token, &conv).await;
    assert_eq!(hist.len(), 2, "stored history: {hist:?}");
    assert_eq!(hist[0]["id"], first["message_id"]);
}
