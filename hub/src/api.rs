//! The HTTP API (docs/hub-api.md): health, metrics, HQ login, store registration, enrollment,
//! revocation and the store list.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::actor::{ANONYMOUS, hq};
use crate::audit::{Audit, AuditLog, Record};
use crate::auth;
use crate::error::{ApiError, Code};
use crate::metrics::METRICS;
use crate::store::{Account, EnrollOutcome, NewStore};
use crate::throttle::ClientIp;
use crate::{App, now_ms};

pub const ROLE_ADMIN: &str = "hq_admin";
pub const ROLE_VIEWER: &str = "hq_viewer";

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, or the API's error for a bad or oversized one (shared by every handler).
pub(crate) fn body<T>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    match payload {
        Ok(Json(value)) => Ok(value),
        Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
            Code::PayloadTooLarge,
            "the request body is too large",
        )),
        Err(err) => Err(ApiError::new(Code::BadJson, err.body_text())),
    }
}

pub async fn healthz(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "service": "aisle-hub",
        "region": app.config.region,
        "hub_id": app.hub_id,
    }))
}

pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such endpoint")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(Code::MethodNotAllowed, "method not allowed here")
}

/// The HQ account behind the request's bearer token, if it has one of `roles`.
pub(crate) async fn authorize(
    app: &App,
    headers: &HeaderMap,
    roles: &[&str],
) -> ApiResult<Account> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "a bearer token is required"))?;
    let account = app
        .store
        .session_account(auth::secret_hash(token.trim()), now_ms())
        .await?
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "unknown or expired token"))?;
    if !roles.contains(&account.role.as_str()) {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("this needs one of the roles {}", roles.join(", ")),
        ));
    }
    Ok(account)
}

#[derive(Deserialize)]
pub struct LoginBody {
    username: String,
    password: String,
}

/// `POST /api/login`. Failed attempts count per client IP and per username (throttle.rs);
/// past either limit the attempt is answered 429 before its password is looked at.
pub async fn login(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    ClientIp(ip): ClientIp,
    payload: Result<Json<LoginBody>, JsonRejection>,
) -> ApiResult<Response> {
    let LoginBody { username, password } = body(payload)?;
    if let Err(refused) = app.throttles.login.check(ip, &username) {
        return Ok(refused.into_response());
    }
    let account = app.store.account_by_username(username.clone()).await?;
    let permit = app
        .password_hashes
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let check = account.clone();
    let ok = tokio::task::spawn_blocking(move || match check {
        Some(account) => auth::verify_password(&account.password_hash, &password),
        None => {
            // Same work whether or not the account exists.
            let _ = auth::hash_password(&password);
            false
        }
    })
    .await
    .map_err(ApiError::internal)?;
    drop(permit);
    let account = match account {
        Some(account) if ok => account,
        found => {
            app.throttles.login.fail(ip, &username);
            // The username as typed (at most 64 characters), never the password.
            let typed: String = username.chars().take(64).collect();
            let target = found.map(|a| a.id).unwrap_or_default();
            let details = json!({ "username": typed });
            let record = Record::new(ANONYMOUS.into(), "hq_login_failed", &target, details);
            audit.append(record).await?;
            return Err(ApiError::new(
                Code::InvalidCredentials,
                "wrong username or password",
            ));
        }
    };
    let (token, hash) = auth::new_secret("hq");
    let expires_at_ms = now_ms() + app.config.session_ttl_secs * 1000;
    audit
        .audited_login(hash, account.id.clone(), expires_at_ms)
        .await?;
    Ok(Json(json!({
        "token": token,
        "expires_at_ms": expires_at_ms,
        "account": { "id": account.id, "username": account.username, "role": account.role },
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct CreateStoreBody {
    store_id: String,
    name: String,
}

pub async fn create_store(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    payload: Result<Json<CreateStoreBody>, JsonRejection>,
) -> ApiResult<Response> {
    let by = authorize(&app, &headers, &[ROLE_ADMIN]).await?;
    let CreateStoreBody { store_id, name } = body(payload)?;
    if aisle_sync::DocumentKey::settings(store_id.clone()).is_err() {
        return Err(ApiError::new(
            Code::BadRequest,
            "store_id must be 1 to 128 bytes without control characters",
        ));
    }
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::new(
            Code::BadRequest,
            "name must be 1 to 200 characters",
        ));
    }
    let (token, token_hash) = auth::new_secret("et");
    let now = now_ms();
    let expires = now + app.config.enrollment_token_ttl_secs * 1000;
    let created = audit
        .audited_create_store(
            NewStore {
                id: store_id.clone(),
                name: name.clone(),
                region: app.config.region.clone(),
                token_hash,
                token_expires_at_ms: expires,
                now_ms: now,
            },
            hq(&by.id),
        )
        .await?;
    if !created {
        return Err(ApiError::new(
            Code::StoreExists,
            format!("a store with id {store_id} is already registered"),
        ));
    }
    tracing::info!(store_id = %store_id, "store registered");
    // The registration stands even if this fails (its token is in this answer): the store then
    // gets the region's settings with HQ's next edit of them.
    if let Err(err) =
        crate::live_settings::seed_registered_store(&app, &audit, &store_id, &hq(&by.id)).await
    {
        tracing::error!(store_id = %store_id, error = %err, "the region settings were not written into the new store's settings document");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "store_id": store_id,
            "name": name,
            "region": app.config.region,
            "enrollment_token": token,
            "enrollment_expires_at_ms": expires,
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct EnrollBody {
    store_id: String,
    enrollment_token: String,
    #[serde(default)]
    edge_version: Option<String>,
}

/// `POST /api/enroll`. Failed attempts count per client IP and per store id (throttle.rs).
pub async fn enroll(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    ClientIp(ip): ClientIp,
    payload: Result<Json<EnrollBody>, JsonRejection>,
) -> ApiResult<Response> {
    let EnrollBody {
        store_id,
        enrollment_token,
        edge_version,
    } = body(payload)?;
    if let Err(refused) = app.throttles.enroll.check(ip, &store_id) {
        return Ok(refused.into_response());
    }
    let result = enroll_store(&app, &audit, &store_id, &enrollment_token, edge_version).await;
    if let Err(err) = &result
        && err.code != Code::Internal
    {
        app.throttles.enroll.fail(ip, &store_id);
    }
    result.map(IntoResponse::into_response)
}

async fn enroll_store(
    app: &App,
    audit: &Arc<dyn AuditLog>,
    store_id: &str,
    enrollment_token: &str,
    edge_version: Option<String>,
) -> ApiResult<Json<Value>> {
    let store_id = store_id.to_owned();
    let (credential, credential_hash) = auth::new_secret("sc");
    let outcome = audit
        .audited_enroll(
            store_id.clone(),
            auth::secret_hash(enrollment_token),
            credential_hash,
            now_ms(),
        )
        .await?;
    match outcome {
        EnrollOutcome::Enrolled => {
            tracing::info!(store_id = %store_id, edge_version = ?edge_version, "store enrolled");
            Ok(Json(json!({
                "credential": credential,
                "region": app.config.region,
                "hub_id": app.hub_id,
            })))
        }
        EnrollOutcome::UnknownStore | EnrollOutcome::BadToken => Err(ApiError::new(
            Code::InvalidEnrollment,
            "unknown store or wrong enrollment token",
        )),
        EnrollOutcome::TokenUsed => Err(ApiError::new(
            Code::TokenUsed,
            "this enrollment token was already used; ask HQ for a new registration",
        )),
        EnrollOutcome::TokenExpired => Err(ApiError::new(
            Code::TokenExpired,
            "the enrollment token has expired",
        )),
        EnrollOutcome::Revoked => Err(ApiError::new(Code::Revoked, "the store was revoked")),
    }
}

pub async fn revoke_store(
    State(app): State<Arc<App>>,
    Extension(audit): Audit,
    headers: HeaderMap,
    Path(store_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let by = authorize(&app, &headers, &[ROLE_ADMIN]).await?;
    if !audit
        .audited_revoke_store(store_id.clone(), hq(&by.id))
        .await?
    {
        return Err(ApiError::new(Code::NotFound, "no such store"));
    }
    // A connected store is cut off at once.
    app.registry.disconnect(&store_id);
    tracing::info!(store_id = %store_id, "store revoked");
    Ok(Json(json!({ "store_id": store_id, "revoked": true })))
}

pub async fn list_stores(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, &[ROLE_ADMIN, ROLE_VIEWER]).await?;
    let stores = app.store.list_stores().await?;
    let stores: Vec<Value> = stores
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.name,
                "region": s.region,
                "created_at_ms": s.created_at_ms,
                "enrolled": s.enrolled_at_ms.is_some(),
                "enrolled_at_ms": s.enrolled_at_ms,
                "revoked": s.revoked,
                "online": app.registry.is_online(&s.id),
                "last_sync_at_ms": s.last_sync_at_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "stores": stores })))
}
