//! A real `aisle-hub` process for the hub's integration tests: temporary data directory, free
//! loopback port, the HTTP calls the tests make.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "hub-admin-password";

pub struct Hub {
    pub child: Option<Child>,
    pub addr: String,
    pub region: String,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Hub {
    pub async fn start(region: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let mut hub = Hub {
            child: None,
            addr: String::new(),
            region: region.into(),
            data: dir.path().join("hub"),
            _dir: dir,
            http: reqwest::Client::new(),
        };
        hub.spawn().await;
        hub
    }

    pub async fn spawn(&mut self) {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        self.addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_aisle-hub"))
            .args(["--listen", &self.addr, "--region", &self.region, "--data"])
            .arg(&self.data)
            .env("AISLE_HUB_FIRST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("AISLE_HUB_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn aisle-hub");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "aisle-hub did not become ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = match method {
            "GET" => self.http.get(self.url(path)),
            _ => self.http.post(self.url(path)),
        };
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn login(&self) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn register(&self, admin: &str, store_id: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/stores",
                Some(admin),
                Some(json!({"store_id": store_id, "name": "A store"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["region"], self.region.as_str());
        body["enrollment_token"].as_str().unwrap().to_string()
    }

    pub async fn enroll(&self, store_id: &str, token: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/api/enroll",
            None,
            Some(json!({"store_id": store_id, "enrollment_token": token, "edge_version": "0.1.0"})),
        )
        .await
    }

    pub async fn enrolled_store(&self, admin: &str, store_id: &str) -> String {
        let token = self.register(admin, store_id).await;
        let (status, body) = self.enroll(store_id, &token).await;
        assert_eq!(status, 200, "{body}");
        body["credential"].as_str().unwrap().to_string()
    }

    pub async fn stores(&self, admin: &str) -> Vec<Value> {
        let (status, body) = self.call("GET", "/api/stores", Some(admin), None).await;
        assert_eq!(status, 200, "{body}");
        body["stores"].as_array().unwrap().clone()
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A GET that must succeed.
    pub async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(token), None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// A GET that must fail with `status` and `code`.
    pub async fn get_error(&self, path: &str, token: Option<&str>, status: u16, code: &str) {
        let (got, body) = self.call("GET", path, token, None).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "GET {path}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{body}");
    }

    /// Logs in as any HQ account.
    pub async fn login_as(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// The hub has no endpoint to create accounts yet: a viewer is written into its database
    /// (WAL: the running hub sees it on its next read).
    pub fn add_viewer(&self, username: &str, password: &str) {
        let conn = rusqlite::Connection::open(self.data.join("aisle-hub.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let hash = aisle_hub::auth::hash_password(password).unwrap();
        conn.execute(
            "INSERT INTO accounts (id, username, password_hash, role, created_at_ms) \
             VALUES (?1, ?2, ?3, 'hq_viewer', 0)",
            rusqlite::params![ulid::Ulid::new().to_string(), username, hash],
        )
        .unwrap();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}
