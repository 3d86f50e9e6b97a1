//! The HTTP JSON API (docs/api.md): staff sessions, administration, history, hand-off.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use aisle_sync::{ConversationId, CustomerId, StaffId, Status};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rusqlite::OptionalExtension;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::error::{ApiError, Code};
use crate::frame::StaffView;
use crate::store::queries::{self, Filter, StaffSession};
use crate::store::writer::{Action, ActionCmd, Actor, Command};
use crate::throttle::ClientIp;
use crate::{App, audit, auth, now_ms};

type AppState = State<Arc<App>>;
type ApiResult = Result<Response, ApiError>;

/// A JSON body whose rejection is our JSON error (not axum's plain-text one).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        crate::metrics::METRICS.limit("max_http_body_bytes");
        ApiError::new(
            Code::PayloadTooLarge,
            "request body exceeds max_http_body_bytes",
        )
    } else {
        ApiError::new(Code::BadRequest, rejection.body_text())
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(Code::BadRequest, rejection.body_text())
}

/// The signed-in staff member, from `Authorization: Bearer <token>`.
pub struct StaffAuth(pub StaffSession);

impl FromRequestParts<Arc<App>> for StaffAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Ok(StaffAuth(
            staff_session(app, &required_bearer(&parts.headers)?).await?,
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

/// The bearer token, or `unauthorized`.
pub fn required_bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    bearer(headers).ok_or_else(|| ApiError::new(Code::Unauthorized, "missing bearer token"))
}

/// The live session of a staff token (only its hash is looked up).
pub async fn staff_session(app: &App, token: &str) -> Result<StaffSession, ApiError> {
    let hash = auth::token_hash(token);
    app.reader
        .read(move |conn| queries::staff_by_session(conn, &hash, now_ms()))
        .await
}

impl StaffAuth {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(Code::Forbidden, "store admins only"))
        }
    }

    fn actor(&self) -> Actor {
        Actor::Staff {
            id: self.0.staff.id,
            admin: self.0.is_admin(),
        }
    }
}

pub async fn healthz(State(app): AppState) -> Json<Value> {
    let hub = app.uplink.status();
    let region = app
        .uplink
        .credential()
        .map(|c| c.region)
        .or_else(|| app.config.region.clone());
    // `syncing`: a session with the hub is up (its `welcome` received, rounds flowing both
    // ways), so what is written here reaches the hub within a round. False while enrolling,
    // reconnecting, refused, or with no hub configured.
    let syncing = hub.connected;
    let enrolled = hub.enrolled;
    let image = crate::update::health(&app).await;
    Json(json!({
        "status": "ok",
        "service": "aisle-edge",
        "version": env!("CARGO_PKG_VERSION"),
        "store_id": app.config.store_id,
        "uptime_secs": app.started.elapsed().as_secs(),
        "hub": hub,
        "region": region,
        "enrolled": enrolled,
        "syncing": syncing,
        "image": image,
        "model": {
            "version": app.classifier.version(),
            "path": app.config.model.path,
            "error": *app.model_error.lock().unwrap_or_else(|e| e.into_inner()),
        },
    }))
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::METRICS.render(),
    )
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such endpoint")
}

pub async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::new(Code::BadRequest, "this endpoint does not take that method").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// Runs Argon2 off the runtime, bounded by `max_concurrent_password_hashes`.
async fn blocking_hash<T: Send + 'static>(
    app: &App,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = app
        .password_hashes
        .acquire()
        .await
        .map_err(|_| ApiError::new(Code::ShuttingDown, "the appliance is stopping"))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// A hash to verify against when the username is unknown, so both answers take as long.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| auth::hash_password("not a password of anyone").unwrap_or_default());

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /api/login`. Failed attempts count per client IP and per username (throttle.rs);
/// past either limit the attempt is answered 429 before its password is looked at.
pub async fn login(
    State(app): AppState,
    ClientIp(ip): ClientIp,
    Body(login): Body<Login>,
) -> ApiResult {
    if let Err(refused) = app.throttles.check_login(ip, &login.username) {
        return Ok(refused.into_response());
    }
    let username = login.username.clone();
    let found = app
        .reader
        .read(move |conn| queries::staff_for_login(conn, &username))
        .await?;
    let (staff, hash) = match found {
        Some((staff, hash)) => (Some(staff), hash),
        None => (None, DUMMY_HASH.clone()),
    };
    let password = login.password;
    let valid = blocking_hash(&app, move || auth::verify_password(&hash, &password)).await?;
    let staff = match staff {
        Some(staff) if valid && !staff.disabled => staff,
        found => {
            app.throttles.login_failed(ip, &login.username);
            audit_failed_login(&app, &login.username, found.as_ref(), valid).await?;
            return Err(ApiError::new(
                Code::InvalidCredentials,
                "wrong username or password",
            ));
        }
    };
    let (token, token_hash) = auth::new_session_token();
    let now = now_ms();
    let expires_at_ms = now + app.config.session_ttl_secs * 1000;
    let staff_id = staff.id;
    app.writer
        .exec(move |conn| {
            conn.execute(
                "DELETE FROM sessions WHERE staff_id = ?1 AND expires_at_ms <= ?2",
                rusqlite::params![staff_id.to_string(), now as i64],
            )?;
            conn.execute(
                "INSERT INTO sessions (token_hash, staff_id, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    token_hash,
                    staff_id.to_string(),
                    now as i64,
                    expires_at_ms as i64
                ],
            )?;
            let id = staff_id.to_string();
            audit::append(
                conn,
                &audit::actor::staff(&id),
                "staff_login",
                &id,
                json!({}),
            )?;
            Ok(())
        })
        .await?;
    Ok(
        Json(json!({ "token": token, "expires_at_ms": expires_at_ms, "staff": staff }))
            .into_response(),
    )
}

/// The audit entry of a refused login (the username as typed, at most 64 characters; never
/// the password). `anonymous` acts; the target is the account tried, when it exists.
async fn audit_failed_login(
    app: &App,
    username: &str,
    found: Option<&StaffView>,
    password_valid: bool,
) -> Result<(), ApiError> {
    let username: String = username.chars().take(64).collect();
    let (target, reason) = match found {
        None => (String::new(), "unknown_user"),
        Some(staff) if !password_valid => (staff.id.to_string(), "wrong_password"),
        Some(staff) => (staff.id.to_string(), "disabled"),
    };
    app.writer
        .exec(move |conn| {
            audit::append(
                conn,
                audit::actor::ANONYMOUS,
                "staff_login_failed",
                &target,
                json!({ "username": username, "reason": reason }),
            )?;
            Ok(())
        })
        .await
}

pub async fn logout(State(app): AppState, headers: HeaderMap) -> ApiResult {
    let token = bearer(&headers)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing bearer token"))?;
    let hash = auth::token_hash(&token);
    app.writer
        .exec(move |conn| {
            let staff: Option<String> = conn
                .query_row(
                    "SELECT staff_id FROM sessions WHERE token_hash = ?1",
                    [&hash],
                    |r| r.get(0),
                )
                .optional()?;
            conn.execute("DELETE FROM sessions WHERE token_hash = ?1", [hash])?;
            if let Some(id) = staff {
                audit::append(
                    conn,
                    &audit::actor::staff(&id),
                    "staff_logout",
                    &id,
                    json!({}),
                )?;
            }
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn me(auth: StaffAuth) -> Json<Value> {
    Json(json!({ "staff": auth.0.staff }))
}

pub async fn list_staff(State(app): AppState, _auth: StaffAuth) -> ApiResult {
    let rows = app.reader.read(queries::list_staff).await?;
    let online = app.delivery.online_staff();
    let staff: Vec<Value> = rows
        .into_iter()
        .map(|(staff, open_chats)| {
            let mut value = serde_json::to_value(&staff).unwrap_or_default();
            value["online"] = json!(online.contains(&staff.id));
            value["open_chats"] = json!(open_chats);
            value
        })
        .collect();
    Ok(Json(json!({ "staff": staff })).into_response())
}

#[derive(Deserialize)]
pub struct NewStaff {
    username: String,
    name: String,
    password: String,
    #[serde(default = "default_role")]
    role: String,
    /// Unset: the account follows the store's `routing.capacity_per_staff`.
    capacity: Option<u32>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    skills: Vec<String>,
}

fn default_role() -> String {
    "staff".into()
}

const MAX_CAPACITY: u32 = 1000;

fn check_staff_fields(
    name: Option<&str>,
    password: Option<&str>,
    role: Option<&str>,
    capacity: Option<u32>,
) -> Result<(), ApiError> {
    let bad = |m: &str| Err(ApiError::new(Code::BadRequest, m));
    if let Some(name) = name
        && (name.trim().is_empty() || name.chars().count() > 100)
    {
        return bad("name must be 1 to 100 characters");
    }
    if let Some(password) = password
        && !(8..=256).contains(&password.chars().count())
    {
        return bad("password must be 8 to 256 characters");
    }
    if let Some(role) = role
        && role != "staff"
        && role != "admin"
    {
        return bad("role is \"staff\" or \"admin\"");
    }
    if let Some(capacity) = capacity
        && capacity > MAX_CAPACITY
    {
        return bad("capacity must be 0 to 1000");
    }
    Ok(())
}

/// A team or skills list routing rules can name: short names, no duplicates.
fn check_routing_tags(team: Option<&str>, skills: Option<&[String]>) -> Result<(), ApiError> {
    let bad = |m: String| Err(ApiError::new(Code::BadRequest, m));
    let max = aisle_settings::limits::MAX_NAME_BYTES;
    if let Some(team) = team
        && (team.trim().is_empty() || team.len() > max)
    {
        return bad(format!("team must be 1 to {max} bytes"));
    }
    if let Some(skills) = skills {
        if skills.len() > aisle_settings::limits::MAX_LIST_ITEMS {
            return bad(format!(
                "at most {} skills",
                aisle_settings::limits::MAX_LIST_ITEMS
            ));
        }
        for (i, skill) in skills.iter().enumerate() {
            if skill.trim().is_empty() || skill.len() > max || skills[..i].contains(skill) {
                return bad(format!(
                    "skills are distinct names of 1 to {max} bytes ({skill:?})"
                ));
            }
        }
    }
    Ok(())
}

pub async fn create_staff(
    State(app): AppState,
    auth: StaffAuth,
    Body(new): Body<NewStaff>,
) -> ApiResult {
    auth.require_admin()?;
    let username_ok = (1..=64).contains(&new.username.len())
        && new
            .username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !username_ok {
        return Err(ApiError::new(
            Code::BadRequest,
            "username must be 1 to 64 of a-z, 0-9, '.', '_', '-'",
        ));
    }
    check_staff_fields(
        Some(&new.name),
        Some(&new.password),
        Some(&new.role),
        new.capacity,
    )?;
    check_routing_tags(new.team.as_deref(), Some(&new.skills))?;
    let password = new.password.clone();
    let hash = blocking_hash(&app, move || auth::hash_password(&password)).await??;
    let staff = StaffView {
        id: StaffId::new(),
        username: new.username,
        name: new.name.trim().to_owned(),
        role: new.role,
        capacity: new.capacity.unwrap_or(
            app.settings
                .current()
                .resolved
                .settings
                .routing
                .capacity_per_staff,
        ),
        capacity_follows_store: new.capacity.is_none(),
        team: new.team,
        skills: new.skills,
        disabled: false,
    };
    let row = staff.clone();
    let by = audit::actor::staff(auth.0.staff.id);
    app.writer
        .exec(move |conn| insert_staff(conn, &row, &hash, &by))
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "staff": staff }))).into_response())
}

/// Inserts a staff account and its `staff_created` audit entry (`by` is the audit actor).
pub fn insert_staff(
    conn: &rusqlite::Connection,
    staff: &StaffView,
    hash: &str,
    by: &str,
) -> Result<(), ApiError> {
    let taken: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM staff WHERE username = ?1",
            [&staff.username],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        return Err(ApiError::new(Code::Conflict, "that username is taken"));
    }
    conn.execute(
        "INSERT INTO staff (id, username, name, password_hash, role, capacity, disabled, created_at_ms,
                            capacity_follows_store, team, skills)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10)",
        rusqlite::params![
            staff.id.to_string(),
            staff.username,
            staff.name,
            hash,
            staff.role,
            staff.capacity,
            now_ms() as i64,
            staff.capacity_follows_store,
            staff.team,
            serde_json::to_string(&staff.skills).map_err(ApiError::internal)?,
        ],
    )?;
    audit::append(
        conn,
        by,
        "staff_created",
        &staff.id.to_string(),
        json!({ "username": staff.username, "role": staff.role, "capacity": staff.capacity,
                "team": staff.team, "skills": staff.skills }),
    )?;
    Ok(())
}

#[derive(Deserialize)]
pub struct StaffPatch {
    name: Option<String>,
    password: Option<String>,
    role: Option<String>,
    capacity: Option<u32>,
    /// True: the account follows the store's capacity again (a `capacity` given sets its own).
    capacity_follows_store: Option<bool>,
    team: Option<String>,
    skills: Option<Vec<String>>,
    disabled: Option<bool>,
}

pub async fn update_staff(
    State(app): AppState,
    auth: StaffAuth,
    Path(id): Path<String>,
    Body(patch): Body<StaffPatch>,
) -> ApiResult {
    auth.require_admin()?;
    let id: StaffId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such staff member"))?;
    check_staff_fields(
        patch.name.as_deref(),
        patch.password.as_deref(),
        patch.role.as_deref(),
        patch.capacity,
    )?;
    // An empty team removes the account from its team.
    check_routing_tags(
        patch.team.as_deref().filter(|t| !t.is_empty()),
        patch.skills.as_deref(),
    )?;
    let store_capacity = app
        .settings
        .current()
        .resolved
        .settings
        .routing
        .capacity_per_staff;
    let hash = match patch.password.clone() {
        Some(password) => Some(blocking_hash(&app, move || auth::hash_password(&password)).await??),
        None => None,
    };
    let disabled = patch.disabled == Some(true);
    let by = audit::actor::staff(auth.0.staff.id);
    let staff = app
        .writer
        .exec(move |conn| {
            let key = id.to_string();
            let role_before: Option<String> = conn
                .query_row("SELECT role FROM staff WHERE id = ?1", [&key], |r| r.get(0))
                .optional()?;
            let Some(role_before) = role_before else {
                return Err(ApiError::new(Code::NotFound, "no such staff member"));
            };
            audit_staff_patch(conn, &by, &key, &patch, &role_before)?;
            if let Some(name) = &patch.name {
                conn.execute(
                    "UPDATE staff SET name = ?2 WHERE id = ?1",
                    [&key, name.trim()],
                )?;
            }
            if let Some(hash) = &hash {
                conn.execute(
                    "UPDATE staff SET password_hash = ?2 WHERE id = ?1",
                    [&key, hash],
                )?;
            }
            if let Some(role) = &patch.role {
                conn.execute("UPDATE staff SET role = ?2 WHERE id = ?1", [&key, role])?;
            }
            if let Some(capacity) = patch.capacity {
                conn.execute(
                    "UPDATE staff SET capacity = ?2, capacity_follows_store = 0 WHERE id = ?1",
                    rusqlite::params![key, capacity],
                )?;
            }
            if patch.capacity_follows_store == Some(true) {
                conn.execute(
                    "UPDATE staff SET capacity = ?2, capacity_follows_store = 1 WHERE id = ?1",
                    rusqlite::params![key, store_capacity],
                )?;
            }
            if let Some(team) = &patch.team {
                let team = Some(team.trim()).filter(|t| !t.is_empty());
                conn.execute(
                    "UPDATE staff SET team = ?2 WHERE id = ?1",
                    rusqlite::params![key, team],
                )?;
            }
            if let Some(skills) = &patch.skills {
                let skills = serde_json::to_string(skills).map_err(ApiError::internal)?;
                conn.execute(
                    "UPDATE staff SET skills = ?2 WHERE id = ?1",
                    [&key, &skills],
                )?;
            }
            if let Some(disabled) = patch.disabled {
                conn.execute(
                    "UPDATE staff SET disabled = ?2 WHERE id = ?1",
                    rusqlite::params![key, disabled],
                )?;
                if disabled {
                    conn.execute("DELETE FROM sessions WHERE staff_id = ?1", [&key])?;
                }
            }
            queries::staff_by_id(conn, id)?.ok_or_else(|| ApiError::internal("staff vanished"))
        })
        .await?;
    if disabled {
        // Their tablets are told and closed now, not at their next request.
        let text = crate::frame::error_text(
            &ApiError::new(
                Code::Unauthorized,
                "this account was disabled by a store admin",
            ),
            &crate::frame::Echo::default(),
        );
        app.delivery
            .disconnect_staff(id, &crate::delivery::Outbound::new(None, 0, text));
    }
    Ok(Json(json!({ "staff": staff })).into_response())
}

/// The audit entries of an admin's change to a staff account: which fields changed (never the
/// password itself), the role change and disabling as entries of their own.
fn audit_staff_patch(
    conn: &rusqlite::Connection,
    by: &str,
    id: &str,
    patch: &StaffPatch,
    role_before: &str,
) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    if patch.name.is_some() {
        fields.push("name");
    }
    if patch.password.is_some() {
        fields.push("password");
    }
    if patch.capacity.is_some() || patch.capacity_follows_store.is_some() {
        fields.push("capacity");
    }
    if patch.team.is_some() {
        fields.push("team");
    }
    if patch.skills.is_some() {
        fields.push("skills");
    }
    if !fields.is_empty() {
        let details = json!({ "fields": fields, "capacity": patch.capacity,
            "capacity_follows_store": patch.capacity_follows_store,
            "team": patch.team, "skills": patch.skills });
        audit::append(conn, by, "staff_changed", id, details)?;
    }
    if let Some(role) = patch.role.as_deref().filter(|role| *role != role_before) {
        let details = json!({ "from": role_before, "to": role });
        audit::append(conn, by, "staff_role_changed", id, details)?;
    }
    match patch.disabled {
        Some(true) => audit::append(conn, by, "staff_disabled", id, json!({}))?,
        Some(false) => audit::append(conn, by, "staff_enabled", id, json!({}))?,
        None => return Ok(()),
    };
    Ok(())
}

pub async fn list_canned(State(app): AppState, _auth: StaffAuth) -> ApiResult {
    let replies = app.reader.read(queries::canned_replies).await?;
    Ok(Json(json!({ "canned_replies": replies })).into_response())
}

#[derive(Deserialize)]
pub struct CannedInput {
    #[serde(default)]
    shortcut: String,
    title: String,
    body: String,
    #[serde(default)]
    intent: Option<String>,
}

impl CannedInput {
    fn check(&self, max_body_chars: usize) -> Result<(), ApiError> {
        if let Some(label) = &self.intent
            && label.parse::<aisle_models::Intent>().is_err()
        {
            return Err(ApiError::new(
                Code::BadRequest,
                format!("unknown intent {label:?}"),
            ));
        }
        if self.shortcut.chars().count() > 32
            || self.title.trim().is_empty()
            || self.title.chars().count() > 100
        {
            return Err(ApiError::new(
                Code::BadRequest,
                "shortcut is at most 32 characters; title 1 to 100",
            ));
        }
        if self.body.trim().is_empty() || self.body.chars().count() > max_body_chars {
            return Err(ApiError::new(
                Code::MessageTooLong,
                format!("body must be 1 to max_message_chars = {max_body_chars} characters"),
            ));
        }
        Ok(())
    }
}

pub async fn create_canned(
    State(app): AppState,
    auth: StaffAuth,
    Body(input): Body<CannedInput>,
) -> ApiResult {
    auth.require_admin()?;
    input.check(app.config.limits.max_message_chars)?;
    let id = ulid::Ulid::new().to_string();
    let reply = queries::CannedReply {
        id: id.clone(),
        shortcut: input.shortcut,
        title: input.title,
        body: input.body,
        source: "store".into(),
        intent: input.intent,
    };
    let row = reply.clone();
    let by = audit::actor::staff(auth.0.staff.id);
    app.writer
        .exec(move |conn| {
            conn.execute(
                "INSERT INTO canned_replies (id, shortcut, title, body, updated_at_ms, intent) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![row.id, row.shortcut, row.title, row.body, now_ms() as i64, row.intent],
            )?;
            let details = json!({ "intent": row.intent });
            audit::append(conn, &by, "canned_reply_created", &row.id, details)?;
            Ok(())
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "canned_reply": reply }))).into_response())
}

pub async fn update_canned(
    State(app): AppState,
    auth: StaffAuth,
    Path(id): Path<String>,
    Body(input): Body<CannedInput>,
) -> ApiResult {
    auth.require_admin()?;
    input.check(app.config.limits.max_message_chars)?;
    let reply = queries::CannedReply {
        id,
        shortcut: input.shortcut,
        title: input.title,
        body: input.body,
        source: "store".into(),
        intent: input.intent,
    };
    let row = reply.clone();
    let by = audit::actor::staff(auth.0.staff.id);
    app.writer
        .exec(move |conn| {
            refuse_hq_reply(conn, &row.id)?;
            let changed = conn.execute(
                "UPDATE canned_replies SET shortcut = ?2, title = ?3, body = ?4, updated_at_ms = ?5, intent = ?6 WHERE id = ?1",
                rusqlite::params![row.id, row.shortcut, row.title, row.body, now_ms() as i64, row.intent],
            )?;
            if changed == 0 {
                return Err(ApiError::new(Code::NotFound, "no such canned reply"));
            }
            let details = json!({ "intent": row.intent });
            audit::append(conn, &by, "canned_reply_updated", &row.id, details)?;
            Ok(())
        })
        .await?;
    Ok(Json(json!({ "canned_reply": reply })).into_response())
}

/// HQ's replies arrive with the store's settings document and are changed at the hub only.
fn refuse_hq_reply(conn: &rusqlite::Connection, id: &str) -> Result<(), ApiError> {
    let source: Option<String> = conn
        .query_row(
            "SELECT source FROM canned_replies WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?;
    if source.as_deref() == Some("hq") {
        return Err(ApiError::new(
            Code::Forbidden,
            "this canned reply is set by HQ for the region; change it at the hub",
        ));
    }
    Ok(())
}

pub async fn delete_canned(
    State(app): AppState,
    auth: StaffAuth,
    Path(id): Path<String>,
) -> ApiResult {
    auth.require_admin()?;
    let by = audit::actor::staff(auth.0.staff.id);
    app.writer
        .exec(move |conn| {
            refuse_hq_reply(conn, &id)?;
            let changed = conn.execute("DELETE FROM canned_replies WHERE id = ?1", [&id])?;
            if changed == 0 {
                return Err(ApiError::new(Code::NotFound, "no such canned reply"));
            }
            audit::append(conn, &by, "canned_reply_deleted", &id, json!({}))?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
    agent: Option<StaffId>,
    customer: Option<CustomerId>,
    before: Option<ConversationId>,
    limit: Option<usize>,
}

pub async fn list_conversations(
    State(app): AppState,
    _auth: StaffAuth,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult {
    let Query(params) = params.map_err(query_rejection)?;
    let status = match params.status.as_deref() {
        None => None,
        Some("open") => Some(None),
        Some(s) => Some(Some(s.parse::<Status>().map_err(|_| {
            ApiError::new(Code::BadRequest, format!("unknown status {s:?}"))
        })?)),
    };
    let filter = Filter {
        status,
        agent: params.agent,
        customer: params.customer,
        before: params.before,
        limit: page_limit(&app, params.limit),
    };
    let limit = filter.limit;
    let rows = app
        .reader
        .read(move |conn| queries::conversations(conn, &filter))
        .await?;
    let next_before = if rows.len() == limit {
        rows.last().map(|s| s.id)
    } else {
        None
    };
    Ok(Json(json!({ "conversations": rows, "next_before": next_before })).into_response())
}

fn page_limit(app: &App, asked: Option<usize>) -> usize {
    let max = app.config.limits.max_page_items;
    asked.unwrap_or(50).clamp(1, max)
}

fn parse_conversation(id: &str) -> Result<ConversationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such conversation"))
}

pub async fn get_conversation(
    State(app): AppState,
    _auth: StaffAuth,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_conversation(&id)?;
    let found = app
        .reader
        .read(move |conn| {
            let Some(summary) = queries::summary(conn, id)? else {
                return Ok(None);
            };
            let state = queries::state(conn, id)?;
            let document = queries::document(conn, id)?;
            Ok(Some((summary, state, document)))
        })
        .await?;
    let Some((summary, state, Some(document))) = found else {
        return Err(ApiError::new(Code::NotFound, "no such conversation"));
    };
    let fold = document.fold()?;
    let rejected: Vec<_> = fold.rejected.iter().map(|r| r.event).collect();
    let events: Vec<Value> = document
        .events()?
        .into_iter()
        .map(|event| {
            let mut value = serde_json::to_value(&event).unwrap_or_default();
            value["applied"] = json!(!rejected.contains(&event.id));
            value
        })
        .collect();
    Ok(Json(json!({
        "conversation": summary,
        "state": state,
        "events": events,
        "rejected": fold.rejected,
        "participants": document.participants()?,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct HistoryParams {
    after_seq: Option<u64>,
    limit: Option<usize>,
}

pub async fn conversation_messages(
    State(app): AppState,
    _auth: StaffAuth,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> ApiResult {
    let id = parse_conversation(&id)?;
    let Query(params) = params.map_err(query_rejection)?;
    let after = params.after_seq.unwrap_or(0);
    let limit = page_limit(&app, params.limit.or(Some(200)));
    let history = app
        .reader
        .read(move |conn| queries::history(conn, id, after, limit))
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such conversation"))?;
    Ok(Json(json!({
        "messages": history.messages,
        "last_seq": history.last_seq,
        "more": history.more,
    }))
    .into_response())
}

pub async fn customer_conversations(
    State(app): AppState,
    _auth: StaffAuth,
    Path(id): Path<String>,
) -> ApiResult {
    let customer: CustomerId = id
        .parse()
        .map_err(|_| ApiError::new(Code::NotFound, "no such customer"))?;
    let filter = Filter {
        customer: Some(customer),
        limit: app.config.limits.max_page_items,
        ..Filter::default()
    };
    let rows = app
        .reader
        .read(move |conn| queries::conversations(conn, &filter))
        .await?;
    Ok(Json(json!({ "conversations": rows })).into_response())
}

#[derive(Deserialize)]
pub struct ActionInput {
    action: String,
    to: Option<StaffId>,
    until_ms: Option<u64>,
    note: Option<String>,
}

pub async fn conversation_action(
    State(app): AppState,
    auth: StaffAuth,
    Path(id): Path<String>,
    Body(input): Body<ActionInput>,
) -> ApiResult {
    let conversation = parse_conversation(&id)?;
    let missing = |field: &str| {
        ApiError::new(
            Code::BadRequest,
            format!("{} needs \"{field}\"", input.action),
        )
    };
    let action = match input.action.as_str() {
        "claim" => Action::Claim,
        "transfer" => Action::Transfer {
            to: input.to.ok_or_else(|| missing("to"))?,
            note: input.note.clone(),
        },
        "release" => Action::Release,
        "resolve" => Action::Resolve,
        "reopen" => Action::Reopen,
        "snooze" => Action::Snooze {
            until_ms: input.until_ms.ok_or_else(|| missing("until_ms"))?,
        },
        "wake" => Action::Wake,
        other => {
            return Err(ApiError::new(
                Code::BadRequest,
                format!("unknown action {other:?}"),
            ));
        }
    };
    let (reply, answer) = oneshot::channel();
    app.writer.submit(Command::Action(ActionCmd {
        conversation,
        actor: auth.actor(),
        action,
        reply: Some(reply),
    }))?;
    let state = answer
        .await
        .map_err(|_| ApiError::new(Code::ShuttingDown, "the appliance is stopping"))??;
    Ok(Json(json!({ "state": state })).into_response())
}

/// `POST /api/handoff/{code}`. Unknown, used and expired codes count against the client IP
/// (throttle.rs): past the limit, codes from it are refused unread, so guessing stays slow.
pub async fn redeem_handoff(
    State(app): AppState,
    ClientIp(ip): ClientIp,
    Path(code): Path<String>,
) -> ApiResult {
    if let Err(refused) = app.throttles.check_handoff(ip) {
        return Ok(refused.into_response());
    }
    let result = redeem_code(&app, code).await;
    if let Err(err) = &result
        && matches!(
            err.code,
            Code::NotFound | Code::HandoffUsed | Code::HandoffExpired
        )
    {
        app.throttles.handoff_failed(ip);
    }
    result
}

async fn redeem_code(app: &Arc<App>, code: String) -> ApiResult {
    let code = auth::normalise_code(&code);
    if code.len() != auth::HANDOFF_CODE_CHARS {
        return Err(ApiError::new(Code::NotFound, "no such hand-off code"));
    }
    let now = now_ms();
    let local_code = code.clone();
    let local = app
        .writer
        .exec(move |conn| {
            let code = local_code;
            let row: Option<(String, String, i64, Option<i64>)> = conn
                .query_row(
                    "SELECT customer_id, conversation_id, expires_at_ms, used_at_ms FROM handoffs WHERE code = ?1",
                    [&code],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((customer, conversation, expires, used)) = row else {
                return Err(ApiError::new(Code::NotFound, "no such hand-off code"));
            };
            if used.is_some() {
                return Err(ApiError::new(Code::HandoffUsed, "this hand-off code was already used"));
            }
            if expires as u64 <= now {
                return Err(ApiError::new(Code::HandoffExpired, "this hand-off code has expired"));
            }
            conn.execute(
                "UPDATE handoffs SET used_at_ms = ?2 WHERE code = ?1",
                rusqlite::params![code, now as i64],
            )?;
            Ok((customer, conversation))
        })
        .await;
    let (customer, conversation): (CustomerId, String) = match local {
        Ok((customer, conversation)) => {
            // The code may have been used at another store of the region meanwhile: the hub
            // knows (when it can be asked).
            crate::uplink::use_own_code_at_hub(app, &code).await?;
            (customer.parse().map_err(ApiError::internal)?, conversation)
        }
        // Not a code of this store: perhaps of another store of the region (continuation).
        Err(err) if err.code == Code::NotFound && app.config.hub.url.is_some() => {
            let imported = crate::uplink::continue_from_hub(app, &code).await?;
            // Used up here too: a second redemption at this store is `handoff_used` without
            // asking the hub (which answers a retry by the same store again, for lost answers).
            let (used, customer, conversation) =
                (code.clone(), imported.customer_id, imported.conversation_id);
            app.writer
                .exec(move |conn| {
                    conn.execute(
                        "INSERT OR IGNORE INTO handoffs
                           (code, customer_id, conversation_id, expires_at_ms, used_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?4)",
                        rusqlite::params![
                            used,
                            customer.to_string(),
                            conversation.to_string(),
                            now as i64
                        ],
                    )?;
                    Ok(())
                })
                .await?;
            (imported.customer_id, imported.conversation_id.to_string())
        }
        Err(err) => return Err(err),
    };
    let token = app
        .tokens
        .sign(customer, now / 1000 + app.config.resume_token_ttl_secs);
    Ok(Json(json!({
        "customer_id": customer,
        "conversation_id": conversation,
        "resume_token": token,
    }))
    .into_response())
}

/// `GET /api/bot-policy` (staff): what the bot may answer alone, as in force (the admin's
/// policy unless HQ set one: `source` says which).
pub async fn get_bot_policy(State(app): AppState, _auth: StaffAuth) -> ApiResult {
    let in_force = app.settings.current();
    let source = in_force.resolved.sources.get("bot.intents").copied();
    Ok(Json(json!({
        "bot_policy": in_force.resolved.settings.bot,
        "source": source,
        "never": aisle_settings::BOT_NEVER,
    }))
    .into_response())
}

/// `PUT /api/bot-policy` (admin): `{"intents":["store_info"],"min_confidence":0.85}`: the
/// admin's layer of the live settings (HQ's layers, when they set the bot, still win).
pub async fn put_bot_policy(
    State(app): AppState,
    auth: StaffAuth,
    Body(policy): Body<crate::bot::BotPolicy>,
) -> ApiResult {
    auth.require_admin()?;
    crate::bot::validate(&policy)?;
    let saved = policy.clone();
    let by = audit::actor::staff(auth.0.staff.id);
    let by_audit = by.clone();
    app.writer
        .exec(move |conn| {
            crate::bot::save(conn, &saved)?;
            let details =
                json!({ "intents": saved.intents, "min_confidence": saved.min_confidence });
            audit::append(conn, &by_audit, "bot_policy_changed", "", details)?;
            Ok(())
        })
        .await?;
    let layer = json!({ "bot": policy });
    match app.settings.set_admin(layer, &by) {
        Ok(Some(applied)) => {
            let live = Arc::clone(&app.settings);
            app.writer
                .exec(move |conn| crate::settings::record(conn, &live, &applied))
                .await?;
        }
        Ok(None) => {}
        Err(err) => return Err(ApiError::new(Code::InvalidSettings, err.to_string())),
    }
    tracing::info!(by = %auth.0.staff.username, intents = ?policy.intents,
        min_confidence = policy.min_confidence, "bot policy changed");
    let in_force = app.settings.current();
    Ok(Json(json!({
        "bot_policy": policy,
        "in_force": in_force.resolved.settings.bot,
        "source": in_force.resolved.sources.get("bot.intents"),
    }))
    .into_response())
}

/// `GET /api/v1/settings` (staff): the live settings in force, where each value came from
/// (`default`, `file`, `admin`, `hq_region`, `hq_store`), the layers, the generation and HQ's
/// version in force, and the last refused change.
pub async fn get_settings(State(app): AppState, _auth: StaffAuth) -> ApiResult {
    let in_force = app.settings.current();
    let mut body = serde_json::to_value(&*in_force).map_err(ApiError::internal)?;
    body["layers"] = app.settings.layers();
    Ok(Json(body).into_response())
}

/// `GET /api/bot-answers?limit=` (admin): the bot's audit trail, newest first.
pub async fn bot_answers(
    State(app): AppState,
    auth: StaffAuth,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    auth.require_admin()?;
    let limit = params
        .get("limit")
        .map(|l| l.parse::<usize>())
        .transpose()
        .map_err(|_| ApiError::new(Code::BadRequest, "limit must be a number"))?
        .unwrap_or(50)
        .clamp(1, app.config.limits.max_page_items);
    let rows = app
        .reader
        .read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT message_id, conversation, answered_id, intent, confidence, model,
                        canned_reply, at_ms
                 FROM bot_answers ORDER BY at_ms DESC, message_id DESC LIMIT ?1",
            )?;
            let rows = statement
                .query_map([limit as i64], |r| {
                    Ok(json!({
                        "message_id": r.get::<_, String>(0)?,
                        "conversation_id": r.get::<_, String>(1)?,
                        "answered_message_id": r.get::<_, String>(2)?,
                        "intent": r.get::<_, String>(3)?,
                        "confidence": r.get::<_, f64>(4)?,
                        "model": r.get::<_, String>(5)?,
                        "canned_reply_id": r.get::<_, String>(6)?,
                        "at_ms": r.get::<_, i64>(7)?,
                    }))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await?;
    Ok(Json(json!({ "bot_answers": rows })).into_response())
}
