//! The appliance's limits as a client meets them (limits.rs, protocol.md §9): the connection
//! cap, the per-connection frame rate, the hello deadline and a client that stops reading.
//! Each is answered with its documented code, counted in `/metrics`, and nobody else notices.

use std::time::Duration;

use aisle_tests::http::metric_value;
use aisle_tests::*;
use tokio::time::Instant;

fn limit_key(limit: &str) -> String {
    format!("aisle_limit_exceeded_total{{limit=\"{limit}\"}}")
}

/// `ping` → `pong` on a connection that said hello.
async fn assert_ping_pong(ws: &mut Ws) {
    ws.send(json!({"type":"ping"})).await;
    ws.recv_type("pong").await;
}

/// With `max_connections = 2`, a third upgrade is refused with HTTP 503
/// `too_many_connections` while the first two keep working; once one closes a new
/// connection is accepted; `/metrics` counts the refusal.
#[tokio::test]
async fn connection_cap_refuses_upgrades_with_503_and_frees_slots_on_close() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__MAX_CONNECTIONS", 2)).await;
    let mut c1 = Customer::connect(&edge, "first").await;
    let mut c2 = Customer::connect(&edge, "second").await;

    let (status, body) = Ws::connect_refused(edge.addr(), "third").await;
    assert_eq!(status, 503, "third upgrade: {status} {body}");
    assert_eq!(
        body.at("/error/code"),
        "too_many_connections",
        "503 body: {body}"
    );
    assert!(body.at("/error/message").is_string(), "503 body: {body}");
    // HTTP itself is not counted against WebSocket connections.
    edge.http().assert_healthy().await;

    // The first two keep working.
    for c in [&mut c1, &mut c2] {
        let conv = c.start_conversation().await;
        assert_send_still_acked(&mut c.ws, &conv).await;
        assert_ping_pong(&mut c.ws).await;
    }

    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, &limit_key("max_connections")) >= 1.0,
        "no {} sample after a refused upgrade:\n{metrics}",
        limit_key("max_connections")
    );

    // One closes: a new connection gets in (the server frees the slot when it sees the close;
    // retry until then, within the hang guard).
    let token1 = c1.resume_token.clone();
    c1.ws.close().await;
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut ws = loop {
        match Ws::try_connect(edge.addr(), "after a close").await {
            Ok(ws) => break ws,
            Err(e) => {
                let refusal = http_refusal(&e);
                assert!(
                    matches!(&refusal, Some((503, b)) if b.at("/error/code") == "too_many_connections"),
                    "upgrade after a close failed otherwise: {e:#} {refusal:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "no connection accepted within {RECV_TIMEOUT:?} after one of two closed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let welcome = ws.hello_customer_token(&token1).await;
    assert_eq!(welcome["customer_id"], c1.customer_id.as_str(), "{welcome}");
    assert_ping_pong(&mut ws).await;
    assert_ping_pong(&mut c2.ws).await;
    // Full again.
    let (status, body) = Ws::connect_refused(edge.addr(), "third again").await;
    assert_eq!(status, 503, "{body}");
}

/// With 5 frames per second (burst 5), a burst of 20 pings is partly answered with
/// `rate_limited` (one answer per ping: `pong` or the error), the connection stays open and
/// works after a pause, and `/metrics` counts it.
#[tokio::test]
async fn frame_rate_limit_answers_rate_limited_and_the_connection_survives() {
    let edge = Edge::start_with(EdgeOptions {
        raise_rate_limits: false,
        ..EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_FRAMES_PER_SEC", 5)
            .env("AISLE_LIMITS__MAX_FRAMES_BURST", 5)
    })
    .await;
    let mut c = Customer::connect(&edge, "Hasty").await;
    const N: usize = 20;
    for _ in 0..N {
        c.send(json!({"type":"ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..N {
        let f = c.recv().await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(f["message"].is_string(), "{f}");
                limited += 1
            }
            _ => panic!("{}", c.report(&format!("unexpected answer to a ping: {f}"))),
        }
    }
    assert!(
        limited >= 1,
        "{}",
        c.report(&format!("{N} pings at once: none was rate_limited"))
    );
    assert!(pongs >= 1, "{}", c.report("no ping at all was answered"));
    c.expect_silence(200).await;
    assert!(
        !c.is_closed(),
        "{}",
        c.report("rate limiting closed the connection")
    );

    // After a pause the bucket has refilled: the connection works.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ping_pong(&mut c.ws).await;
    let conv = c.start_conversation().await;
    assert_send_still_acked(&mut c.ws, &conv).await;

    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, &limit_key("max_frames_per_sec")) >= limited as f64,
        "{} should count the {limited} dropped frames:\n{metrics}",
        limit_key("max_frames_per_sec")
    );
}

/// With `hello_timeout_ms = 500`, a connection that never says hello is told
/// `hello_required` and closed; one that said hello in time is not affected.
#[tokio::test]
async fn connection_without_hello_is_closed_after_the_hello_timeout() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__HELLO_TIMEOUT_MS", 500)).await;
    let mut polite = Customer::connect(&edge, "Polite").await;
    let mut mute = Ws::connect(edge.addr(), "never says hello").await;

    let close = mute.wait_close().await;
    let frames = mute.take_backlog();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "hello_required"),
        "{}",
        mute.report(&format!(
            "closed ({close:?}) without a hello_required error: {frames:?}"
        ))
    );
    assert!(mute.is_closed());

    // Well past the deadline, the connection that said hello is still open and working.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_ping_pong(&mut polite.ws).await;
    let conv = polite.start_conversation().await;
    assert_send_still_acked(&mut polite.ws, &conv).await;
    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, &limit_key("hello_timeout_ms")) >= 1.0,
        "{}",
        metrics
    );
    edge.http().assert_healthy().await;
}

/// A customer connection that stops reading while the staff member sends many large
/// messages is dropped (`slow_consumer`, close 1008) once its queue of
/// `max_outbound_frames = 16` fills; the staff member's sends are all acked meanwhile, the
/// server stays healthy, and a fresh connection of the customer resumes from 0 and gets
/// every message: nothing is lost.
#[tokio::test]
async fn slow_consumer_is_dropped_without_losing_messages() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_OUTBOUND_FRAMES", 16)
            // The stalled socket write must not time out before the test reads again, so
            // that the documented slow_consumer + 1008 goodbye is what the client sees.
            .env("AISLE_LIMITS__WRITE_TIMEOUT_MS", 120_000)
            // Room for a few thousand large messages in one conversation.
            .env("AISLE_LIMITS__MAX_DOCUMENT_BYTES", 256 * 1024 * 1024),
    )
    .await;
    let admin = edge.http().login_admin().await;
    let session = edge
        .http()
        .create_and_login_staff(&admin, "flood", "Flood Staff", 8)
        .await;
    let mut s = StaffConn::connect(&edge, &session, "staff").await;
    let mut stalled = Customer::connect(&edge, "Stalled").await;
    let token = stalled.resume_token.clone();
    let customer_id = stalled.customer_id.clone();
    let conv = stalled.start_conversation().await;
    let st = stalled.recv_state(&conv, "assigned").await;
    assert_eq!(st["agent"]["id"], s.id(), "{st}");
    // From here on the customer's socket is not read at all (nothing polls the stream).

    let kicked_key = limit_key("max_outbound_frames");
    let body_of = |i: usize| {
        let head = format!("message {i:05} ");
        let mut b = head.clone();
        while b.chars().count() < 3500 {
            b.push_str("the blue one in size 40, aisle 4; ");
        }
        b.chars().take(3500).collect::<String>()
    };
    let mut acks: Vec<Value> = Vec::new();
    let mut kicked_at = None;
    const BATCH: usize = 32;
    const MAX_MESSAGES: usize = 4000;
    while acks.len() < MAX_MESSAGES {
        // A batch of pipelined sends, then their acks.
        let ids: Vec<String> = (0..BATCH).map(|_| cmid()).collect();
        for (k, id) in ids.iter().enumerate() {
            s.send(
                json!({"type":"send","conversation_id":conv,"client_msg_id":id,
                          "body":body_of(acks.len() + k + 1)}),
            )
            .await;
        }
        for id in &ids {
            let ack = s
                .recv_reply("ack", |v| v["client_msg_id"] == id.as_str())
                .await;
            assert_eq!(
                ack["type"],
                "ack",
                "{}",
                s.report(&format!("a staff send was refused during the flood: {ack}"))
            );
            acks.push(ack);
        }
        match kicked_at {
            None => {
                let m = edge.http().metrics().await;
                if metric_value(&m, &kicked_key) >= 1.0 {
                    kicked_at = Some(acks.len());
                }
            }
            // A few more batches after the drop: messages the old connection never got.
            Some(at) if acks.len() >= at + 2 * BATCH => break,
            Some(_) => {}
        }
    }
    let kicked_at = kicked_at.unwrap_or_else(|| {
        panic!(
            "{} messages of 3,500 characters to a client that does not read, and its \
             connection was never dropped ({kicked_key} stayed 0)",
            acks.len()
        )
    });
    let total = acks.len() as u64;
    eprintln!("slow consumer dropped after {kicked_at} messages; {total} sent");
    let seqs: Vec<u64> = acks.iter().map(|a| a.u64_("seq")).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "acked seqs");
    edge.http().assert_healthy().await;

    // The stalled client reads again: it gets what was buffered, then the goodbye.
    let close = stalled.wait_close().await;
    let frames = stalled.take_backlog();
    let got: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f.u64_("seq"))
        .collect();
    assert!(
        (got.len() as u64) < total,
        "the stalled connection received all {total} messages: it was never dropped"
    );
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "what the stalled connection did get is in order without gaps"
    );
    let err = frames.iter().find(|f| f["type"] == "error");
    assert_eq!(
        err.map(|e| e["code"].clone()),
        Some(json!("slow_consumer")),
        "{}",
        stalled.report(&format!("the dropped connection's error (close {close:?})"))
    );
    assert_eq!(
        close.as_ref().map(|c| c.0),
        Some(1008),
        "{}",
        stalled.report("slow_consumer closes with 1008")
    );

    // The staff connection is unaffected and the server healthy.
    assert_ping_pong(&mut s.ws).await;
    edge.http().assert_healthy().await;
    let metrics = edge.http().metrics().await;
    assert!(metric_value(&metrics, &kicked_key) >= 1.0, "{metrics}");

    // A fresh connection of the same customer gets everything.
    let mut fresh = Customer::connect_with_token(&edge, &token, "Stalled, reconnected").await;
    assert_eq!(fresh.customer_id, customer_id);
    let res = fresh.resume_all(&conv, 0).await;
    assert_eq!(
        res.seqs(),
        (1..=total).collect::<Vec<_>>(),
        "resume after_seq 0 must replay every acked message"
    );
    for (m, ack) in res.messages.iter().zip(&acks) {
        assert_eq!(m["id"], ack["message_id"], "{}", m["seq"]);
        assert_eq!(m["body"], body_of(m.u64_("seq") as usize), "{}", m["seq"]);
        assert_eq!(m["sender"]["id"], s.id(), "{}", m["seq"]);
    }
    // And it is live again.
    let ack = s.send_msg(&conv, &cmid(), "welcome back").await;
    let m = fresh.recv_message(&conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
}
