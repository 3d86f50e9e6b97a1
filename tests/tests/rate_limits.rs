//! Per-client rate limits (docs/security.md "Rate limits"): failed logins per IP and per
//! username on the edge and the hub, hand-off and enrollment guessing, WebSocket frames and new
//! connections per IP across connections. Clients are bound to other loopback addresses
//! (127.0.0.2, …) to be other IPs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aisle_tests::{
    ADMIN_PASSWORD, ADMIN_USER, Customer, Edge, EdgeOptions, HUB_ADMIN_PASSWORD, Hub, Json, Value,
    cmid, eventually, json, metric_value,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// An HTTP answer with the header a throttled client needs.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    #[track_caller]
    fn assert_rate_limited(&self) {
        assert_eq!(self.status, 429, "expected 429, got {self:?}");
        assert_eq!(self.body["error"]["code"], "rate_limited", "{self:?}");
        let retry = self.retry_after.expect("429 without Retry-After");
        assert!(retry >= 1, "Retry-After {retry}");
    }
}

/// `POST base+path` with a JSON body from the local address `from`.
async fn post_from(from: [u8; 4], base: &str, path: &str, body: &Value) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(from))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let resp = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} from {from:?}: {e}"));
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn login_from(from: [u8; 4], base: &str, username: &str, password: &str) -> Answer {
    post_from(
        from,
        base,
        "/api/login",
        &json!({"username": username, "password": password}),
    )
    .await
}

/// A WebSocket client connected from the local address `from`.
struct WsFrom(WebSocketStream<TcpStream>);

async fn try_ws_from(from: [u8; 4], addr: SocketAddr) -> Result<WsFrom, tungstenite::Error> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let tcp = socket.connect(addr).await?;
    let (stream, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await?;
    Ok(WsFrom(stream))
}

impl WsFrom {
    async fn connect(from: [u8; 4], addr: SocketAddr) -> WsFrom {
        try_ws_from(from, addr)
            .await
            .unwrap_or_else(|e| panic!("WebSocket from {from:?}: {e}"))
    }

    async fn send(&mut self, frame: Value) {
        self.0
            .send(Message::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON text frame (pings skipped); panics after 10 s.
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("no frame within 10 s")
                .expect("connection ended")
                .expect("read");
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).expect("JSON frame");
            }
        }
    }

    async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == ty {
                return frame;
            }
            assert_ne!(frame["type"], "error", "waiting for {ty}: {frame}");
        }
    }
}

fn limit_count(metrics: &str, name: &str) -> f64 {
    metric_value(
        metrics,
        &format!("aisle_limit_exceeded_total{{limit=\"{name}\"}}"),
    )
}

#[tokio::test]
async fn login_brute_force_gets_429_while_another_address_logs_in() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_LOGIN_FAILURES_PER_IP_PER_WINDOW", 5)
            .env(
                "AISLE_LIMITS__MAX_LOGIN_FAILURES_PER_USERNAME_PER_WINDOW",
                1000,
            )
            .env("AISLE_LIMITS__FAILURE_WINDOW_SECS", 600),
    )
    .await;
    let base = edge.base_url();
    let attacker = [127, 0, 0, 1];
    // Wrong passwords and unknown usernames both count.
    for i in 0..5 {
        let user = if i % 2 == 0 { ADMIN_USER } else { "nobody" };
        let answer = login_from(attacker, &base, user, &format!("guess-{i}")).await;
        assert_eq!(answer.status, 401, "attempt {i}: {answer:?}");
        assert_eq!(answer.body["error"]["code"], "invalid_credentials");
    }
    // Past the limit even the right password is refused unread.
    for _ in 0..3 {
        let answer = login_from(attacker, &base, ADMIN_USER, ADMIN_PASSWORD).await;
        answer.assert_rate_limited();
        assert!(answer.retry_after.unwrap() <= 600, "{answer:?}");
        assert!(answer.body.get("token").is_none());
    }
    // Another address (another phone, another tablet) is not locked out.
    let other = login_from([127, 0, 0, 2], &base, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(other.status, 200, "{other:?}");
    assert!(other.body["token"].as_str().is_some());

    let metrics = edge.http().metrics().await;
    assert_eq!(
        limit_count(&metrics, "max_login_failures_per_ip_per_window"),
        3.0,
        "every refused request is counted"
    );
    // Logged once for the key and window, not once per refused request.
    let logged = edge
        .logs()
        .lines()
        .filter(|l| l.contains("max_login_failures_per_ip_per_window"))
        .count();
    assert_eq!(logged, 1, "{}", edge.logs());
}

#[tokio::test]
async fn login_failures_per_username_lock_that_username_from_every_address() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_LOGIN_FAILURES_PER_IP_PER_WINDOW", 1000)
            .env(
                "AISLE_LIMITS__MAX_LOGIN_FAILURES_PER_USERNAME_PER_WINDOW",
                3,
            )
            .env("AISLE_LIMITS__FAILURE_WINDOW_SECS", 600),
    )
    .await;
    let admin = edge.http().login_admin().await;
    edge.http()
        .create_staff(&admin, "ann", "Ann", "ann-password-1", 4)
        .await;
    let base = edge.base_url();
    // A distributed guess: three addresses, one username.
    for (i, from) in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]]
        .into_iter()
        .enumerate()
    {
        let answer = login_from(from, &base, ADMIN_USER, &format!("guess-{i}")).await;
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    login_from([127, 0, 0, 5], &base, ADMIN_USER, ADMIN_PASSWORD)
        .await
        .assert_rate_limited();
    // Other accounts log in from the same addresses.
    let ann = login_from([127, 0, 0, 2], &base, "ann", "ann-password-1").await;
    assert_eq!(ann.status, 200, "{ann:?}");
    let metrics = edge.http().metrics().await;
    assert_eq!(
        limit_count(&metrics, "max_login_failures_per_username_per_window"),
        1.0
    );
}

#[tokio::test]
async fn the_correct_password_works_again_after_the_window() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_LOGIN_FAILURES_PER_IP_PER_WINDOW", 2)
            // Long enough for two Argon2 checks of a debug build on a busy machine.
            .env("AISLE_LIMITS__FAILURE_WINDOW_SECS", 12),
    )
    .await;
    let base = edge.base_url();
    let from = [127, 0, 0, 6];
    for i in 0..2 {
        let answer = login_from(from, &base, ADMIN_USER, &format!("guess-{i}")).await;
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    let locked = login_from(from, &base, ADMIN_USER, ADMIN_PASSWORD).await;
    locked.assert_rate_limited();
    assert!(locked.retry_after.unwrap() <= 12, "{locked:?}");
    let answer = eventually(
        "the right password accepted once the window ended",
        Duration::from_secs(40),
        async || {
            let answer = login_from(from, &base, ADMIN_USER, ADMIN_PASSWORD).await;
            match answer.status {
                200 => Ok(answer),
                429 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(format!("{answer:?}"))
                }
                _ => panic!("neither 200 nor 429: {answer:?}"),
            }
        },
    )
    .await;
    assert!(answer.body["token"].as_str().is_some(), "{answer:?}");
}

#[tokio::test]
async fn handoff_code_guessing_is_refused_per_address() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_HANDOFF_FAILURES_PER_IP_PER_WINDOW", 3)
            .env("AISLE_LIMITS__FAILURE_WINDOW_SECS", 600),
    )
    .await;
    let mut customer = Customer::connect(&edge, "Ada").await;
    let conversation = customer.start_conversation().await;
    customer
        .send(json!({"type":"handoff","conversation_id":conversation}))
        .await;
    let code = customer.recv_type("handoff").await.str_("code").to_string();
    let base = edge.base_url();
    let guesser = [127, 0, 0, 7];
    for guess in ["AAAAAAAA", "BBBBBBBB", "CCCCCCCC"] {
        let answer = post_from(guesser, &base, &format!("/api/handoff/{guess}"), &json!({})).await;
        assert_eq!(answer.status, 404, "{answer:?}");
    }
    // The real code from the guessing address is refused unread (and stays unused) …
    post_from(guesser, &base, &format!("/api/handoff/{code}"), &json!({}))
        .await
        .assert_rate_limited();
    // … and works from the customer's other device.
    let redeemed = post_from(
        [127, 0, 0, 8],
        &base,
        &format!("/api/handoff/{code}"),
        &json!({}),
    )
    .await;
    assert_eq!(redeemed.status, 200, "{redeemed:?}");
    assert_eq!(redeemed.body["conversation_id"], conversation.as_str());
}

#[tokio::test]
async fn per_ip_frame_limit_spans_all_connections_of_the_address() {
    // Per connection the limit is raised (the harness); per address: a burst of 20 frames,
    // then one a second.
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_FRAMES_PER_IP_PER_SEC", 1)
            .env("AISLE_LIMITS__MAX_FRAMES_PER_IP_BURST", 20),
    )
    .await;
    let addr = edge.addr();
    let phone = [127, 0, 0, 9];
    let mut a = WsFrom::connect(phone, addr).await;
    let mut b = WsFrom::connect(phone, addr).await;
    let mut conversations = Vec::new();
    for ws in [&mut a, &mut b] {
        ws.send(json!({"type":"hello","role":"customer","display_name":"phone"}))
            .await;
        ws.recv_type("welcome").await;
        ws.send(json!({"type":"start","request_id":"r1"})).await;
        conversations.push(
            ws.recv_type("started")
                .await
                .str_("conversation_id")
                .to_string(),
        );
    }
    // 4 frames used; 7 acked sends on each connection bring the address to 18 of 20.
    for (ws, conversation) in [(&mut a, &conversations[0]), (&mut b, &conversations[1])] {
        for i in 0..7 {
            ws.send(json!({"type":"send","conversation_id":conversation,
                "client_msg_id":cmid(),"body":format!("message {i}")}))
                .await;
            ws.recv_type("ack").await;
        }
    }
    // Ten more frames on each connection at once: both run out, although each connection
    // alone is far below its own limit.
    for (ws, conversation) in [(&mut a, &conversations[0]), (&mut b, &conversations[1])] {
        for i in 0..10 {
            ws.send(json!({"type":"send","conversation_id":conversation,
                "client_msg_id":cmid(),"body":format!("burst {i}")}))
                .await;
        }
        let mut limited = 0;
        for _ in 0..10 {
            let frame = ws.recv().await;
            match frame["type"].as_str() {
                Some("ack") => {}
                Some("error") => {
                    assert_eq!(frame["code"], "rate_limited", "{frame}");
                    limited += 1;
                }
                _ => panic!("unexpected {frame}"),
            }
        }
        assert!(limited >= 1, "no frame of this connection was rate limited");
    }
    // Another address chats on.
    let mut other = WsFrom::connect([127, 0, 0, 10], addr).await;
    other
        .send(json!({"type":"hello","role":"customer","display_name":"other"}))
        .await;
    other.recv_type("welcome").await;
    other.send(json!({"type":"start","request_id":"r1"})).await;
    let theirs = other
        .recv_type("started")
        .await
        .str_("conversation_id")
        .to_string();
    other
        .send(json!({"type":"send","conversation_id":theirs,"client_msg_id":cmid(),"body":"hi"}))
        .await;
    other.recv_type("ack").await;
    // Nothing acknowledged before was lost.
    let admin = edge.http().login_admin().await;
    let kept = edge.http().messages(&admin.token, &conversations[0]).await;
    assert!(kept.len() >= 7, "{kept:?}");
    let metrics = edge.http().metrics().await;
    assert!(limit_count(&metrics, "max_frames_per_ip_per_sec") >= 2.0);
}

#[tokio::test]
async fn new_connections_per_ip_are_limited() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__MAX_NEW_CONNECTIONS_PER_IP_PER_SEC", 1)
            .env("AISLE_LIMITS__MAX_NEW_CONNECTIONS_PER_IP_BURST", 3),
    )
    .await;
    let addr = edge.addr();
    let from = [127, 0, 0, 11];
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        match try_ws_from(from, addr).await {
            Ok(ws) => held.push(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let body: Value = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                refused = Some((resp.status().as_u16(), body, resp.headers().clone()));
                break;
            }
            Err(e) => panic!("connect failed without an HTTP answer: {e}"),
        }
    }
    let (status, body, headers) = refused.expect("eight connections at once were all accepted");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(headers.get("retry-after").is_some());
    assert!(held.len() >= 3, "the burst of 3 was not allowed");
    // The connections already open still work, and another address connects.
    let ws = &mut held[0];
    ws.send(json!({"type":"hello","role":"customer"})).await;
    ws.recv_type("welcome").await;
    let mut other = WsFrom::connect([127, 0, 0, 12], addr).await;
    other.send(json!({"type":"hello","role":"customer"})).await;
    other.recv_type("welcome").await;
    let metrics = edge.http().metrics().await;
    assert!(limit_count(&metrics, "max_new_connections_per_ip_per_sec") >= 1.0);
}

#[tokio::test]
async fn hub_login_and_enrollment_guessing_is_refused() {
    let mut hub = Hub::start("eu-west").await;
    hub.set_env(
        "AISLE_HUB_LIMITS__MAX_LOGIN_FAILURES_PER_USERNAME_PER_WINDOW",
        3,
    );
    hub.set_env("AISLE_HUB_LIMITS__MAX_ENROLL_FAILURES_PER_IP_PER_WINDOW", 3);
    hub.set_env("AISLE_HUB_LIMITS__FAILURE_WINDOW_SECS", 600);
    hub.restart().await;
    // Logged in before the guessing: the guesses lock the username out for everyone.
    hub.admin_token().await;
    let base = hub.url();
    for i in 0..3 {
        let answer = login_from([127, 0, 0, 2], &base, "admin", &format!("guess-{i}")).await;
        assert_eq!(answer.status, 401, "{answer:?}");
        assert_eq!(answer.body["error"]["code"], "invalid_credentials");
    }
    login_from([127, 0, 0, 3], &base, "admin", HUB_ADMIN_PASSWORD)
        .await
        .assert_rate_limited();

    // Enrollment: a store's token guessed from one address.
    let token = hub.register_store("sh-01").await;
    let guesser = [127, 0, 0, 4];
    for i in 0..3 {
        let answer = post_from(
            guesser,
            &base,
            "/api/enroll",
            &json!({"store_id":"sh-01","enrollment_token":format!("et_guess{i}")}),
        )
        .await;
        assert_eq!(answer.status, 401, "{answer:?}");
    }
    post_from(
        guesser,
        &base,
        "/api/enroll",
        &json!({"store_id":"sh-01","enrollment_token":token}),
    )
    .await
    .assert_rate_limited();
    // The real store, from its own address, enrolls with its token (not used up above).
    let enrolled = post_from(
        [127, 0, 0, 5],
        &base,
        "/api/enroll",
        &json!({"store_id":"sh-01","enrollment_token":token}),
    )
    .await;
    assert_eq!(enrolled.status, 200, "{enrolled:?}");
    assert!(enrolled.body["credential"].as_str().is_some());
    let metrics = hub.http().metrics().await;
    for limit in [
        "max_login_failures_per_username_per_window",
        "max_enroll_failures_per_ip_per_window",
    ] {
        assert_eq!(
            metric_value(
                &metrics,
                &format!("aisle_hub_limit_exceeded_total{{limit=\"{limit}\"}}")
            ),
            1.0,
            "{limit}"
        );
    }
}
