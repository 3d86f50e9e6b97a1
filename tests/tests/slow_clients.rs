//! A staff tablet that stops reading while its chats are busy: it is dropped with the
//! documented `slow_consumer` error and close code 1008 (protocol.md §8, §9), the server's
//! memory stays bounded, and everyone else — the same staff member's other tablet and every
//! customer — gets every ack and every message.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use aisle_tests::connbench::rss_bytes;
use aisle_tests::http::metric_value;
use aisle_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Tablets of the staff member that stop reading.
const STALLED: usize = 6;
/// Customers, each in its own conversation assigned to that staff member.
const CUSTOMERS: usize = 16;
/// Messages each customer sends per round (16 × 40 = 640 frames to every tablet); rounds go
/// on until the stalled tablets' queues (the default `max_outbound_frames`, 1,024) and their
/// sockets' kernel buffers are full and they are dropped.
const ROUND: usize = 40;
/// A guard: this many rounds without every stalled tablet dropped fails the test.
const MAX_ROUNDS: usize = 25;
/// Characters per message.
const BODY_CHARS: usize = 2000;
/// Sends a customer keeps in flight.
const WINDOW: usize = 8;
/// Growth of the server's resident memory allowed over the whole flood. What grows: the
/// conversations' documents the writer keeps in memory (the messages themselves), the frames
/// queued for the stalled tablets (at most `max_outbound_frames` each) and the allocator's
/// slack, which depends on the machine and on how many rounds the kicks took: measured 17–37
/// MiB here and 78 MiB on a CI machine (3 rounds of 640 × 2 KB frames to each of 7 tablets).
/// SQLite's page caches, which fill with the flood's pages as they please, are set small in
/// this test. The bound is a guard against memory kept after the kick (a stalled tablet's
/// queue not freed); the queues' own bound is shown by the kicks: a server that kept queueing
/// for the stalled tablets would never drop them, and `MAX_ROUNDS` rounds of the flood
/// (25 × 640 frames × 2 KB to each of 6 tablets, 200 MB) fail the test first.
const RSS_GROWTH_BOUND_BYTES: u64 = 160 * 1024 * 1024;
/// The SQLite page caches of the edge under test, in KiB each.
const PAGE_CACHE_KIB: u32 = 2_000;

fn body_of(customer: usize, i: usize) -> String {
    let mut b = format!("customer {customer:02} message {i:04} ");
    while b.chars().count() < BODY_CHARS {
        b.push_str("do you have the blue one in size 40? ");
    }
    b.chars().take(BODY_CHARS).collect()
}

/// A staff tablet with a 4 KiB socket receive buffer, so that the server's writes to it block
/// soon after it stops reading (a phone on a bad network, without megabytes of kernel buffer
/// on loopback in between).
async fn connect_stalled(addr: SocketAddr, token: &str) -> WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(addr).await.expect("connect");
    let cfg = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(cfg))
            .await
            .expect("upgrade");
    ws.send(Message::text(
        json!({"type":"hello","role":"staff","token":token}).to_string(),
    ))
    .await
    .expect("hello");
    loop {
        let m = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("welcome in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            assert_ne!(v["type"], "error", "staff hello refused: {v}");
            if v["type"] == "welcome" {
                return ws;
            }
        }
    }
}

/// What a stalled tablet finds when it reads again: message frames, error codes, the close.
struct Drained {
    messages: usize,
    errors: Vec<String>,
    close: Option<(u16, String)>,
    /// How the stream ended when it did without a close frame.
    end: Option<String>,
}

async fn drain(mut ws: WebSocketStream<TcpStream>) -> Drained {
    let mut d = Drained {
        messages: 0,
        errors: Vec::new(),
        close: None,
        end: None,
    };
    loop {
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("the stalled tablet was neither sent more nor closed");
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json");
                match v["type"].as_str() {
                    Some("message") => d.messages += 1,
                    Some("error") => d.errors.push(v["code"].as_str().unwrap_or("").into()),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(c))) => {
                d.close = c.map(|c| (u16::from(c.code), c.reason.to_string()));
                return d;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                d.end = Some(e.to_string());
                return d;
            }
            None => {
                d.end = Some("end of stream".into());
                return d;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_tablet_that_stops_reading_is_dropped_and_nobody_else_notices() {
    // The default `max_outbound_frames`: a tablet that reads, even on a loaded machine, keeps
    // up; a smaller queue would drop slow-but-reading clients too.
    let edge = Edge::start_with(
        EdgeOptions::default()
            // The blocked write must outlast the flood, so that the stalled tablets, reading
            // again, get the documented goodbye rather than a cut connection.
            .env("AISLE_LIMITS__WRITE_TIMEOUT_MS", 120_000)
            // No heartbeat pings during the test: a stalled tablet reading again would answer
            // a queued ping with a pong, and if the server has already written its goodbye
            // and closed, that pong is answered with a reset that discards the goodbye unread.
            .env("AISLE_LIMITS__HEARTBEAT_INTERVAL_SECS", 3600)
            .env("AISLE_LIMITS__IDLE_TIMEOUT_SECS", 7200)
            .env("AISLE_LIMITS__WRITER_PAGE_CACHE_KIB", PAGE_CACHE_KIB)
            .env("AISLE_LIMITS__READER_PAGE_CACHE_KIB", PAGE_CACHE_KIB),
    )
    .await;
    let pid = edge.pid().expect("server pid");
    let admin = edge.http().login_admin().await;
    let session = edge
        .http()
        .create_and_login_staff(&admin, "busy", "Busy Staff", CUSTOMERS as u32 + 4)
        .await;
    let mut watching = StaffConn::connect(&edge, &session, "reading tablet").await;
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(connect_stalled(edge.addr(), &session.token).await);
    }
    // From here on the stalled tablets are not read until the flood is over.

    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        let mut c = Customer::connect(&edge, &format!("Shopper {i}")).await;
        let conv = c.start_conversation().await;
        let st = c.recv_state(&conv, "assigned").await;
        assert_eq!(st["agent"]["id"], session.id.as_str(), "{st}");
        customers.push((c, conv));
    }
    let convs: Vec<String> = customers.iter().map(|(_, c)| c.clone()).collect();

    // The reading tablet reads everything, concurrently with the flood, until it has as many
    // messages as were acked in all (told once the flood is over).
    let (total_tx, mut total_rx) = tokio::sync::watch::channel(None::<usize>);
    let reader = tokio::spawn(async move {
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut n = 0;
        loop {
            if let Some(total) = *total_rx.borrow()
                && n >= total
            {
                break;
            }
            tokio::select! {
                _ = total_rx.changed() => {}
                f = watching.recv() => {
                    if f["type"] == "message" {
                        got.entry(f.str_("conversation_id").to_string())
                            .or_default()
                            .push(f.u64_("seq"));
                        n += 1;
                    }
                }
            }
        }
        (watching, got)
    });
    let rss_before = rss_bytes(pid).expect("server RSS");

    // Rounds of sends by every customer at once, until every stalled tablet has been dropped
    // (its queue full), and one round more.
    let kicked = "aisle_limit_exceeded_total{limit=\"max_outbound_frames\"}";
    let mut rounds = 0;
    let mut after_kicks = None;
    while after_kicks.is_none_or(|r| rounds < r + 1) {
        assert!(
            rounds < MAX_ROUNDS,
            "{} messages to tablets that do not read, and they were not all dropped",
            rounds * ROUND * CUSTOMERS
        );
        let first = rounds * ROUND;
        let mut senders = Vec::new();
        for (k, (mut c, conv)) in customers.into_iter().enumerate() {
            senders.push(tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(ROUND);
                let mut i = 0;
                while i < ROUND {
                    let ids: Vec<String> = (0..WINDOW.min(ROUND - i)).map(|_| cmid()).collect();
                    for (j, id) in ids.iter().enumerate() {
                        c.send(
                            json!({"type":"send","conversation_id":conv,"client_msg_id":id,
                                      "body":body_of(k, first + i + j + 1)}),
                        )
                        .await;
                    }
                    for id in &ids {
                        let ack = c
                            .recv_reply("ack", |v| v["client_msg_id"] == id.as_str())
                            .await;
                        assert_eq!(
                            ack["type"],
                            "ack",
                            "{}",
                            c.report(&format!("a customer's send was refused: {ack}"))
                        );
                        seqs.push(ack.u64_("seq"));
                    }
                    i += ids.len();
                }
                (c, conv, seqs)
            }));
        }
        customers = Vec::new();
        for s in senders {
            let (c, conv, seqs) = s.await.expect("customer task");
            assert_eq!(
                seqs,
                ((first + 1) as u64..=(first + ROUND) as u64).collect::<Vec<_>>(),
                "every send of a customer is acked, in order"
            );
            customers.push((c, conv));
        }
        rounds += 1;
        if after_kicks.is_none()
            && metric_value(&edge.http().metrics().await, kicked) >= STALLED as f64
        {
            after_kicks = Some(rounds);
        }
    }
    let sent = rounds * ROUND;
    let expected = CUSTOMERS * sent;
    total_tx.send(Some(expected)).expect("reader waits");
    let (mut watching, got) = reader.await.expect("reading tablet");
    let rss_after = rss_bytes(pid).expect("server RSS");
    for conv in &convs {
        assert_eq!(
            got.get(conv).cloned().unwrap_or_default(),
            (1..=sent as u64).collect::<Vec<_>>(),
            "the reading tablet got every message of {conv} once, in order"
        );
    }
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "server RSS {} KiB before the flood, {} KiB after ({} KiB growth) over {rounds} rounds \
         with {STALLED} stalled tablets and {} KB sent to each",
        rss_before / 1024,
        rss_after / 1024,
        growth / 1024,
        expected * BODY_CHARS / 1_000
    );
    assert!(
        growth < RSS_GROWTH_BOUND_BYTES,
        "the server's RSS grew by {growth} bytes during the flood (bound {RSS_GROWTH_BOUND_BYTES})"
    );

    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, kicked) >= STALLED as f64,
        "each stalled tablet's full queue is counted ({kicked}):\n{metrics}"
    );

    // The stalled tablets read again: part of the traffic, then `slow_consumer` and 1008.
    for ws in stalled {
        let d = drain(ws).await;
        assert!(
            d.messages < expected,
            "a stalled tablet got all {expected} messages: it was never dropped"
        );
        assert_eq!(
            d.errors,
            vec!["slow_consumer".to_string()],
            "errors of a dropped tablet ({} messages, close {:?}, end {:?})",
            d.messages,
            d.close,
            d.end
        );
        assert_eq!(
            d.close,
            Some((1008, "slow consumer".to_string())),
            "close of a dropped tablet"
        );
    }
    eventually(
        "only the reading tablet is left as a staff connection",
        RECV_TIMEOUT,
        async || {
            let m = edge.http().metrics().await;
            match metric_value(&m, "aisle_connections{role=\"staff\"}") {
                1.0 => Ok(()),
                n => Err(format!("aisle_connections{{role=\"staff\"}} = {n}")),
            }
        },
    )
    .await;

    // The staff member is still online on the reading tablet, which works both ways.
    watching.send(json!({"type":"ping"})).await;
    watching.recv_type("pong").await;
    let (c, conv) = (&mut customers[0].0, &convs[0]);
    let ack = watching.send_msg(conv, &cmid(), "still here").await;
    let m = c.recv_message(conv).await;
    assert_eq!(m["id"], ack["message_id"], "{m}");
    edge.http().assert_healthy().await;
}
