//! Start-up (data dir, hub id, storage, first admin), the router, and the shutdown sequence.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::App;
use crate::api;
use crate::audit::AuditLog;
use crate::auth;
use crate::config::Config;
use crate::error::{ApiError, Code, StartError};
use crate::hq;
use crate::metrics::METRICS;
use crate::store::HubStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::sync::{self, Registry};

const HUB_ID_FILE: &str = "hub-id";

/// Runs the hub until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Before anything can answer: a SIGTERM right after the first `/healthz` must drain.
    let signals = aisle_service::signals::Signals::install()
        .map_err(|e| StartError::Other(format!("installing the SIGTERM handler: {e}")))?;
    std::fs::create_dir_all(&config.data).map_err(|source| StartError::DataDir {
        path: config.data.clone(),
        source,
    })?;
    let backend = Backend::open(&config).await?;
    let store = backend.store();
    let hub_id = match &backend {
        // A SQLite hub's identity has been a file in its data directory since the first
        // version; replicas share theirs through the database.
        Backend::Sqlite(_) => {
            load_or_create_hub_id(&config.data).map_err(|source| StartError::DataDir {
                path: config.data.clone(),
                source,
            })?
        }
        Backend::Postgres(_) => store.identity(ulid::Ulid::new().to_string()).await?,
    };
    if store.count_accounts().await? == 0 {
        // Replicas starting together may race to create it: one wins, the others find it.
        if let Err(err) = create_first_admin(backend.audit().as_ref(), &config).await {
            if store.count_accounts().await? == 0 {
                return Err(err);
            }
            tracing::info!("the first HQ account was created by another replica");
        }
    }
    METRICS.documents.set(store.count_documents().await? as i64);
    crate::projection::backfill(store.as_ref()).await?;

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
    // Subscribed before the shares are read: a share another replica commits in between is
    // then in the map or in the events, never in neither.
    let replica_events = store.events();
    let app = Arc::new(App {
        sync_connections: Arc::new(Semaphore::new(config.limits.max_sync_connections)),
        password_hashes: Semaphore::new(config.limits.max_concurrent_password_hashes),
        hub_id,
        store: Arc::clone(&store),
        registry: Registry::default(),
        shares: crate::continuation::Shares::load(store.shares().await?),
        settings_lock: Default::default(),
        web: crate::web::assets(config.web_dir.clone()),
        throttles: crate::throttle::Throttles::new(&config.limits),
        config,
    });
    tokio::spawn(crate::erasure::sweep(Arc::clone(&app)));
    tokio::spawn(crate::replica::follow(Arc::clone(&app), replica_events));
    tracing::info!(
        addr = %local,
        region = %app.config.region,
        hub_id = %app.hub_id,
        "aisle-hub listening"
    );
    let audit = backend.audit();
    // The peer address is the client's identity for the per-IP limits (throttle.rs).
    let service = router(Arc::clone(&app), audit)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(signals.wait())
        .await
        .map_err(|e| StartError::Other(format!("server: {e}")))?;
    backend.stop();
    tracing::info!("stopped");
    Ok(())
}

/// The routes; `audit` is the store's audited writes, for the handlers that record who did what
/// (`crate::audit`; an axum `Extension`, since `App` holds the storage behind `HubStore`).
pub fn router(app: Arc<App>, audit: Arc<dyn crate::audit::AuditLog>) -> Router {
    let body_limit = app.config.limits.max_http_body_bytes;
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/sync", get(upgrade))
        .route("/api/login", post(api::login))
        .route("/api/enroll", post(api::enroll))
        .route("/api/handoffs", post(crate::continuation::register))
        .route("/api/continuations", post(crate::continuation::redeem))
        .route("/api/updates/{arch}/latest", get(crate::updates::latest))
        .route("/api/canned-replies", get(crate::settings::list))
        .route(
            "/api/canned-replies/{id}",
            axum::routing::put(crate::settings::put).delete(crate::settings::delete),
        )
        .route("/api/stores", get(api::list_stores).post(api::create_store))
        .route("/api/stores/{id}/revoke", post(api::revoke_store))
        .route(
            "/api/settings/region",
            get(crate::live_settings::get_region).put(crate::live_settings::put_region),
        )
        .route(
            "/api/stores/{id}/settings",
            get(crate::live_settings::get_store).put(crate::live_settings::put_store),
        )
        .route("/api/conversations", get(hq::list_conversations))
        .route(
            "/api/conversations/{id}",
            get(hq::conversation).delete(crate::erasure::erase_conversation),
        )
        .route(
            "/api/customers/{customer_id}",
            axum::routing::delete(crate::erasure::erase_customer),
        )
        .route("/api/search", get(hq::search))
        .route("/api/figures", get(hq::figures))
        .route("/api/audit", get(crate::audit::list))
        .route("/", get(crate::web::dashboard))
        .route("/{dir}/{*file}", get(crate::web::asset))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(audit))
        .with_state(app)
}

async fn upgrade(State(app): State<Arc<App>>, ws: WebSocketUpgrade) -> Response {
    let Ok(permit) = Arc::clone(&app.sync_connections).try_acquire_owned() else {
        return ApiError::new(
            Code::TooManyConnections,
            "the hub holds max_sync_connections connections; retry later",
        )
        .into_response();
    };
    let max = app.config.limits.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| sync::serve(app, socket, permit))
}

/// The hub's storage identity: a ULID made on the first start and kept in the data directory.
fn load_or_create_hub_id(data: &Path) -> std::io::Result<String> {
    let path = data.join(HUB_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if ulid::Ulid::from_string(text.trim()).is_ok() => Ok(text.trim().to_owned()),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} does not hold a ULID", path.display()),
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = ulid::Ulid::new().to_string();
            let tmp = data.join(format!("{HUB_ID_FILE}.tmp"));
            std::fs::write(&tmp, &id)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(err) => Err(err),
    }
}

/// Where the hub's data lives (`Config::database`).
enum Backend {
    /// One process, its SQLite file in the data directory.
    Sqlite(Arc<SqliteStore>),
    /// Replicas sharing one PostgreSQL database.
    Postgres(Arc<PostgresStore>),
}

impl Backend {
    async fn open(config: &Config) -> Result<Backend, StartError> {
        match &config.database {
            None => Ok(Backend::Sqlite(Arc::new(SqliteStore::open(
                &config.database_path(),
                config.limits.reader_threads,
            )?))),
            Some(url) => {
                let replica_id = ulid::Ulid::new().to_string();
                let store = PostgresStore::connect(
                    url,
                    config.limits.postgres_pool_connections,
                    std::time::Duration::from_millis(config.limits.postgres_pool_wait_ms),
                    replica_id.clone(),
                    config.limits.max_replica_events,
                )
                .await?;
                tracing::info!(
                    database = %without_password(url),
                    replica_id = %replica_id,
                    pool_connections = config.limits.postgres_pool_connections,
                    "on PostgreSQL"
                );
                Ok(Backend::Postgres(Arc::new(store)))
            }
        }
    }

    fn store(&self) -> Arc<dyn HubStore> {
        match self {
            Backend::Sqlite(store) => Arc::clone(store) as Arc<dyn HubStore>,
            Backend::Postgres(store) => Arc::clone(store) as Arc<dyn HubStore>,
        }
    }

    fn audit(&self) -> Arc<dyn AuditLog> {
        match self {
            Backend::Sqlite(store) => Arc::clone(store) as Arc<dyn AuditLog>,
            Backend::Postgres(store) => Arc::clone(store) as Arc<dyn AuditLog>,
        }
    }

    fn stop(&self) {
        match self {
            Backend::Sqlite(store) => store.stop(),
            Backend::Postgres(store) => store.stop(),
        }
    }
}

/// A database URL fit for a log line: user, hosts, ports and database name from the parsed
/// URL, never its text (a password may sit in the authority or in `?password=`).
pub fn without_password(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "(an unreadable postgres URL)".to_owned();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// An empty hub gets one `hq_admin` account; its login is printed once, on stdout.
async fn create_first_admin(
    store: &dyn crate::audit::AuditLog,
    config: &Config,
) -> Result<(), StartError> {
    let (password, generated) = match &config.first_admin_password {
        Some(password) => (password.clone(), false),
        None => (auth::random_password(), true),
    };
    let hashed = password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&hashed))
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
        .map_err(StartError::Other)?;
    let by = crate::audit::actor::SYSTEM.to_owned();
    store
        .audited_create_account("admin".into(), hash, api::ROLE_ADMIN.into(), by)
        .await?;
    if generated {
        println!(
            "aisle-hub: created the first HQ account: username=admin password={password} (shown once)"
        );
    } else {
        println!(
            "aisle-hub: created the first HQ account: username=admin (password from configuration)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_database_url_is_logged_without_its_password() {
        for url in [
            "postgres://hub:s3cret@db.internal:5433/region",
            "postgres://hub@db.internal:5433/region?password=s3cret",
            "postgresql://db.internal/region?user=hub&password=s3cret",
        ] {
            let shown = without_password(url);
            assert!(!shown.contains("s3cret"), "{url} → {shown}");
            assert!(
                shown.contains("db.internal") && shown.contains("region"),
                "{shown}"
            );
        }
        assert_eq!(
            without_password("postgres://hub:pw@db:5433/region"),
            "postgres://hub@db:5433/region"
        );
    }
}
