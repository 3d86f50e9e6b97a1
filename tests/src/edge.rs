//! Running a real `aisle-edge` process: free port, temporary data directory, readiness on
//! `GET /healthz`, restart on the same data, SIGKILL / SIGTERM, logs captured to files.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::Http;

/// Username of the first staff account the server creates in an empty data directory.
pub const ADMIN_USER: &str = "admin";
/// Password given to the first admin through `AISLE_FIRST_ADMIN_PASSWORD`.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// How long a start may take before it counts as a hang (never asserted as a speed).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long SIGTERM may take to end the process before it counts as a hang.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds the `aisle-edge` binary next to the running executable.
///
/// Integration-test executables live in `target/<profile>/deps/`, the bench binary in
/// `target/<profile>/`: the executable's directory and its parent are searched. The
/// environment variable `AISLE_EDGE_BIN` overrides the search.
pub fn find_edge_binary() -> anyhow::Result<PathBuf> {
    find_binary("aisle-edge", "AISLE_EDGE_BIN")
}

/// Finds the binary `name` next to the running executable (or at `$env_var`); see
/// [`find_edge_binary`].
pub fn find_binary(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{env_var}={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe.parent().context("executable has no directory")?;
    let mut looked = Vec::new();
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let candidate = d.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(d.display().to_string());
    }
    bail!(
        "the {name} binary was not found next to {} (looked in {}): build it first: \
         cargo build --release -p {name} (or cargo build -p {name} for a debug test run)",
        exe.display(),
        looked.join(" and ")
    )
}

/// Asks the kernel for a free loopback port (bind to port 0, read it, drop the listener).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// How to start the server.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// Extra environment variables for the server process.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments (after `--listen` and `--data`).
    pub args: Vec<String>,
    /// Password of the first admin (`AISLE_FIRST_ADMIN_PASSWORD`).
    pub admin_password: String,
    /// Raise the per-connection and per-IP frame and connection rate limits so that tests
    /// which send quickly are not answered with `rate_limited` (tests of other behaviour must
    /// not depend on the defaults).
    pub raise_rate_limits: bool,
    /// Interval between readiness probes (`GET /healthz`) while the server starts.
    pub ready_poll: Duration,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            args: Vec::new(),
            admin_password: ADMIN_PASSWORD.to_string(),
            raise_rate_limits: true,
            ready_poll: Duration::from_millis(2),
        }
    }
}

impl EdgeOptions {
    /// Adds one environment variable.
    pub fn env(mut self, k: &str, v: impl ToString) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

/// A running (or stopped) `aisle-edge` process with its own data directory and port.
///
/// Dropping it SIGKILLs the process. When the drop happens while a test is panicking, the
/// tail of the server's stderr is printed so that a failing test shows what the server said.
pub struct Edge {
    bin: PathBuf,
    opts: EdgeOptions,
    /// Temporary directory holding `data/` and the `run-N.std{out,err}.log` files.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
    runs: u32,
    http: Http,
    last_ready: Duration,
}

impl Edge {
    /// Starts a server on a fresh data directory with the default options; panics (with the
    /// server's logs) if it does not become ready.
    pub async fn start() -> Edge {
        Self::start_with(EdgeOptions::default()).await
    }

    /// Starts a server with options; panics if it does not become ready.
    pub async fn start_with(opts: EdgeOptions) -> Edge {
        match Self::try_start_with(opts).await {
            Ok(e) => e,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts a server; errors (with the server's logs in the message) if it fails.
    pub async fn try_start_with(opts: EdgeOptions) -> anyhow::Result<Edge> {
        let bin = find_edge_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("aisle-edge-test-")
            .tempdir()
            .context("create temp dir")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).context("create data dir")?;
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut edge = Edge {
            bin,
            opts,
            dir,
            data_dir,
            addr,
            child: None,
            runs: 0,
            http: Http::new(addr),
            last_ready: Duration::ZERO,
        };
        edge.launch().await?;
        Ok(edge)
    }

    /// The server's address (changes on restart: each start picks a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// HTTP client bound to this server's current address.
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The options the next [`Edge::restart`] uses (e.g. to point the store at another hub).
    pub fn options_mut(&mut self) -> &mut EdgeOptions {
        &mut self.opts
    }

    /// Time from exec to the first `/healthz` 200 of the last start.
    pub fn last_ready_time(&self) -> Duration {
        self.last_ready
    }

    fn log_paths(&self, run: u32) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("run-{run}.stdout.log")),
            self.dir.path().join(format!("run-{run}.stderr.log")),
        )
    }

    /// Spawns the process on a new free port and waits for readiness.
    async fn launch(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        let run = self.runs;
        let (out_path, err_path) = self.log_paths(run);
        let out = File::create(&out_path).context("create stdout log")?;
        let err = File::create(&err_path).context("create stderr log")?;
        let port = free_port();
        self.addr = ([127, 0, 0, 1], port).into();
        self.http = Http::new(self.addr);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data")
            .arg(&self.data_dir)
            .args(&self.opts.args)
            // The server reads every AISLE_* variable as configuration and refuses unknown
            // keys: do not pass on the test harness's own variable.
            .env_remove("AISLE_EDGE_BIN")
            .env_remove("AISLE_HUB_BIN")
            .env("AISLE_FIRST_ADMIN_PASSWORD", &self.opts.admin_password)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.opts.raise_rate_limits {
            cmd.env("AISLE_LIMITS__MAX_FRAMES_PER_SEC", "1000000")
                .env("AISLE_LIMITS__MAX_FRAMES_BURST", "1000000")
                // The load generator and many tests open hundreds of connections from one
                // loopback address; the per-IP limits have their own tests (rate_limits.rs).
                .env("AISLE_LIMITS__MAX_FRAMES_PER_IP_PER_SEC", "1000000")
                .env("AISLE_LIMITS__MAX_FRAMES_PER_IP_BURST", "1000000")
                .env(
                    "AISLE_LIMITS__MAX_NEW_CONNECTIONS_PER_IP_PER_SEC",
                    "1000000",
                )
                .env("AISLE_LIMITS__MAX_NEW_CONNECTIONS_PER_IP_BURST", "1000000");
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = t0 + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                bail!(
                    "aisle-edge exited with {status} before it was ready\n{}",
                    self.logs_tail(run, 80)
                );
            }
            if let Some((200, body)) = http_get_raw(self.addr, "/healthz").await
                && body.contains("\"status\"")
                && body.contains("\"ok\"")
            {
                self.last_ready = t0.elapsed();
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.as_mut().unwrap().kill();
                let _ = self.child.as_mut().unwrap().wait();
                self.child = None;
                bail!(
                    "aisle-edge did not answer GET /healthz with 200 and \"status\":\"ok\" within {:?}\n{}",
                    READY_TIMEOUT,
                    self.logs_tail(run, 80)
                );
            }
            tokio::time::sleep(self.opts.ready_poll).await;
        }
    }

    /// SIGKILLs the process (a crash: nothing is drained) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status. Panics if
    /// the process is not running or does not exit within [`EXIT_TIMEOUT`].
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut c = self
            .child
            .take()
            .expect("terminate: aisle-edge is not running");
        signal(c.id(), libc::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(e) => panic!("wait for aisle-edge: {e}"),
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "aisle-edge did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{}",
                    self.logs_tail(self.runs, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM without waiting (see [`Edge::wait_exit`]).
    pub fn send_sigterm(&self) {
        let c = self.child.as_ref().expect("aisle-edge is not running");
        signal(c.id(), libc::SIGTERM);
    }

    /// Waits for the process to exit (after [`Edge::send_sigterm`]).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            let c = self.child.as_mut().expect("aisle-edge is not running");
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                self.child = None;
                panic!(
                    "aisle-edge did not exit within {EXIT_TIMEOUT:?}\n{}",
                    self.logs_tail(self.runs, 80)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the process if it still runs (SIGTERM, then waits) and starts it again on the
    /// same data directory, on a new free port. Panics if the new process does not get ready.
    pub async fn restart(&mut self) {
        if let Err(e) = self.try_restart().await {
            panic!("{e:#}");
        }
    }

    /// [`Edge::restart`] returning errors instead of panicking.
    pub async fn try_restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            let status = self.terminate().await;
            if !status.success() {
                eprintln!("note: aisle-edge exited with {status} on SIGTERM before restart");
            }
        }
        self.launch().await
    }

    /// The last `lines` lines of stdout and stderr of run `run` (1-based).
    pub fn logs_tail(&self, run: u32, lines: usize) -> String {
        let (out, err) = self.log_paths(run);
        format!(
            "---- aisle-edge run {run} stdout ({}) ----\n{}\n---- aisle-edge run {run} stderr ({}) ----\n{}",
            out.display(),
            tail(&out, lines),
            err.display(),
            tail(&err, lines)
        )
    }

    /// Logs of the current (last) run.
    pub fn logs(&self) -> String {
        self.logs_tail(self.runs, 200)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            for run in 1..=self.runs {
                eprintln!("{}", self.logs_tail(run, 60));
            }
        }
    }
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of a child we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

/// One plain HTTP/1.1 GET over a fresh loopback connection (no client library, no pool):
/// returns the status and the body, or `None` when the server does not answer (yet).
/// Used for readiness polling, where it must be cheap and exact.
pub async fn http_get_raw(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = s.set_nodelay(true);
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(1024);
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}
