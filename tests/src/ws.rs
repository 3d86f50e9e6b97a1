//! A test WebSocket client for the chat protocol (docs/protocol.md) over tokio-tungstenite.
//!
//! Every receive has a [`RECV_TIMEOUT`] that only guards against hangs; on timeout it panics
//! with every frame the connection has seen, so a failing test shows the conversation.
//! Frames skipped while waiting for a particular one are kept in a *backlog* (in arrival
//! order) and are found by later receives: waiting for an `ok` and then for a `state` works
//! whichever of the two the server sent first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Upper bound for one receive (a hang guard, never a speed assertion).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a field of a JSON frame: `"seq"` is a field, `"/agent/id"` a JSON pointer.
pub trait Json {
    /// The value at `path` (`Value::Null` when absent).
    fn at(&self, path: &str) -> &Value;
    /// The string at `path`; panics with the frame when it is not a string.
    #[track_caller]
    fn str_(&self, path: &str) -> &str {
        match self.at(path).as_str() {
            Some(s) => s,
            None => panic!("expected a string at {path}"),
        }
    }
    /// The unsigned integer at `path`; panics when it is not one.
    #[track_caller]
    fn u64_(&self, path: &str) -> u64 {
        match self.at(path).as_u64() {
            Some(n) => n,
            None => panic!("expected an unsigned integer at {path}"),
        }
    }
}

impl Json for Value {
    fn at(&self, path: &str) -> &Value {
        static NULL: Value = Value::Null;
        if path.starts_with('/') {
            self.pointer(path).unwrap_or(&NULL)
        } else {
            self.get(path).unwrap_or(&NULL)
        }
    }
    #[track_caller]
    fn str_(&self, path: &str) -> &str {
        match self.at(path).as_str() {
            Some(s) => s,
            None => panic!("expected a string at {path} in {self}"),
        }
    }
    #[track_caller]
    fn u64_(&self, path: &str) -> u64 {
        match self.at(path).as_u64() {
            Some(n) => n,
            None => panic!("expected an unsigned integer at {path} in {self}"),
        }
    }
}

/// The HTTP status and JSON body of a refused WebSocket upgrade, if `err` (from
/// [`Ws::try_connect`]) is one.
pub fn http_refusal(err: &anyhow::Error) -> Option<(u16, Value)> {
    match err.downcast_ref::<tokio_tungstenite::tungstenite::Error>()? {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Some((resp.status().as_u16(), body))
        }
        _ => None,
    }
}

/// A fresh client message id (`c-` + ULID).
pub fn cmid() -> String {
    format!("c-{}", ulid::Ulid::new())
}

/// True when `s` looks like a ULID (26 Crockford base32 characters).
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26 && s.parse::<ulid::Ulid>().is_ok()
}

/// The answer to `resume`: the replayed `message` frames, the `state` frame and `resumed`.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub messages: Vec<Value>,
    /// The stored read cursors replayed as `read` frames.
    pub reads: Vec<Value>,
    pub state: Option<Value>,
    pub resumed: Value,
}

impl Resumed {
    /// The `seq` of every replayed message, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.messages.iter().map(|m| m.u64_("seq")).collect()
    }
}

enum Next {
    Frame(Value),
    Closed,
    Timeout,
}

/// One WebSocket connection to `/ws`.
pub struct Ws {
    name: String,
    stream: WebSocketStream<TcpStream>,
    backlog: VecDeque<Value>,
    seen: Vec<String>,
    /// `Some(close)` once the connection ended; `close` is the close frame's code and reason.
    closed: Option<Option<(u16, String)>>,
}

impl Ws {
    /// Connects to `ws://addr/ws`; `name` labels the connection in failure messages.
    pub async fn connect(addr: SocketAddr, name: &str) -> Ws {
        match Self::try_connect(addr, name).await {
            Ok(ws) => ws,
            Err(e) => panic!("[{name}] connect to ws://{addr}/ws: {e:#}"),
        }
    }

    /// Connects, returning errors (an HTTP refusal of the upgrade, a refused connection…).
    pub async fn try_connect(addr: SocketAddr, name: &str) -> anyhow::Result<Ws> {
        let tcp = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (stream, _resp) = tokio::time::timeout(
            RECV_TIMEOUT,
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(cfg)),
        )
        .await??;
        Ok(Ws {
            name: name.to_string(),
            stream,
            backlog: VecDeque::new(),
            seen: Vec::new(),
            closed: None,
        })
    }

    /// Tries a WebSocket upgrade that the server is expected to refuse with an HTTP error
    /// (e.g. 503 `too_many_connections`): returns the status and the body parsed as JSON
    /// (`Value::Null` when it is not JSON). Panics if the upgrade succeeds or fails otherwise.
    pub async fn connect_refused(addr: SocketAddr, name: &str) -> (u16, Value) {
        match Self::try_connect(addr, name).await {
            Ok(_) => {
                panic!("[{name}] the WebSocket upgrade was accepted; expected an HTTP refusal")
            }
            Err(e) => match http_refusal(&e) {
                Some(r) => r,
                None => panic!("[{name}] the upgrade failed without an HTTP answer: {e:#}"),
            },
        }
    }

    /// The label given at connect.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames received but not consumed yet.
    pub fn backlog(&self) -> &VecDeque<Value> {
        &self.backlog
    }

    /// Removes and returns the backlog.
    pub fn take_backlog(&mut self) -> Vec<Value> {
        self.backlog.drain(..).collect()
    }

    /// The close code and reason once the server closed the connection.
    pub fn close_frame(&self) -> Option<&(u16, String)> {
        self.closed.as_ref().and_then(|c| c.as_ref())
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Everything this connection received so far (for messages).
    pub fn report(&self, waiting_for: &str) -> String {
        let mut s = format!("[{}] {waiting_for}\n", self.name);
        if let Some(c) = &self.closed {
            s.push_str(&format!("connection closed: {c:?}\n"));
        }
        let from = self.seen.len().saturating_sub(60);
        s.push_str(&format!(
            "frames received ({} in all, last {} shown):\n",
            self.seen.len(),
            self.seen.len() - from
        ));
        for f in &self.seen[from..] {
            s.push_str("  <- ");
            s.push_str(f);
            s.push('\n');
        }
        s.push_str(&format!(
            "not consumed yet: {} frame(s)\n",
            self.backlog.len()
        ));
        s
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await
    }

    /// Sends a raw text frame (may be invalid JSON).
    pub async fn send_text(&mut self, text: String) {
        if let Err(e) = self.try_send_message(Message::text(text)).await {
            panic!("{}", self.report(&format!("send failed: {e}")));
        }
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        if let Err(e) = self.try_send_message(Message::binary(data)).await {
            panic!("{}", self.report(&format!("send failed: {e}")));
        }
    }

    /// Sends a frame, returning the error instead of panicking (for frames the server may
    /// refuse by closing the connection).
    pub async fn try_send_message(&mut self, m: Message) -> anyhow::Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, self.stream.send(m)).await??;
        Ok(())
    }

    async fn read_next(&mut self, deadline: Instant) -> Next {
        loop {
            if self.closed.is_some() {
                return Next::Closed;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(remaining, self.stream.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => {
                    self.seen.push("<end of stream>".into());
                    self.closed = Some(None);
                    return Next::Closed;
                }
                Ok(Some(Err(e))) => {
                    self.seen.push(format!("<read error: {e}>"));
                    self.closed = Some(None);
                    return Next::Closed;
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let text = t.as_str();
                    self.seen.push(if text.len() > 400 {
                        let mut cut = 400;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        format!("{}… ({} bytes)", &text[..cut], text.len())
                    } else {
                        text.to_string()
                    });
                    match serde_json::from_str::<Value>(text) {
                        Ok(v) if v.is_object() => return Next::Frame(v),
                        _ => panic!(
                            "{}",
                            self.report("the server sent a text frame that is not a JSON object")
                        ),
                    }
                }
                Message::Binary(b) => {
                    self.seen.push(format!("<binary frame, {} bytes>", b.len()));
                    panic!("{}", self.report("the server sent a binary frame"));
                }
                Message::Close(cf) => {
                    let c = cf.map(|c| (u16::from(c.code), c.reason.to_string()));
                    self.seen.push(format!("<close {c:?}>"));
                    self.closed = Some(c);
                    return Next::Closed;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// The next frame (backlog first).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        let deadline = Instant::now() + RECV_TIMEOUT;
        match self.read_next(deadline).await {
            Next::Frame(v) => v,
            Next::Closed => panic!("{}", self.report("closed while waiting for a frame")),
            Next::Timeout => panic!(
                "{}",
                self.report(&format!("no frame within {RECV_TIMEOUT:?}"))
            ),
        }
    }

    /// The first frame (backlog first) that satisfies `pred`; other frames go to the backlog.
    /// `what` describes the awaited frame in the panic message.
    pub async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.read_next(deadline).await {
                Next::Frame(v) if pred(&v) => return v,
                Next::Frame(v) => self.backlog.push_back(v),
                Next::Closed => panic!(
                    "{}",
                    self.report(&format!("closed while waiting for {what}"))
                ),
                Next::Timeout => panic!(
                    "{}",
                    self.report(&format!("no {what} within {RECV_TIMEOUT:?}"))
                ),
            }
        }
    }

    /// The first frame of type `ty` (other frames are kept in the backlog).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        self.recv_where(&format!("{ty:?} frame"), |v| v["type"] == ty)
            .await
    }

    /// The first `error` frame; asserts its `code`.
    pub async fn recv_error(&mut self, code: &str) -> Value {
        let e = self.recv_type("error").await;
        assert_eq!(
            e["code"],
            code,
            "{}",
            self.report(&format!("expected error {code:?}, got {e}"))
        );
        e
    }

    /// The next `message` frame of a conversation.
    pub async fn recv_message(&mut self, conversation_id: &str) -> Value {
        self.recv_where(&format!("message in {conversation_id}"), |v| {
            v["type"] == "message" && v["conversation_id"] == conversation_id
        })
        .await
    }

    /// The next `state` frame of a conversation with the given `status`.
    pub async fn recv_state(&mut self, conversation_id: &str, status: &str) -> Value {
        self.recv_where(&format!("state {status:?} of {conversation_id}"), |v| {
            v["type"] == "state" && v["conversation_id"] == conversation_id && v["status"] == status
        })
        .await
    }

    /// Asserts that no frame satisfying `pred` is in the backlog or arrives within `ms`
    /// milliseconds; other frames go to the backlog. Use only where a test must show that
    /// nothing extra arrives.
    pub async fn expect_none(&mut self, ms: u64, what: &str, pred: impl Fn(&Value) -> bool) {
        if let Some(v) = self.backlog.iter().find(|v| pred(v)) {
            panic!(
                "{}",
                self.report(&format!("expected no {what}, but got {v}"))
            );
        }
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            match self.read_next(deadline).await {
                Next::Frame(v) if pred(&v) => panic!(
                    "{}",
                    self.report(&format!("expected no {what}, but got {v}"))
                ),
                Next::Frame(v) => self.backlog.push_back(v),
                Next::Closed | Next::Timeout => return,
            }
        }
    }

    /// Asserts that the backlog is empty and no frame at all arrives within `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        self.expect_none(ms, "frame", |_| true).await
    }

    /// Reads (into the backlog) until the server closes the connection; returns the close
    /// code and reason (`None` when the TCP connection ended without a close frame).
    pub async fn wait_close(&mut self) -> Option<(u16, String)> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.read_next(deadline).await {
                Next::Frame(v) => self.backlog.push_back(v),
                Next::Closed => return self.closed.clone().flatten(),
                Next::Timeout => {
                    panic!("{}", self.report("the server did not close the connection"))
                }
            }
        }
    }

    /// Closes the connection from the client side (best effort).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close(None)).await;
    }

    /// Drops the TCP connection without a close handshake (a phone losing its network).
    pub fn abort(self) {
        drop(self)
    }

    // ---- protocol helpers ------------------------------------------------------------

    /// Waits for the answer to a frame: the first frame of type `ty` for which `matches`
    /// holds, or an `error` for which `matches` holds (returned as is).
    pub async fn recv_reply(&mut self, ty: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.recv_where(&format!("{ty:?} (or error) reply"), |v| {
            (v["type"] == ty || v["type"] == "error") && matches(v)
        })
        .await
    }

    /// Sends `hello` and returns `welcome`; panics on an error answer.
    pub async fn hello(&mut self, hello: Value) -> Value {
        self.send(hello.clone()).await;
        let r = self.recv_reply("welcome", |_| true).await;
        assert_eq!(
            r["type"],
            "welcome",
            "{}",
            self.report(&format!("{hello} was answered with {r}"))
        );
        r
    }

    /// Customer `hello` on a first visit.
    pub async fn hello_customer(&mut self, display_name: &str) -> Value {
        self.hello(json!({"type":"hello","role":"customer","display_name":display_name}))
            .await
    }

    /// Customer `hello` with a resume token.
    pub async fn hello_customer_token(&mut self, resume_token: &str) -> Value {
        self.hello(json!({"type":"hello","role":"customer","resume_token":resume_token}))
            .await
    }

    /// Staff `hello` with a session token.
    pub async fn hello_staff(&mut self, token: &str) -> Value {
        self.hello(json!({"type":"hello","role":"staff","token":token}))
            .await
    }

    /// Customer `start`; returns `started` (the `state` frame that follows stays in the
    /// backlog). Panics on an error.
    pub async fn start(&mut self, request_id: &str) -> Value {
        self.send(json!({"type":"start","request_id":request_id}))
            .await;
        let r = self
            .recv_reply("started", |v| v["request_id"] == request_id)
            .await;
        assert_eq!(
            r["type"],
            "started",
            "{}",
            self.report(&format!("start was answered with {r}"))
        );
        r
    }

    /// Sends `send` and returns the answer: the `ack` or the `error` naming this
    /// `client_msg_id`.
    pub async fn send_and_wait(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Value {
        self.send(json!({"type":"send","conversation_id":conversation_id,
                         "client_msg_id":client_msg_id,"body":body}))
            .await;
        self.recv_reply("ack", |v| v["client_msg_id"] == client_msg_id)
            .await
    }

    /// Sends a message and returns its `ack`; panics on an error answer.
    pub async fn send_msg(
        &mut self,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Value {
        let r = self
            .send_and_wait(conversation_id, client_msg_id, body)
            .await;
        assert_eq!(
            r["type"],
            "ack",
            "{}",
            self.report(&format!("send {client_msg_id:?} was answered with {r}"))
        );
        r
    }

    /// Sends an action frame carrying `request_id` and returns the `ok` or `error` for it.
    pub async fn action(&mut self, frame: Value) -> Value {
        let rid = frame["request_id"].clone();
        assert!(rid.is_string(), "action frames need a request_id: {frame}");
        self.send(frame).await;
        self.recv_reply("ok", |v| v["request_id"] == rid).await
    }

    /// Sends an action and asserts `ok`.
    pub async fn action_ok(&mut self, frame: Value) -> Value {
        let desc = frame.to_string();
        let r = self.action(frame).await;
        assert_eq!(
            r["type"],
            "ok",
            "{}",
            self.report(&format!("{desc} was answered with {r}"))
        );
        r
    }

    /// Sends `resume` and collects the replay: the `message` frames of this conversation
    /// that arrive after the request, the `state`, and `resumed`. An `error` naming the
    /// conversation is returned as `Err`. Frames in the backlog from before the request are
    /// left there.
    pub async fn try_resume(
        &mut self,
        conversation_id: &str,
        after_seq: u64,
    ) -> Result<Resumed, Value> {
        self.send(json!({"type":"resume","conversation_id":conversation_id,"after_seq":after_seq}))
            .await;
        let mut messages = Vec::new();
        let mut reads = Vec::new();
        let mut state = None;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            match self.read_next(deadline).await {
                Next::Frame(v) => {
                    let mine = v["conversation_id"] == conversation_id;
                    match v["type"].as_str() {
                        Some("message") if mine => messages.push(v),
                        Some("read") if mine && state.is_none() => reads.push(v),
                        Some("state") if mine => state = Some(v),
                        Some("resumed") if mine => {
                            return Ok(Resumed {
                                messages,
                                reads,
                                state,
                                resumed: v,
                            });
                        }
                        Some("error") if mine => return Err(v),
                        _ => self.backlog.push_back(v),
                    }
                }
                Next::Closed => panic!("{}", self.report("closed while waiting for resumed")),
                Next::Timeout => panic!(
                    "{}",
                    self.report(&format!(
                        "no resumed for {conversation_id} within {RECV_TIMEOUT:?}"
                    ))
                ),
            }
        }
    }

    /// [`Ws::try_resume`], panicking on an error.
    pub async fn resume(&mut self, conversation_id: &str, after_seq: u64) -> Resumed {
        match self.try_resume(conversation_id, after_seq).await {
            Ok(r) => r,
            Err(e) => panic!("{}", self.report(&format!("resume was answered with {e}"))),
        }
    }

    /// Resumes until `resumed.more` is false, concatenating the replayed messages.
    pub async fn resume_all(&mut self, conversation_id: &str, after_seq: u64) -> Resumed {
        let mut r = self.resume(conversation_id, after_seq).await;
        for _ in 0..10_000 {
            if r.resumed["more"] != true {
                return r;
            }
            // "resume again from the last seq it got"
            let last = match r.messages.last() {
                Some(m) => m.u64_("seq"),
                None => after_seq,
            };
            let next = self.resume(conversation_id, last).await;
            r.messages.extend(next.messages);
            r.reads = next.reads;
            r.state = next.state.or(r.state);
            r.resumed = next.resumed;
        }
        panic!("resume of {conversation_id} never ended")
    }
}
