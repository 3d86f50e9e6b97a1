//! Bad input over the WebSocket: each is answered with its documented error code, the
//! connection keeps working (a following valid send is acked) and the server stays healthy.

use aisle_tests::*;

/// A customer with an open conversation (nobody online: it stays queued).
async fn customer_with_conversation(edge: &Edge, name: &str) -> (Customer, String) {
    let mut c = Customer::connect(edge, name).await;
    let conv = c.start_conversation().await;
    (c, conv)
}

/// The connection still works and the server is healthy.
async fn assert_recovered(edge: &Edge, c: &mut Customer, conv: &str) {
    assert_send_still_acked(&mut c.ws, conv).await;
    edge.http().assert_healthy().await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_connection_survives() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__MAX_FRAME_BYTES", 16384)).await;
    let (mut c, conv) = customer_with_conversation(&edge, "Big").await;
    // 1.5 × the limit: read and refused, connection stays open.
    let body = "x".repeat(24 * 1024);
    c.send(json!({"type":"send","conversation_id":conv,"client_msg_id":"c-big","body":body}))
        .await;
    c.recv_error("frame_too_large").await;
    c.expect_none(200, "ack of the oversized frame", |v| v["type"] == "ack")
        .await;
    let ack = assert_send_still_acked(&mut c.ws, &conv).await;
    assert_eq!(ack["seq"], 1, "the oversized frame stored nothing: {ack}");
    edge.http().assert_healthy().await;
}

#[tokio::test]
async fn frame_far_past_the_limit_closes_with_1009_and_the_server_stays_up() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__MAX_FRAME_BYTES", 16384)).await;
    let (mut c, conv) = customer_with_conversation(&edge, "Huge").await;
    let token = c.resume_token.clone();
    let body = "x".repeat(5 * 16384);
    let _ =
        c.ws.try_send_message(tokio_tungstenite::tungstenite::Message::text(
            json!({"type":"send","conversation_id":conv,"client_msg_id":"c-huge","body":body})
                .to_string(),
        ))
        .await;
    let close = c.ws.wait_close().await;
    assert_eq!(close.as_ref().map(|c| c.0), Some(1009), "close: {close:?}");
    for e in c.ws.backlog().iter().filter(|v| v["type"] == "error") {
        assert_eq!(e["code"], "frame_too_large", "{e}");
    }
    edge.http().assert_healthy().await;
    // The customer reconnects and carries on; nothing of the huge frame was stored.
    let mut again = Customer::connect_with_token(&edge, &token, "Huge again").await;
    let res = again.resume(&conv, 0).await;
    assert!(res.messages.is_empty(), "{:?}", res.messages);
    assert_send_still_acked(&mut again.ws, &conv).await;
}

#[tokio::test]
async fn invalid_json_is_bad_json() {
    let edge = Edge::start().await;
    let (mut c, conv) = customer_with_conversation(&edge, "Json").await;
    for text in ["{not json", "[1,2,3]", "\"just a string\"", ""] {
        c.send_text(text.to_string()).await;
        let e = c.recv_error("bad_json").await;
        assert!(e["message"].is_string(), "{e}");
    }
    assert_recovered(&edge, &mut c, &conv).await;
}

#[tokio::test]
async fn unknown_or_missing_type_is_unknown_type() {
    let edge = Edge::start().await;
    let (mut c, conv) = customer_with_conversation(&edge, "Types").await;
    c.send(json!({"type":"dance","request_id":"r-dance"})).await;
    let e = c.recv_error("unknown_type").await;
    assert_eq!(e["request_id"], "r-dance", "request_id is echoed: {e}");
    c.send(json!({"body":"no type at all"})).await;
    c.recv_error("unknown_type").await;
    assert_recovered(&edge, &mut c, &conv).await;
}

#[tokio::test]
async fn malformed_fields_are_bad_frame_and_binary_is_unsupported() {
    let edge = Edge::start().await;
    let (mut c, conv) = customer_with_conversation(&edge, "Fields").await;
    // `send` without a body.
    c.send(json!({"type":"send","conversation_id":conv,"client_msg_id":"c-nobody"}))
        .await;
    let e = c.recv_error("bad_frame").await;
    assert_eq!(e["client_msg_id"], "c-nobody", "{e}");
    assert_eq!(e["conversation_id"], conv.as_str(), "{e}");
    // An id that is not a ULID.
    c.send(json!({"type":"resume","conversation_id":"not-an-id","after_seq":0}))
        .await;
    c.recv_error("bad_frame").await;
    c.send_binary(vec![1, 2, 3]).await;
    c.recv_error("unsupported_frame").await;
    assert_recovered(&edge, &mut c, &conv).await;
}

#[tokio::test]
async fn bad_tokens_are_unauthorized_and_hello_can_be_retried() {
    let edge = Edge::start().await;
    let (real, conv) = customer_with_conversation(&edge, "Real").await;

    let mut ws = Ws::connect(edge.addr(), "bad customer token").await;
    ws.send(json!({"type":"hello","role":"customer","resume_token":"garbage"}))
        .await;
    ws.recv_error("unauthorized").await;
    // A real token with its signature altered.
    let mut forged = real.resume_token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    ws.send(json!({"type":"hello","role":"customer","resume_token":forged}))
        .await;
    ws.recv_error("unauthorized").await;
    // The forged token did not give access to the real customer's conversation.
    ws.send(json!({"type":"resume","conversation_id":conv,"after_seq":0}))
        .await;
    ws.recv_error("hello_required").await;
    // The connection stays open: a fresh hello works.
    let welcome = ws.hello_customer("New").await;
    assert_ne!(welcome["customer_id"], real.customer_id.as_str());
    let mut c = Customer {
        customer_id: welcome.str_("customer_id").to_string(),
        resume_token: welcome.str_("resume_token").to_string(),
        ws,
        welcome,
    };
    let own = c.start_conversation().await;
    assert_ne!(own, conv);
    assert_recovered(&edge, &mut c, &own).await;

    // Staff with a bogus session token.
    let admin = edge.http().login_admin().await;
    let mut s = Ws::connect(edge.addr(), "bad staff token").await;
    s.send(json!({"type":"hello","role":"staff","token":"st_not-a-session"}))
        .await;
    s.recv_error("unauthorized").await;
    s.hello_staff(&admin.token).await;
    edge.http().assert_healthy().await;
}

#[tokio::test]
async fn another_customers_conversation_is_not_found() {
    let edge = Edge::start().await;
    let (mut owner, conv) = customer_with_conversation(&edge, "Owner").await;
    owner.send_msg(&conv, &cmid(), "private").await;
    let (mut other, own) = customer_with_conversation(&edge, "Nosy").await;

    let e = other
        .try_resume(&conv, 0)
        .await
        .expect_err("resumed a stranger's chat");
    assert_eq!(e["code"], "not_found", "{e}");
    let e = other.send_and_wait(&conv, "c-intrude", "hi there").await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "not_found", "{e}");
    assert_eq!(e["conversation_id"], conv.as_str(), "{e}");
    other
        .expect_none(200, "a message of another customer's chat", |v| {
            v["type"] == "message"
        })
        .await;
    owner
        .expect_none(300, "the intruder's message", |v| v["type"] == "message")
        .await;

    let admin = edge.http().login_admin().await;
    let hist = edge.http().messages(&admin.token, &conv).await;
    assert_eq!(
        hist.len(),
        1,
        "nothing was written into the stranger's chat: {hist:?}"
    );
    let ack = assert_send_still_acked(&mut other.ws, &own).await;
    assert_eq!(ack["seq"], 1, "{ack}");
    edge.http().assert_healthy().await;
}

#[tokio::test]
async fn frames_before_hello_are_hello_required() {
    let edge = Edge::start().await;
    let mut ws = Ws::connect(edge.addr(), "no hello").await;
    ws.send(json!({"type":"start","request_id":"early"})).await;
    let early = ws.recv_error("hello_required").await;
    ws.send(
        json!({"type":"send","conversation_id":"01JDXW7M4S6B0D8F2H5K7N9Q3R",
                   "client_msg_id":"c-early","body":"hi"}),
    )
    .await;
    ws.recv_error("hello_required").await;

    let welcome = ws.hello_customer("Late").await;
    // A second hello is refused, the session stays.
    ws.send(json!({"type":"hello","role":"customer","display_name":"Again"}))
        .await;
    ws.recv_error("already_hello").await;
    let mut c = Customer {
        customer_id: welcome.str_("customer_id").to_string(),
        resume_token: welcome.str_("resume_token").to_string(),
        ws,
        welcome,
    };
    let conv = c.start_conversation().await;
    assert_recovered(&edge, &mut c, &conv).await;
    c.send(json!({"type":"ping"})).await;
    c.recv_type("pong").await;
    // protocol.md §9: request_id is echoed when the offending frame had one.
    assert_eq!(early["request_id"], "early", "{early}");
}

#[tokio::test]
async fn body_too_long_or_empty_is_message_too_long() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__MAX_MESSAGE_CHARS", 4000)).await;
    let (mut c, conv) = customer_with_conversation(&edge, "Long").await;

    let e = c.send_and_wait(&conv, "c-long", &"y".repeat(4001)).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "message_too_long", "{e}");
    assert_eq!(e["conversation_id"], conv.as_str(), "{e}");
    let e = c.send_and_wait(&conv, "c-empty", "").await;
    assert_eq!(e["code"], "message_too_long", "{e}");

    // The limit counts characters: 4000 CJK characters (12,000 bytes) are fine.
    let ack = c.send_msg(&conv, "c-cjk", &"店".repeat(4000)).await;
    assert_eq!(ack["seq"], 1, "the refused bodies stored nothing: {ack}");
    // The same client_msg_id that was refused can be used once the body is fixed.
    let ack = c.send_msg(&conv, "c-long", "shorter now").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    assert_eq!(ack["duplicate"], false, "{ack}");
    assert_recovered(&edge, &mut c, &conv).await;
}

/// protocol.md §1: "The first frame on a connection must be `hello`; anything else is
/// answered with `hello_required`" — `ping` included.
#[tokio::test]
async fn ping_before_hello_is_hello_required() {
    let edge = Edge::start().await;
    let mut ws = Ws::connect(edge.addr(), "ping first").await;
    ws.send(json!({"type":"ping"})).await;
    let r = ws.recv().await;
    assert_eq!(
        r["type"], "error",
        "a ping before hello was answered with {r}"
    );
    assert_eq!(r["code"], "hello_required", "{r}");
    ws.hello_customer("Pinger").await;
    ws.send(json!({"type":"ping"})).await;
    ws.recv_type("pong").await;
}
