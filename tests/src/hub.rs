//! Running a real `aisle-hub` process (docs/hub-api.md) next to real `aisle-edge` processes:
//! free port, temporary data directory, readiness on `GET /healthz`, restart on the same data
//! *and the same port* (the stores keep the hub's URL), SIGKILL, logs captured to files.
//!
//! What the hub holds is read straight from its database, read-only: the tests must not
//! depend on HQ endpoints to see whether a store's documents arrived.
//!
//! With `HUB_TEST_POSTGRES_URL` set (a superuser URL of a throw-away cluster, `ci/postgres`)
//! every hub runs on PostgreSQL instead of SQLite, each in a database of its own, and
//! [`Hub::start_replica`] starts another hub process on the same database.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aisle_sync::{Conversation, MessageRecord};
use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::edge::{
    EXIT_TIMEOUT, Edge, EdgeOptions, READY_TIMEOUT, find_binary, free_port, http_get_raw, signal,
    tail,
};
use crate::http::Http;

/// Password of the hub's first HQ account (`admin`, `hq_admin`), given through
/// `AISLE_HUB_FIRST_ADMIN_PASSWORD`.
pub const HUB_ADMIN_PASSWORD: &str = "hub-admin-password-for-tests";

/// Finds the `aisle-hub` binary next to the running executable (`AISLE_HUB_BIN` overrides).
pub fn find_hub_binary() -> anyhow::Result<PathBuf> {
    find_binary("aisle-hub", "AISLE_HUB_BIN")
}

/// A free loopback port below Linux's ephemeral range (32768–60999): the hub keeps its port
/// across restarts (the stores keep its URL), and while it is down another test's
/// bind-to-port-0 ([`free_port`]) must not be handed the same port.
fn port_outside_ephemeral_range() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// A running (or stopped) `aisle-hub` process with its own data directory and port.
///
/// Dropping it SIGKILLs the process; when the drop happens while a test is panicking, the
/// tail of every run's logs is printed.
pub struct Hub {
    bin: PathBuf,
    region: String,
    /// Temporary directory holding `data/` and the `run-N.std{out,err}.log` files.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    runs: u32,
    http: Http,
    admin_token: Option<String>,
    /// Extra environment variables for the next (re)start ([`Hub::set_env`]).
    env: Vec<(String, String)>,
    /// `--database`: the hub's PostgreSQL database (`None`: SQLite in the data directory).
    database_url: Option<String>,
}

/// The PostgreSQL server the hub tests run against, if any (`HUB_TEST_POSTGRES_URL`, a
/// superuser URL such as `postgres://aisle@127.0.0.1:5432/postgres`).
pub fn postgres_server_url() -> Option<String> {
    std::env::var("HUB_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// Runs `work` with a client of `url`, on a thread of its own with its own runtime (so that it
/// can be called from synchronous helpers inside the tests' runtime).
fn with_postgres<T: Send + 'static>(
    url: &str,
    work: impl for<'c> FnOnce(
        &'c tokio_postgres::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + 'c>,
    > + Send
    + 'static,
) -> anyhow::Result<T> {
    let url = url.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connect to {url}"))?;
            let driver = tokio::spawn(connection);
            let result = work(&client).await.context("postgres query");
            drop(client);
            let _ = driver.await;
            result
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the postgres thread panicked"))?
}

/// Creates an empty database on the server of `server_url` and returns its URL.
pub fn create_postgres_database(server_url: &str) -> anyhow::Result<String> {
    let name = format!("aisle_t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let statement = format!("CREATE DATABASE {name}");
    with_postgres(server_url, move |c| {
        Box::pin(async move { c.batch_execute(&statement).await })
    })?;
    let (base, _) = server_url
        .rsplit_once('/')
        .context("the postgres URL names no database")?;
    Ok(format!("{base}/{name}"))
}

impl Hub {
    /// Starts a hub for `region` on a fresh data directory; panics (with its logs) if it does
    /// not become ready.
    pub async fn start(region: &str) -> Hub {
        match Self::try_start(region).await {
            Ok(hub) => hub,
            Err(e) => panic!("{e:#}"),
        }
    }

    pub async fn try_start(region: &str) -> anyhow::Result<Hub> {
        let database_url = match postgres_server_url() {
            Some(server) => Some(create_postgres_database(&server)?),
            None => None,
        };
        Self::try_start_on(region, database_url).await
    }

    /// Another hub process for the same region on the same PostgreSQL database (a replica
    /// behind the region's load balancer): its own port and data directory.
    pub async fn start_replica(&self) -> Hub {
        let url = self
            .database_url
            .clone()
            .expect("replicas share a PostgreSQL database: set HUB_TEST_POSTGRES_URL");
        match Self::try_start_on(&self.region, Some(url)).await {
            Ok(hub) => hub,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// The hub's PostgreSQL database, if it runs on one.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    async fn try_start_on(region: &str, database_url: Option<String>) -> anyhow::Result<Hub> {
        let bin = find_hub_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("aisle-hub-test-")
            .tempdir()
            .context("create temp dir")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).context("create data dir")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port_outside_ephemeral_range()).into();
        let mut hub = Hub {
            bin,
            region: region.to_string(),
            dir,
            data_dir,
            addr,
            child: None,
            runs: 0,
            http: Http::new(addr),
            admin_token: None,
            env: Vec::new(),
            database_url,
        };
        hub.launch().await?;
        Ok(hub)
    }

    /// Sets an environment variable (configuration) for the next [`Hub::restart`].
    pub fn set_env(&mut self, key: &str, value: impl ToString) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The region this hub serves.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The hub's address (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: what a store's `--hub` names.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The hub's SQLite database (`Config::database_path`). A test that opens it runs on
    /// SQLite only: it is skipped on PostgreSQL with [`Hub::on_postgres`].
    pub fn database_path(&self) -> PathBuf {
        assert!(
            self.database_url.is_none(),
            "this test reads the hub's SQLite file; skip it when Hub::on_postgres()"
        );
        self.data_dir.join("aisle-hub.db")
    }

    /// Whether hubs of this test run are on PostgreSQL (`HUB_TEST_POSTGRES_URL`).
    pub fn on_postgres() -> bool {
        postgres_server_url().is_some()
    }

    /// Runs SQL statements on the hub's database (SQLite or PostgreSQL), e.g. a row written
    /// while the hub is stopped.
    pub fn execute(&self, sql: &str) {
        match &self.database_url {
            Some(url) => {
                let sql = sql.to_owned();
                with_postgres(url, move |c| {
                    Box::pin(async move { c.batch_execute(&sql).await })
                })
                .unwrap_or_else(|e| panic!("{e:#}"));
            }
            None => {
                let db = rusqlite::Connection::open(self.database_path()).expect("open");
                db.execute_batch(sql).expect("execute");
            }
        }
    }

    /// `(key, origin_store)` of every document, or the chunks of one, from either back end.
    fn query_documents(&self) -> Vec<(String, String)> {
        const SQL: &str = "SELECT key, origin_store FROM documents ORDER BY key";
        if let Some(url) = &self.database_url {
            return with_postgres(url, |c| {
                Box::pin(async move {
                    let rows = c.query(SQL, &[]).await?;
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                })
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let conn = self.open_db();
        let mut st = conn.prepare(SQL).expect("prepare");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query documents")
            .collect::<Result<_, _>>()
            .expect("read documents")
    }

    fn query_chunks(&self, key: &str) -> Vec<Vec<u8>> {
        if let Some(url) = &self.database_url {
            let key = key.to_owned();
            return with_postgres(url, move |c| {
                Box::pin(async move {
                    let rows = c
                        .query(
                            "SELECT bytes FROM doc_chunks WHERE doc_key = $1 ORDER BY seq",
                            &[&key],
                        )
                        .await?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let conn = self.open_db();
        let mut st = conn
            .prepare("SELECT bytes FROM doc_chunks WHERE doc_key = ?1 ORDER BY seq")
            .expect("prepare");
        st.query_map([key], |r| r.get(0))
            .expect("query chunks")
            .collect::<Result<_, _>>()
            .expect("read chunks")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_paths(&self, run: u32) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("run-{run}.stdout.log")),
            self.dir.path().join(format!("run-{run}.stderr.log")),
        )
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let run = self.runs;
        let (out_path, err_path) = self.log_paths(run);
        let out = File::create(&out_path).context("create stdout log")?;
        let err = File::create(&err_path).context("create stderr log")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data")
            .arg(&self.data_dir)
            .arg("--region")
            .arg(&self.region)
            .args(
                self.database_url
                    .iter()
                    .flat_map(|url| ["--database", url.as_str()]),
            )
            // The hub reads every AISLE_HUB_* variable as configuration and refuses unknown
            // keys: do not pass on the test harness's own variables.
            .env_remove("AISLE_HUB_BIN")
            .env_remove("AISLE_HUB_CONFIG")
            .env("AISLE_HUB_FIRST_ADMIN_PASSWORD", HUB_ADMIN_PASSWORD)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                bail!(
                    "aisle-hub exited with {status} before it was ready\n{}",
                    self.logs_tail(run, 80)
                );
            }
            if let Some((200, body)) = http_get_raw(self.addr, "/healthz").await
                && body.contains("\"aisle-hub\"")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "aisle-hub did not answer GET /healthz with 200 within {READY_TIMEOUT:?}\n{}",
                    self.logs_tail(run, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs the process (a crash, or a pulled plug) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; panics if it takes longer than [`EXIT_TIMEOUT`].
    pub async fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "aisle-hub did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{}",
                    self.logs_tail(self.runs, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the hub again on the same data directory and the same port (stopping it first
    /// with SIGTERM if it still runs). Panics if it does not get ready.
    pub async fn restart(&mut self) {
        self.terminate().await;
        // Sessions live in the database, but a new login costs nothing and keeps this simple.
        self.admin_token = None;
        if let Err(e) = self.launch().await {
            panic!("{e:#}");
        }
    }

    /// The last `lines` lines of stdout and stderr of run `run` (1-based).
    pub fn logs_tail(&self, run: u32, lines: usize) -> String {
        let (out, err) = self.log_paths(run);
        format!(
            "---- aisle-hub ({}) run {run} stdout ----\n{}\n---- aisle-hub ({}) run {run} stderr ----\n{}",
            self.region,
            tail(&out, lines),
            self.region,
            tail(&err, lines)
        )
    }

    // ---- HQ API ------------------------------------------------------------------------

    /// Logs in as the first HQ admin and returns the bearer token (cached).
    pub async fn admin_token(&mut self) -> String {
        if let Some(t) = &self.admin_token {
            return t.clone();
        }
        let r = self
            .http
            .post(
                "/api/login",
                None,
                &json!({"username":"admin","password":HUB_ADMIN_PASSWORD}),
            )
            .await;
        let token = r.expect(200)["token"]
            .as_str()
            .unwrap_or_else(|| panic!("hub login without token: {}", r.text))
            .to_string();
        self.admin_token = Some(token.clone());
        token
    }

    /// Registers a store (`POST /api/stores`) and returns its one-time enrollment token.
    pub async fn register_store(&mut self, store_id: &str) -> String {
        let token = self.admin_token().await;
        let r = self
            .http
            .post(
                "/api/stores",
                Some(&token),
                &json!({"store_id":store_id,"name":format!("Store {store_id}")}),
            )
            .await;
        r.expect(201)["enrollment_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no enrollment_token: {}", r.text))
            .to_string()
    }

    /// Revokes a store (`POST /api/stores/{id}/revoke`).
    pub async fn revoke(&mut self, store_id: &str) {
        let token = self.admin_token().await;
        let r = self
            .http
            .post(
                &format!("/api/stores/{store_id}/revoke"),
                Some(&token),
                &json!({}),
            )
            .await;
        assert_eq!(r.expect(200)["revoked"], true, "{}", r.text);
    }

    /// `GET /api/stores` → the `stores` array.
    pub async fn stores(&mut self) -> Vec<Value> {
        let token = self.admin_token().await;
        let r = self.http.get("/api/stores", Some(&token)).await;
        r.expect(200)["stores"]
            .as_array()
            .unwrap_or_else(|| panic!("no stores array: {}", r.text))
            .clone()
    }

    /// Registers `store_id` here and starts an `aisle-edge` enrolled with its token. Does not
    /// wait for the link: see [`wait_connected`].
    pub async fn start_store(&mut self, store_id: &str) -> Edge {
        let token = self.register_store(store_id).await;
        Edge::start_with(EdgeOptions::default().enrolled_at(&self.url(), store_id, &token)).await
    }

    // ---- what the hub holds (read-only view of its database) ---------------------------

    fn open_db(&self) -> rusqlite::Connection {
        let path = self.database_path();
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
        conn.busy_timeout(Duration::from_secs(5))
            .expect("busy_timeout");
        conn
    }

    /// Keys of every document the hub holds, with their origin store.
    pub fn documents(&self) -> Vec<(String, String)> {
        self.query_documents()
    }

    /// How many conversation documents the hub holds.
    pub fn conversation_count(&self) -> usize {
        self.documents()
            .iter()
            .filter(|(k, _)| k.starts_with("conversation:"))
            .count()
    }

    /// The hub's copy of a conversation (its chunks in order, loaded), if it has one.
    /// Panics if the stored chunks do not load: that is corruption, not "not there yet".
    pub fn conversation(&self, conversation_id: &str) -> Option<Conversation> {
        let key = format!("conversation:{conversation_id}");
        let chunks = self.query_chunks(&key);
        if chunks.is_empty() {
            return None;
        }
        let bytes = chunks.concat();
        match Conversation::load(&bytes) {
            Ok(c) => Some(c),
            Err(e) => panic!("the hub's copy of {key} does not load: {e}"),
        }
    }

    /// How many stored chunks make up the hub's copy of a conversation.
    pub fn chunk_count(&self, conversation_id: &str) -> usize {
        self.query_chunks(&format!("conversation:{conversation_id}"))
            .len()
    }

    /// The messages of the hub's copy of a conversation as `(message id, body)`, in the
    /// document's order (empty when the hub does not hold it).
    pub fn messages_of(&self, conversation_id: &str) -> Vec<(String, String)> {
        self.message_records(conversation_id)
            .into_iter()
            .map(|m| (m.id.to_string(), m.body))
            .collect()
    }

    /// The full message records of the hub's copy of a conversation.
    pub fn message_records(&self, conversation_id: &str) -> Vec<MessageRecord> {
        match self.conversation(conversation_id) {
            Some(c) => c
                .messages()
                .unwrap_or_else(|e| panic!("messages of {conversation_id} on the hub: {e}")),
            None => Vec::new(),
        }
    }

    /// The session status (`"assigned"`, `"resolved"`, …) of the hub's copy, by folding its
    /// events; `None` when the hub does not hold the conversation.
    pub fn status_of(&self, conversation_id: &str) -> Option<String> {
        let c = self.conversation(conversation_id)?;
        let fold = c
            .fold()
            .unwrap_or_else(|e| panic!("fold of {conversation_id} on the hub: {e}"));
        Some(
            serde_json::to_value(fold.state.status)
                .expect("status serialises")
                .as_str()
                .expect("status is a string")
                .to_string(),
        )
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for run in 1..=self.runs {
                eprintln!("{}", self.logs_tail(run, 60));
            }
        }
    }
}

impl EdgeOptions {
    /// A store `store_id` of `hub`'s region, enrolling with `enroll_token` on its first start
    /// (`--hub URL --enroll TOKEN`, `AISLE_STORE_ID`). Reconnects to the hub are retried
    /// quickly (50 ms doubling to 500 ms) so that a hub restart is noticed within a second.
    pub fn enrolled_at(self, hub_url: &str, store_id: &str, enroll_token: &str) -> Self {
        let mut o = self
            .env("AISLE_STORE_ID", store_id)
            .env("AISLE_LIMITS__SYNC_RETRY_MIN_MS", 50)
            .env("AISLE_LIMITS__SYNC_RETRY_MAX_MS", 500);
        o.args.extend([
            "--hub".to_string(),
            hub_url.to_string(),
            "--enroll".to_string(),
            enroll_token.to_string(),
        ]);
        o
    }

    /// Points the store at another hub URL (keeps everything else).
    pub fn with_hub_url(mut self, hub_url: &str) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == "--hub") {
            self.args[i + 1] = hub_url.to_string();
        } else {
            self.args.extend(["--hub".to_string(), hub_url.to_string()]);
        }
        self
    }
}

/// The `hub` object of the store's `GET /healthz`.
pub async fn hub_status(edge: &Edge) -> Value {
    let r = edge.http().healthz().await;
    r.expect(200)["hub"].clone()
}

/// Waits (up to `deadline`) until the store says it is connected to its hub; panics with
/// the last `/healthz` otherwise.
pub async fn wait_connected(edge: &Edge, deadline: Duration) -> Value {
    crate::eventually("the store connected to its hub", deadline, async || {
        let h = hub_status(edge).await;
        if h["connected"] == true {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await
}
