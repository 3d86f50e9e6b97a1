//! Cross-store continuation: a customer's hand-off code from store A, used at store B of the
//! same region, brings the conversation to B through the hub; from then on both stores sync
//! the same document and the hub pushes each one's changes to the other.
//!
//! - Store A registers every hand-off code it issues (`POST /api/handoffs`, hashed here).
//! - Store B, handed a code it does not know, redeems it here (`POST /api/continuations`): the
//!   code is checked and used up, the document is shared with B ([`Shares`]) and returned whole,
//!   so B can serve the customer at once; B then syncs it like its own conversations.
//!
//! Both endpoints authenticate the calling store by its credential (`X-Aisle-Store` and
//! `Authorization: Bearer <credential>`), with the same checks as the sync `hello`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aisle_sync::{Conversation, ConversationId, DocumentKey};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::body;
use crate::error::{ApiError, Code};
use crate::store::{NewHandoff, Redeemed};
use crate::throttle::ClientIp;
use crate::{App, auth, now_ms};

/// Which stores besides its origin sync each document (only documents that were continued
/// elsewhere are listed). Loaded at start, grown by redemptions; the database is the truth.
#[derive(Default)]
pub struct Shares {
    by_doc: RwLock<HashMap<String, Vec<String>>>,
}

impl Shares {
    pub fn load(rows: Vec<(String, String)>) -> Self {
        let mut by_doc: HashMap<String, Vec<String>> = HashMap::new();
        for (doc, store) in rows {
            by_doc.entry(doc).or_default().push(store);
        }
        Self {
            by_doc: RwLock::new(by_doc),
        }
    }

    pub fn add(&self, doc_key: &str, store_id: &str) {
        if let Ok(mut map) = self.by_doc.write() {
            let stores = map.entry(doc_key.to_owned()).or_default();
            if !stores.iter().any(|s| s == store_id) {
                stores.push(store_id.to_owned());
            }
        }
    }

    /// Replaces the whole map with the database's (another replica's changes may have been
    /// missed).
    pub fn reload(&self, rows: Vec<(String, String)>) {
        let fresh = Self::load(rows);
        let fresh = fresh.by_doc.into_inner().unwrap_or_default();
        if let Ok(mut map) = self.by_doc.write() {
            *map = fresh;
        }
    }

    /// Forgets an erased document.
    pub fn remove(&self, doc_key: &str) {
        if let Ok(mut map) = self.by_doc.write() {
            map.remove(doc_key);
        }
    }

    /// The stores (other than the origin) that sync `doc_key`.
    pub fn stores_of(&self, doc_key: &str) -> Vec<String> {
        self.by_doc
            .read()
            .ok()
            .and_then(|map| map.get(doc_key).cloned())
            .unwrap_or_default()
    }

    pub fn allows(&self, doc_key: &str, store_id: &str) -> bool {
        self.by_doc
            .read()
            .map(|map| {
                map.get(doc_key)
                    .is_some_and(|stores| stores.iter().any(|s| s == store_id))
            })
            .unwrap_or(false)
    }
}

/// The calling store, checked like a sync `hello` (region, revocation, credential).
pub(crate) async fn authorize_store(app: &App, headers: &HeaderMap) -> Result<String, ApiError> {
    let store_id = headers
        .get("x-aisle-store")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "X-Aisle-Store is required"))?;
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "the store credential is required"))?;
    crate::sync::check_hello(app, store_id, &app.config.region, credential.trim())
        .await
        .map_err(|(code, message)| {
            let code = match code {
                aisle_sync::protocol::codes::REVOKED => Code::Revoked,
                aisle_sync::protocol::codes::INTERNAL => Code::Internal,
                _ => Code::Unauthorized,
            };
            ApiError::new(code, message)
        })?;
    Ok(store_id.to_owned())
}

fn code_hash(code: &str) -> Vec<u8> {
    auth::secret_hash(&code.trim().to_ascii_uppercase())
}

#[derive(Deserialize)]
pub struct RegisterHandoff {
    code: String,
    conversation_id: ConversationId,
    expires_at_ms: u64,
}

/// `POST /api/handoffs`: a store registers a hand-off code it issued.
pub async fn register(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    payload: Result<Json<RegisterHandoff>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let store_id = authorize_store(&app, &headers).await?;
    let request = body(payload)?;
    if request.code.trim().is_empty() || request.code.len() > 64 {
        return Err(ApiError::new(Code::BadRequest, "code: 1 to 64 characters"));
    }
    app.store
        .register_handoff(NewHandoff {
            code_hash: code_hash(&request.code),
            doc_key: DocumentKey::from(request.conversation_id).to_string(),
            store_id,
            expires_at_ms: request.expires_at_ms,
        })
        .await?;
    Ok(Json(json!({ "registered": true })))
}

#[derive(Deserialize)]
pub struct Redeem {
    code: String,
}

/// `POST /api/continuations`: a store redeems a code issued by another store and receives the
/// whole conversation document. The issuing store redeeming its own code (a device switch in
/// the store) uses it up here too, so a code is single use across the region.
///
/// Unknown, used and expired codes count per client IP and per store (throttle.rs): past the
/// limit the store's redemptions are answered 429 unread.
pub async fn redeem(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    payload: Result<Json<Redeem>, JsonRejection>,
) -> Result<Response, ApiError> {
    let store_id = authorize_store(&app, &headers).await?;
    let request = body(payload)?;
    if let Err(refused) = app.throttles.redeem.check(ip, &store_id) {
        return Ok(refused.into_response());
    }
    let result = redeem_code(&app, store_id.clone(), request).await;
    if let Err(err) = &result
        && matches!(
            err.code,
            Code::NotFound | Code::HandoffUsed | Code::HandoffExpired
        )
    {
        app.throttles.redeem.fail(ip, &store_id);
    }
    result.map(IntoResponse::into_response)
}

async fn redeem_code(
    app: &App,
    store_id: String,
    request: Redeem,
) -> Result<Json<Value>, ApiError> {
    let outcome = app
        .store
        .redeem_handoff(code_hash(&request.code), store_id.clone(), now_ms())
        .await?;
    let (doc_key, origin_store) = match outcome {
        Redeemed::Shared {
            doc_key,
            origin_store,
        } => (doc_key, origin_store),
        Redeemed::Own => return Ok(Json(json!({ "used": true }))),
        Redeemed::Unknown => return Err(ApiError::new(Code::NotFound, "no such hand-off code")),
        Redeemed::Used => {
            return Err(ApiError::new(
                Code::HandoffUsed,
                "this hand-off code was already used",
            ));
        }
        Redeemed::Expired => {
            return Err(ApiError::new(
                Code::HandoffExpired,
                "this hand-off code has expired",
            ));
        }
        Redeemed::NotSynced => {
            return Err(ApiError::new(
                Code::NotSynced,
                "the conversation has not reached the hub yet; try again in a moment",
            ));
        }
    };
    if origin_store != store_id {
        app.shares.add(&doc_key, &store_id);
    }
    let stored = app
        .store
        .load_document(doc_key.clone())
        .await?
        .ok_or_else(|| ApiError::internal("a shared document vanished"))?;
    let meta = Conversation::load(&stored.bytes)
        .and_then(|doc| doc.meta())
        .map_err(ApiError::internal)?;
    tracing::info!(doc = %doc_key, from = %origin_store, to = %store_id, "conversation continued at another store");
    crate::metrics::METRICS.continuations.inc();
    Ok(Json(json!({
        "conversation_id": meta.id,
        "customer_id": meta.customer,
        "origin_store": origin_store,
        "document": base64::engine::general_purpose::STANDARD.encode(&stored.bytes),
    })))
}
