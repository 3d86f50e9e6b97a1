//! Test support for Aisle's cross-process tests and the `aisle-bench` load generator.
//!
//! Everything here drives the *real* `aisle-edge` binary over loopback, as a customer's
//! phone or a staff tablet would:
//!
//! - [`Edge`] runs the server: a temporary data directory, a free port, readiness on
//!   `GET /healthz` (20 s hang guard), [`Edge::restart`] on the same data, [`Edge::kill`]
//!   (SIGKILL, a crash), [`Edge::terminate`] (SIGTERM and wait). Dropping it kills the
//!   process; if a test is failing at that moment the server's logs are printed.
//! - [`Ws`] is a WebSocket client for docs/protocol.md: `send`, `recv` (10 s hang guard that
//!   panics with every frame seen), `recv_type`, `expect_none` / `expect_silence`, and helpers
//!   for `hello`, `start`, `send` → `ack`, actions, `resume`.
//! - [`Http`] speaks docs/api.md: login, staff accounts, conversations, history, hand-off.
//! - [`Customer`] and [`StaffConn`] bundle a connection with who is behind it.
//!
//! Timeouts only guard against hangs: no test asserts on speed.
//!
//! The server binary is looked up next to the running executable (see
//! [`edge::find_edge_binary`]); build it first with `cargo build --release -p aisle-edge`.

pub mod balancer;
pub mod connbench;
pub mod crashbench;
pub mod edge;
pub mod http;
pub mod hub;
pub mod inferencebench;
pub mod settingsbench;
pub mod syncbench;
pub mod ws;

use std::ops::{Deref, DerefMut};

pub use edge::{ADMIN_PASSWORD, ADMIN_USER, Edge, EdgeOptions, find_edge_binary};
pub use http::{Http, Resp, StaffSession, metric_value};
pub use hub::{HUB_ADMIN_PASSWORD, Hub, hub_status, wait_connected};
pub use serde_json::{Value, json};
pub use ws::{Json, RECV_TIMEOUT, Resumed, Ws, cmid, http_refusal, is_ulid};

/// Milliseconds since the Unix epoch (the protocol's `*_ms` clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_millis() as u64
}

/// Polls `check` every 20 ms until it returns `Ok` (returned) or `deadline` has passed: then
/// panics naming `what` and the last `Err` (what was seen instead). The deadline guards
/// against hangs on a loaded machine; it is a speed claim only where a test says so.
pub async fn eventually<T>(
    what: &str,
    deadline: std::time::Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let end = std::time::Instant::now() + deadline;
    loop {
        let seen = match check().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if std::time::Instant::now() > end {
            panic!("not within {deadline:?}: {what}; last seen: {seen}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A customer connection after `hello`.
pub struct Customer {
    pub ws: Ws,
    pub customer_id: String,
    pub resume_token: String,
    pub welcome: Value,
}

impl Customer {
    /// First visit: connects and says `hello` with a display name.
    pub async fn connect(edge: &Edge, display_name: &str) -> Customer {
        let mut ws = Ws::connect(edge.addr(), &format!("customer {display_name}")).await;
        let welcome = ws.hello_customer(display_name).await;
        Self::from_welcome(ws, welcome)
    }

    /// Returning customer (or another device): connects and says `hello` with a token.
    pub async fn connect_with_token(edge: &Edge, resume_token: &str, label: &str) -> Customer {
        let mut ws = Ws::connect(edge.addr(), label).await;
        let welcome = ws.hello_customer_token(resume_token).await;
        Self::from_welcome(ws, welcome)
    }

    fn from_welcome(ws: Ws, welcome: Value) -> Customer {
        assert_eq!(welcome["role"], "customer", "welcome: {welcome}");
        Customer {
            customer_id: welcome.str_("customer_id").to_string(),
            resume_token: welcome.str_("resume_token").to_string(),
            ws,
            welcome,
        }
    }

    /// Sends `start` and returns the conversation id.
    pub async fn start_conversation(&mut self) -> String {
        let started = self.ws.start(&format!("r-{}", ulid::Ulid::new())).await;
        started.str_("conversation_id").to_string()
    }
}

impl Deref for Customer {
    type Target = Ws;
    fn deref(&self) -> &Ws {
        &self.ws
    }
}

impl DerefMut for Customer {
    fn deref_mut(&mut self) -> &mut Ws {
        &mut self.ws
    }
}

/// A staff connection after `hello` with a session token.
pub struct StaffConn {
    pub ws: Ws,
    pub session: StaffSession,
    pub welcome: Value,
}

impl StaffConn {
    /// Connects and says `hello` with the session's token.
    pub async fn connect(edge: &Edge, session: &StaffSession, label: &str) -> StaffConn {
        let mut ws = Ws::connect(edge.addr(), label).await;
        let welcome = ws.hello_staff(&session.token).await;
        assert_eq!(welcome["role"], "staff", "welcome: {welcome}");
        assert_eq!(
            welcome["staff"]["id"], session.id,
            "staff welcome names another account: {welcome}"
        );
        StaffConn {
            ws,
            session: session.clone(),
            welcome,
        }
    }

    /// The staff member's id.
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// Ids of the conversations listed in the `welcome`.
    pub fn welcome_conversations(&self) -> Vec<String> {
        self.welcome["conversations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Deref for StaffConn {
    type Target = Ws;
    fn deref(&self) -> &Ws {
        &self.ws
    }
}

impl DerefMut for StaffConn {
    fn deref_mut(&mut self) -> &mut Ws {
        &mut self.ws
    }
}

/// A server with an admin session and `n` logged-in staff accounts (`staff1`, `staff2`, …,
/// capacity `capacity`), none of them connected yet.
pub async fn edge_with_staff(n: usize, capacity: u32) -> (Edge, StaffSession, Vec<StaffSession>) {
    let edge = Edge::start().await;
    let admin = edge.http().login_admin().await;
    let mut staff = Vec::new();
    for i in 1..=n {
        staff.push(
            edge.http()
                .create_and_login_staff(
                    &admin,
                    &format!("staff{i}"),
                    &format!("Staff Member {i}"),
                    capacity,
                )
                .await,
        );
    }
    (edge, admin, staff)
}

/// Asserts that the connection still works after an error: a valid `send` into
/// `conversation_id` is acked.
pub async fn assert_send_still_acked(ws: &mut Ws, conversation_id: &str) -> Value {
    let id = cmid();
    let ack = ws.send_and_wait(conversation_id, &id, "still there?").await;
    assert_eq!(
        ack["type"],
        "ack",
        "{}",
        ws.report(&format!(
            "after an error, a valid send was answered with {ack}"
        ))
    );
    ack
}

/// The repository's root (for files the tests read, like the committed model).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}
