//! Start-up, the HTTP router, the accept loop and the shutdown sequence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::api;
use crate::auth::{self, ResumeTokens};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::error::{ApiError, Code, StartError};
use crate::frame::StaffView;
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;
use crate::store::writer::replica::Changes;
use crate::store::{self, queries, reader::Reader, writer::Writer};
use crate::throttle::ClientIp;
use crate::{App, connection};

/// Reader threads: enough for history pages and lists beside the writer on a small box.
const READER_THREADS: usize = 2;

/// Runs the appliance until SIGTERM or Ctrl-C, then drains and returns.
pub async fn run(mut config: Config) -> Result<(), StartError> {
    let started = Instant::now();
    fit_connections_to_descriptors(&mut config.limits)?;
    // Listen for signals before anything can answer: a SIGTERM right after the first
    // `/healthz` must drain, not kill.
    let signal = aisle_service::signals::Signals::install()
        .map_err(|e| StartError::Other(format!("installing the SIGTERM handler: {e}")))?;
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.clone(),
        source,
    })?;
    let db_path = config.database_path();
    // The running slot, read once; a rolled-back update may have left a database this binary
    // does not know (store::restore_after_rollback).
    let updates = crate::update::Updates::new(&config.update);
    let rolled_back = crate::update::status_blocking(&config.update, updates.current_slot)
        .ok()
        .flatten()
        .and_then(|status| status.rolled_back);
    if rolled_back.is_some() {
        store::restore_after_rollback(&db_path)?;
    }
    let conn = store::open(&db_path, config.limits.writer_page_cache_kib)?;
    let fresh = queries::count_staff(&conn).map_err(|e| StartError::Other(e.message))? == 0;
    if fresh {
        create_first_admin(&conn, &config)?;
    }
    if config.first_admin_password.is_some()
        && let Some(file) = &config.file
    {
        // The account exists now: its initial password does not stay in the file (on the
        // appliance, a FAT partition anyone holding the disk can read).
        match crate::config::forget_setting(file, &["first_admin_password"]) {
            Ok(true) => {
                tracing::info!(file = %file.display(), "removed first_admin_password from the config file")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(file = %file.display(), error = %err, "could not remove first_admin_password from the config file")
            }
        }
    }
    // A log cut or rewritten while the server was stopped is recorded before anything is
    // appended after it (crate::audit).
    crate::audit::check_anchor_at_start(&conn)?;
    crate::audit::anchor_after_commit(&conn);
    if let Some((seq, hash)) = crate::audit::head(&conn)? {
        tracing::info!(seq, hash = %hash, "audit log head");
    }
    let tokens =
        ResumeTokens::load_or_create(&config.data).map_err(|source| StartError::DataDir {
            path: config.data.clone(),
            source,
        })?;
    let reader = Reader::open(
        &db_path,
        READER_THREADS,
        config.limits.max_read_queue,
        config.limits.reader_page_cache_kib,
    )?;
    let (stop_checkpoints, checkpoint_stop) = std::sync::mpsc::channel();
    let checkpoint_thread = aisle_service::checkpoint::start(&db_path, checkpoint_stop)?;
    let settings = Arc::new(start_settings(&conn, &config)?);
    let delivery = Arc::new(Delivery::new());
    let changes = Arc::new(Changes::default());
    let (writer, writer_thread) = Writer::start(
        conn,
        config.limits.clone(),
        config.store_id.clone(),
        Arc::clone(&delivery),
        Arc::clone(&changes),
        Arc::clone(&settings),
    )
    .map_err(|e| StartError::Other(format!("starting the writer thread: {e}")))?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let (shutdown, completion) = Shutdown::new();
    let config_web_dir = config.web_dir.clone();
    let throttles = crate::throttle::Throttles::new(&config.limits);
    let classifier = crate::intent::start(&config)
        .map_err(|e| StartError::Other(format!("loading the intent model: {e}")))?;
    let app = Arc::new(App {
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        password_hashes: Semaphore::new(config.limits.max_concurrent_password_hashes),
        config,
        writer: writer.clone(),
        reader,
        delivery,
        tokens,
        shutdown,
        started,
        changes,
        uplink: Default::default(),
        web: crate::web::assets(config_web_dir),
        classifier,
        model_error: Default::default(),
        update: updates,
        throttles,
        settings,
    });
    let _model_watcher = crate::intent::watch(&app);
    let _settings_watcher = crate::settings::watch(&app);
    let router = router(Arc::clone(&app));
    let uplink = tokio::spawn(crate::uplink::run(Arc::clone(&app)));
    tracing::info!(
        addr = %local,
        store_id = %app.config.store_id,
        ready_ms = started.elapsed().as_millis() as u64,
        "aisle-edge listening"
    );

    let listener = Acceptor {
        inner: listener,
        backoff: Duration::from_millis(app.config.limits.accept_error_backoff_ms),
    };
    // Database open, model loaded, listener bound: this slot works; bless it if on trial.
    tokio::spawn(crate::update::bless_running(Arc::clone(&app)));
    tokio::spawn(crate::erasure::sweep(Arc::clone(&app)));
    tokio::spawn(crate::update::pull_from_hub(Arc::clone(&app)));
    let signal_app = Arc::clone(&app);
    // The peer address is the client's identity for the per-IP limits (throttle.rs).
    // (`tap_io` only so that axum's `ConnectInfo` knows this listener's address type.)
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|_| {});
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move {
            signal.wait().await;
            tracing::info!("shutting down: telling clients, finishing commits");
            signal_app.shutdown.trigger();
        })
        .await
        .map_err(|e| StartError::Other(format!("server: {e}")))?;

    // HTTP has stopped accepting; WebSocket tasks are saying goodbye.
    let grace = Duration::from_millis(app.config.limits.shutdown_grace_ms * 2);
    if tokio::time::timeout(grace, completion.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the grace period");
    }
    let _ = tokio::time::timeout(grace, uplink).await;
    writer.stop();
    drop(app);
    let _ = tokio::task::spawn_blocking(move || {
        let _ = writer_thread.join();
        let _ = stop_checkpoints.send(());
        let _ = checkpoint_thread.join();
    })
    .await;
    tracing::info!("stopped cleanly");
    Ok(())
}

pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.config.limits.max_http_body_bytes;
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/ws", get(upgrade))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/me", get(api::me))
        .route("/api/staff", get(api::list_staff).post(api::create_staff))
        .route("/api/staff/{id}", axum::routing::patch(api::update_staff))
        .route(
            "/api/canned-replies",
            get(api::list_canned).post(api::create_canned),
        )
        .route(
            "/api/canned-replies/{id}",
            put(api::update_canned).delete(api::delete_canned),
        )
        .route("/api/conversations", get(api::list_conversations))
        .route(
            "/api/conversations/{id}",
            get(api::get_conversation).delete(crate::erasure::erase_conversation),
        )
        .route(
            "/api/customers/{id}",
            axum::routing::delete(crate::erasure::erase_customer),
        )
        .route(
            "/api/conversations/{id}/messages",
            get(api::conversation_messages),
        )
        .route(
            "/api/conversations/{id}/actions",
            post(api::conversation_action),
        )
        .route(
            "/api/customers/{id}/conversations",
            get(api::customer_conversations),
        )
        .route("/api/handoff/{code}", post(api::redeem_handoff))
        .route(
            "/api/attachments",
            post(crate::attachment::upload).layer(DefaultBodyLimit::max(
                app.config.limits.max_attachment_bytes,
            )),
        )
        .route("/api/attachments/{id}", get(crate::attachment::download))
        .route("/api/qr.svg", get(crate::web::qr))
        .route(
            "/api/bot-policy",
            get(api::get_bot_policy).put(api::put_bot_policy),
        )
        .route("/api/v1/settings", get(api::get_settings))
        .route("/api/bot-answers", get(api::bot_answers))
        .route("/api/audit", get(crate::audit::list))
        .route(
            "/api/update",
            // The bundle is streamed to a file with its own limit (max_bundle_bytes).
            get(crate::update::get_update)
                .post(crate::update::post_update)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/", get(crate::web::console))
        .route("/chat", get(crate::web::chat))
        .route("/h/{code}", get(crate::web::handoff_link))
        .route("/{dir}/{*file}", get(crate::web::asset))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

async fn upgrade(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    if app.shutdown.is_triggered() {
        return ApiError::new(Code::ShuttingDown, "the appliance is stopping").into_response();
    }
    if let Err(refused) = app.throttles.new_connection(ip) {
        return refused.into_response();
    }
    let Ok(permit) = Arc::clone(&app.connections).try_acquire_owned() else {
        METRICS.limit("max_connections");
        tracing::warn!(
            max_connections = app.config.limits.max_connections,
            "connection limit reached; refusing new WebSocket connections"
        );
        return ApiError::new(
            Code::TooManyConnections,
            "the appliance holds max_connections connections; retry shortly",
        )
        .into_response();
    };
    let limits = &app.config.limits;
    // Frames up to 4× the limit are read and answered with `frame_too_large`; beyond that
    // tungstenite refuses to buffer them at all.
    let hard_cap = limits.max_frame_bytes * 4;
    // What one connection can hold back from a client that stops reading is bounded
    // without a `max_write_buffer_size`: the socket's sink waits (`poll_ready`) until
    // tungstenite's buffer is flushed once it passes `ws_write_buffer_bytes`, so at most
    // that plus one frame sits in user space; frames behind it wait in the connection's
    // queue of `max_outbound_frames` (full: dropped as `slow_consumer`), and a write blocked
    // for `write_timeout_ms` ends the connection (tests/tests/slow_clients.rs).
    ws.read_buffer_size(limits.ws_read_buffer_bytes)
        .write_buffer_size(limits.ws_write_buffer_bytes)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| connection::serve(app, socket, permit, ip))
}

/// Raises the soft open-file limit to the hard one and lowers `max_connections` to what
/// the descriptors allow.
///
/// Every WebSocket connection holds one descriptor. With the soft limit left at a
/// distribution's default (often 1,024) the box would fail `accept` long before
/// `max_connections`, and a configured `max_connections` above the limit would let sockets
/// use up the descriptors SQLite and the listener need. So the limit in force is
/// `min(max_connections, nofile - reserved_file_descriptors)`: past it, upgrades get the
/// documented 503 while the database keeps working.
fn fit_connections_to_descriptors(limits: &mut crate::limits::Limits) -> Result<(), StartError> {
    let (soft_before, hard) = rlimit::Resource::NOFILE
        .get()
        .map_err(|e| StartError::Other(format!("reading RLIMIT_NOFILE: {e}")))?;
    let nofile = match rlimit::increase_nofile_limit(hard) {
        Ok(nofile) => nofile,
        Err(err) => {
            tracing::warn!(error = %err, soft = soft_before, hard, "could not raise the open-file limit");
            soft_before
        }
    };
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let room = nofile.saturating_sub(limits.reserved_file_descriptors);
    if room == 0 {
        return Err(StartError::Other(format!(
            "the open-file limit is {nofile} descriptors, not more than \
             limits.reserved_file_descriptors = {}: no descriptor is left for connections \
             (raise the hard limit, e.g. `ulimit -n`, or lower the reserve)",
            limits.reserved_file_descriptors
        )));
    }
    let configured = limits.max_connections;
    limits.max_connections = configured.min(room);
    METRICS.open_files_limit.set(nofile as i64);
    METRICS.max_connections.set(limits.max_connections as i64);
    if limits.max_connections < configured {
        tracing::warn!(
            nofile,
            soft_before,
            reserved = limits.reserved_file_descriptors,
            configured,
            max_connections = limits.max_connections,
            "the open-file limit allows fewer connections than limits.max_connections; \
             raise the hard limit to accept more"
        );
    } else {
        tracing::info!(
            nofile,
            soft_before,
            reserved = limits.reserved_file_descriptors,
            max_connections = limits.max_connections,
            "open-file limit raised; max_connections fits"
        );
    }
    Ok(())
}

/// The server's listener: accepted sockets get TCP_NODELAY, and an `accept` that fails
/// because the process (EMFILE) or the system (ENFILE) is out of descriptors is counted,
/// logged and retried after `accept_error_backoff_ms`.
///
/// The failing connection stays in the kernel's backlog, so retrying at once would fail
/// again at once: a busy loop on one core that starves the connections already open. Waiting
/// lets closing sockets free descriptors; other errors of one connection (reset before
/// accept) are skipped at once.
struct Acceptor {
    inner: TcpListener,
    backoff: Duration,
}

impl axum::serve::Listener for Acceptor {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Nagle + delayed ACK cost an order of magnitude on small frames
                    // (MEASUREMENTS.md).
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "TCP_NODELAY");
                    }
                    return (tcp, addr);
                }
                Err(err) if is_out_of_descriptors(&err) => {
                    METRICS.limit("nofile");
                    tracing::warn!(
                        error = %err,
                        backoff_ms = self.backoff.as_millis() as u64,
                        "accept: out of file descriptors; new connections wait in the backlog"
                    );
                    tokio::time::sleep(self.backoff).await;
                }
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    tracing::error!(error = %err, "accept failed");
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Errors of the one connection being accepted (it was reset or aborted meanwhile).
fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// The live settings at start: the file's layer, the admin's, and HQ's from the stored
/// settings document; accounts that follow the store's capacity get it.
fn start_settings(
    conn: &rusqlite::Connection,
    config: &Config,
) -> Result<crate::settings::LiveSettings, StartError> {
    let file = crate::settings::file_layer(config.file.as_deref())
        .map_err(|e| StartError::Other(e.to_string()))?;
    let admin = crate::bot::admin_layer(conn).map_err(|e| StartError::Other(e.message))?;
    let (region, store) = crate::store::writer::replica::stored_hq_layers(conn, &config.store_id)
        .map_err(|e| StartError::Other(e.message))?;
    let live = crate::settings::LiveSettings::start(file, admin, region, store)
        .map_err(|e| StartError::Other(format!("settings: {e}")))?;
    crate::settings::project_capacity(conn, &live.current())
        .map_err(|e| StartError::Other(e.message))?;
    Ok(live)
}

/// An empty store gets one admin account; its login is printed once, on stdout.
fn create_first_admin(conn: &rusqlite::Connection, config: &Config) -> Result<(), StartError> {
    let (password, generated) = match &config.first_admin_password {
        Some(password) => (password.clone(), false),
        None => (auth::random_password(), true),
    };
    let hash = auth::hash_password(&password).map_err(|e| StartError::Other(e.message))?;
    let staff = StaffView {
        id: aisle_sync::StaffId::new(),
        username: "admin".into(),
        name: "Store admin".into(),
        role: "admin".into(),
        capacity: config.routing.capacity_per_staff,
        capacity_follows_store: true,
        team: None,
        skills: Vec::new(),
        disabled: false,
    };
    // The account and its audit entry together.
    let tx = conn.unchecked_transaction()?;
    api::insert_staff(&tx, &staff, &hash, crate::audit::actor::SYSTEM)
        .map_err(|e| StartError::Other(e.message))?;
    tx.commit()?;
    if generated {
        println!(
            "aisle-edge: created the first staff account: username=admin password={password} \
             (shown once; change it in the admin page)"
        );
    } else {
        println!(
            "aisle-edge: created the first staff account: username=admin (password from configuration)"
        );
    }
    Ok(())
}
