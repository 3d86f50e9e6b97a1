//! HTTP helpers for the edge API (docs/api.md): login, staff accounts, conversations,
//! history, hand-off redemption, health and metrics.
//!
//! The helpers that return a parsed value panic with the status and body when the server
//! answers something else than the documented success: they are meant for tests (and for the
//! bench's setup, where a refusal is fatal anyway). [`Http::request`] returns any answer.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

/// An HTTP answer: status, raw text and the body parsed as JSON (`Value::Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    pub body: Value,
    /// `METHOD path`, for messages.
    pub what: String,
}

impl Resp {
    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "{}: expected HTTP {status}, got {} with body {}",
            self.what, self.status, self.text
        );
        &self.body
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }

    /// Asserts an error status with the documented JSON body `{"error":{"code":…,"message":…}}`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.error_code()),
            (status, Some(code)),
            "{}: expected HTTP {status} with error.code {code:?}, got {} with body {}",
            self.what,
            self.status,
            self.text
        );
        assert!(
            self.body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .is_some(),
            "{}: error body has no error.message: {}",
            self.what,
            self.text
        );
    }
}

/// A logged-in staff member (from `POST /api/login`).
#[derive(Debug, Clone)]
pub struct StaffSession {
    pub id: String,
    pub username: String,
    pub name: String,
    pub token: String,
    /// The `staff` object of the login answer.
    pub staff: Value,
}

/// HTTP client for one server address.
#[derive(Clone, Debug)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    /// Client for `http://addr`.
    pub fn new(addr: SocketAddr) -> Http {
        Self::with_base(format!("http://{addr}"))
    }

    /// Client for a base URL such as `http://127.0.0.1:8080` (no trailing slash).
    pub fn with_base(base: impl Into<String>) -> Http {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .expect("build reqwest client");
        Http {
            base: base.into().trim_end_matches('/').to_string(),
            client,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any request; `token` goes into `Authorization: Bearer`. Panics only when the server
    /// cannot be reached at all.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let what = format!("{method} {path}");
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(m, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading body failed: {e}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            text,
            body,
            what,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request("GET", path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.request("POST", path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        self.request("PATCH", path, token, Some(body)).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Resp {
        self.get("/healthz", None).await
    }

    /// Asserts `GET /healthz` answers 200 with `"status":"ok"`.
    pub async fn assert_healthy(&self) {
        let r = self.healthz().await;
        let b = r.expect(200);
        assert_eq!(b["status"], "ok", "healthz body: {}", r.text);
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics", None).await;
        assert_eq!(r.status, 200, "GET /metrics: {} {}", r.status, r.text);
        r.text
    }

    /// `POST /api/login` with any credentials.
    pub async fn try_login(&self, username: &str, password: &str) -> Resp {
        self.post(
            "/api/login",
            None,
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// `POST /api/login`, expecting 200.
    pub async fn login(&self, username: &str, password: &str) -> StaffSession {
        let r = self.try_login(username, password).await;
        let b = r.expect(200);
        let token = b["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login answer has no token: {}", r.text))
            .to_string();
        let staff = b["staff"].clone();
        StaffSession {
            id: staff["id"]
                .as_str()
                .unwrap_or_else(|| panic!("login answer has no staff.id: {}", r.text))
                .to_string(),
            username: staff["username"].as_str().unwrap_or(username).to_string(),
            name: staff["name"].as_str().unwrap_or_default().to_string(),
            token,
            staff,
        }
    }

    /// Logs in as the first admin created by `AISLE_FIRST_ADMIN_PASSWORD`.
    pub async fn login_admin(&self) -> StaffSession {
        self.login(crate::edge::ADMIN_USER, crate::edge::ADMIN_PASSWORD)
            .await
    }

    /// `POST /api/staff` (admin) creating a `staff` role account; returns the `staff` object.
    pub async fn create_staff(
        &self,
        admin: &StaffSession,
        username: &str,
        name: &str,
        password: &str,
        capacity: u32,
    ) -> Value {
        let r = self
            .post(
                "/api/staff",
                Some(&admin.token),
                &json!({"username": username, "name": name, "password": password,
                        "role": "staff", "capacity": capacity}),
            )
            .await;
        r.expect(201)["staff"].clone()
    }

    /// Creates a staff account and logs it in.
    pub async fn create_and_login_staff(
        &self,
        admin: &StaffSession,
        username: &str,
        name: &str,
        capacity: u32,
    ) -> StaffSession {
        let password = format!("pw-{username}-12345");
        self.create_staff(admin, username, name, &password, capacity)
            .await;
        self.login(username, &password).await
    }

    /// `PATCH /api/staff/{id}` (admin) with any fields; returns the `staff` object.
    pub async fn patch_staff(&self, admin: &StaffSession, id: &str, fields: &Value) -> Value {
        let r = self
            .patch(&format!("/api/staff/{id}"), Some(&admin.token), fields)
            .await;
        r.expect(200)["staff"].clone()
    }

    /// `GET /api/staff` → the `staff` array.
    pub async fn list_staff(&self, token: &str) -> Vec<Value> {
        let r = self.get("/api/staff", Some(token)).await;
        r.expect(200)["staff"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /api/staff: no staff array: {}", r.text))
            .clone()
    }

    /// `GET /api/conversations?{query}` → the `conversations` array.
    pub async fn list_conversations(&self, token: &str, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/conversations?{query}"), Some(token))
            .await;
        r.expect(200)["conversations"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /api/conversations: no array: {}", r.text))
            .clone()
    }

    /// `GET /api/conversations/{id}`.
    pub async fn conversation(&self, token: &str, id: &str) -> Value {
        let r = self
            .get(&format!("/api/conversations/{id}"), Some(token))
            .await;
        r.expect(200).clone()
    }

    /// The whole history of a conversation from `GET /api/conversations/{id}/messages`,
    /// following `more` page by page.
    pub async fn messages(&self, token: &str, conversation_id: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut after = 0u64;
        for _ in 0..10_000 {
            let r = self
                .get(
                    &format!(
                        "/api/conversations/{conversation_id}/messages?after_seq={after}&limit=200"
                    ),
                    Some(token),
                )
                .await;
            let b = r.expect(200);
            let page = b["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no messages array: {}", r.what, r.text));
            out.extend(page.iter().cloned());
            let more = b["more"].as_bool().unwrap_or(false);
            if !more || page.is_empty() {
                return out;
            }
            after = page.last().unwrap()["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: message without seq: {}", r.what, r.text));
        }
        panic!("history of {conversation_id} never ended")
    }

    /// `POST /api/handoff/{code}` (no auth).
    pub async fn redeem_handoff(&self, code: &str) -> Resp {
        self.post(&format!("/api/handoff/{code}"), None, &json!({}))
            .await
    }

    /// `POST /api/conversations/{id}/actions`.
    pub async fn conversation_action(&self, token: &str, id: &str, action: &Value) -> Resp {
        self.post(
            &format!("/api/conversations/{id}/actions"),
            Some(token),
            action,
        )
        .await
    }
}

/// Every sample of a Prometheus text exposition as (`name{labels}`, value); comment lines
/// are skipped.
pub fn metric_samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let v: f64 = value.trim().parse().ok()?;
            Some((key.trim().to_string(), v))
        })
        .collect()
}

/// The value of one sample, e.g. `aisle_limit_exceeded_total{limit="max_connections"}`, in a
/// Prometheus text exposition; 0 when it is absent (a counter never incremented).
pub fn metric_value(text: &str, key: &str) -> f64 {
    metric_samples(text)
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .sum()
}
