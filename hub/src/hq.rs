//! The HQ API (docs/hub-api.md): conversations of every store of the region, their transcripts,
//! full-text search over messages and activity figures. Every endpoint needs an HQ session
//! (`hq_viewer` or `hq_admin`) and reads the projection tables (projection.rs) on the store's
//! reader threads.
//!
//! Query parameters are parsed here, by hand, so that a bad or unknown one is a JSON
//! `bad_request` naming it (a misspelt filter silently ignored would return everything).

use std::collections::HashMap;
use std::sync::Arc;

use aisle_sync::{ConversationId, StaffId, Status};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::api::{ROLE_ADMIN, ROLE_VIEWER, authorize};
use crate::error::{ApiError, Code};
use crate::store::{ConversationFilter, FiguresQuery, SearchHit, SearchMethod, SearchQuery};
use crate::{App, now_ms};

type ApiResult<T> = Result<T, ApiError>;
type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

const HQ_ROLES: &[&str] = &[ROLE_ADMIN, ROLE_VIEWER];
use crate::store::HOUR_MS;
/// Characters of context on each side of a match in a search snippet.
const SNIPPET_CONTEXT_CHARS: usize = 30;
/// Longest intent name accepted in a filter.
const MAX_INTENT_CHARS: usize = 64;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::BadRequest, message)
}

/// A request's query parameters: each known name at most once, no unknown names.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(raw: RawParams, known: &[&str]) -> ApiResult<Params> {
        let Query(pairs) = raw.map_err(|err| bad(format!("bad query string: {err}")))?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(bad(format!(
                    "unknown parameter {name}; known: {}",
                    known.join(", ")
                )));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(bad(format!("{name} is given twice")));
            }
        }
        Ok(Params(map))
    }

    /// A non-empty (trimmed) value; an empty one counts as absent.
    fn text(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn ms(&self, name: &str) -> ApiResult<Option<u64>> {
        self.text(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{name} must be milliseconds since the Unix epoch")))
            })
            .transpose()
    }

    fn limit(&self, default: usize, max: usize) -> ApiResult<usize> {
        match self.text("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(bad(format!("limit must be 1 to {max}"))),
            },
        }
    }

    fn store(&self) -> ApiResult<Option<String>> {
        match self.text("store") {
            Some(store) if aisle_sync::DocumentKey::settings(store.clone()).is_err() => Err(bad(
                "store must be 1 to 128 bytes without control characters",
            )),
            store => Ok(store),
        }
    }

    /// `from` (inclusive) and `to` (exclusive), checked to be in order.
    fn range(&self) -> ApiResult<(Option<u64>, Option<u64>)> {
        let (from, to) = (self.ms("from")?, self.ms("to")?);
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(bad("from must not be after to"));
        }
        Ok((from, to))
    }
}

/// The list's cursor: the last conversation of a page, as `<created_at_ms>.<id>`.
fn cursor(created_at_ms: u64, id: &str) -> String {
    format!("{created_at_ms}.{id}")
}

fn parse_cursor(text: &str) -> ApiResult<(u64, String)> {
    let error = || bad("before must be the next_before of a previous page");
    let (at, id) = text.split_once('.').ok_or_else(error)?;
    let at = at.parse::<u64>().map_err(|_| error())?;
    let id = id.parse::<ConversationId>().map_err(|_| error())?;
    Ok((at, id.to_string()))
}

/// `GET /api/conversations`: every store's conversations, newest first, filtered and paged.
pub async fn list_conversations(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: RawParams,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, HQ_ROLES).await?;
    let p = Params::parse(
        raw,
        &[
            "store", "state", "from", "to", "staff", "intent", "limit", "before",
        ],
    )?;
    let limits = &app.config.limits;
    let limit = p.limit(
        limits.default_page_conversations,
        limits.max_page_conversations,
    )?;
    let statuses = match p.text("state").as_deref() {
        None => None,
        Some("open") => Some(
            Status::ALL
                .iter()
                .filter(|s| s.is_open())
                .map(Status::as_str)
                .collect(),
        ),
        Some(state) => Some(vec![
            state
                .parse::<Status>()
                .map_err(|_| {
                    bad("state must be open, queued, assigned, transferred, resolved, reopened or snoozed")
                })?
                .as_str(),
        ]),
    };
    let agent_id = p
        .text("staff")
        .map(|s| {
            s.parse::<StaffId>()
                .map(|id| id.to_string())
                .map_err(|_| bad("staff must be a staff id (a ULID)"))
        })
        .transpose()?;
    let intent = p.text("intent");
    if intent
        .as_ref()
        .is_some_and(|i| i.chars().count() > MAX_INTENT_CHARS)
    {
        return Err(bad(format!(
            "intent must be at most {MAX_INTENT_CHARS} characters"
        )));
    }
    let (from_ms, to_ms) = p.range()?;
    let filter = ConversationFilter {
        store: p.store()?,
        statuses,
        from_ms,
        to_ms,
        agent_id,
        intent,
        before: p.text("before").as_deref().map(parse_cursor).transpose()?,
        // One more than asked: whether there is a next page.
        limit: limit + 1,
    };
    let mut conversations = app.store.list_conversations(filter).await?;
    let next_before = if conversations.len() > limit {
        conversations.truncate(limit);
        conversations.last().map(|c| cursor(c.created_at_ms, &c.id))
    } else {
        None
    };
    Ok(Json(json!({
        "conversations": conversations,
        "next_before": next_before,
    })))
}

/// `GET /api/conversations/{id}`: meta, state, participants and the whole transcript.
pub async fn conversation(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, HQ_ROLES).await?;
    let id = id
        .parse::<ConversationId>()
        .map_err(|_| bad("a conversation id is a ULID"))?;
    let detail = app
        .store
        .conversation_detail(id.to_string())
        .await?
        .ok_or_else(|| ApiError::new(Code::NotFound, "no such conversation"))?;
    Ok(Json(json!(detail)))
}

/// Where in `body` a term first occurs (earliest of all terms), as a byte range; ASCII letters
/// compare case-insensitively, like the index and LIKE.
fn first_match(body: &str, terms: &[String]) -> Option<(usize, usize)> {
    let haystack = body.to_ascii_lowercase();
    terms
        .iter()
        .filter_map(|t| {
            let needle = t.to_ascii_lowercase();
            haystack.find(&needle).map(|at| (at, at + needle.len()))
        })
        .min()
}

/// A short excerpt of `body` around the first match, and the match's character range within
/// the excerpt (`None` if no term is found literally, e.g. a non-ASCII case difference).
fn snippet(body: &str, terms: &[String]) -> (String, Option<[usize; 2]>) {
    let chars: Vec<(usize, char)> = body.char_indices().collect();
    let index_of = |byte: usize| chars.partition_point(|(at, _)| *at < byte);
    let (start, end) = match first_match(body, terms) {
        Some((s, e)) => (index_of(s), index_of(e)),
        None => (0, 0),
    };
    let from = start.saturating_sub(SNIPPET_CONTEXT_CHARS);
    let to = (end + SNIPPET_CONTEXT_CHARS).min(chars.len()).max(from);
    let to = if end == 0 {
        (2 * SNIPPET_CONTEXT_CHARS).min(chars.len())
    } else {
        to
    };
    let mut text = String::new();
    if from > 0 {
        text.push('…');
    }
    let lead = text.chars().count();
    text.extend(chars[from..to].iter().map(|(_, c)| c));
    if to < chars.len() {
        text.push('…');
    }
    let highlight = (end > start).then(|| [lead + start - from, lead + end - from]);
    (text, highlight)
}

fn hit_json(hit: SearchHit, terms: &[String]) -> Value {
    let (snippet, highlight) = snippet(&hit.body, terms);
    json!({
        "conversation_id": hit.conversation_id,
        "store_id": hit.store_id,
        "message_id": hit.message_id,
        "sender": hit.sender,
        "sent_at_ms": hit.sent_at_ms,
        "snippet": snippet,
        "highlight": highlight,
    })
}

/// `GET /api/search`: messages holding every term of `q`, most recently received first.
pub async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: RawParams,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, HQ_ROLES).await?;
    let p = Params::parse(raw, &["q", "store", "limit"])?;
    let limits = &app.config.limits;
    let q = p.text("q").ok_or_else(|| bad("q is required"))?;
    if q.chars().count() > limits.max_search_query_chars {
        return Err(bad(format!(
            "q must be at most {} characters",
            limits.max_search_query_chars
        )));
    }
    let terms: Vec<String> = q.split_whitespace().map(str::to_owned).collect();
    let query = SearchQuery {
        terms: terms.clone(),
        store: p.store()?,
        limit: p.limit(limits.default_search_results, limits.max_search_results)?,
        scan_messages: limits.max_search_scan_messages,
    };
    let (method, hits) = app.store.search_messages(query).await?;
    let results: Vec<Value> = hits.into_iter().map(|h| hit_json(h, &terms)).collect();
    let mut body = json!({ "q": q, "method": method, "results": results });
    if method == SearchMethod::Scan {
        body["scanned_messages_max"] = json!(limits.max_search_scan_messages);
    }
    Ok(Json(body))
}

/// `GET /api/figures`: volume per hour, first-response and resolution times, in total, per
/// store and per intent, for conversations created (and messages sent) in `[from, to)`.
pub async fn figures(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    raw: RawParams,
) -> ApiResult<Json<Value>> {
    authorize(&app, &headers, HQ_ROLES).await?;
    let p = Params::parse(raw, &["from", "to", "store"])?;
    let (from, to) = p.range()?;
    let to_ms = to.unwrap_or_else(now_ms);
    let from_ms = from.unwrap_or_else(|| to_ms.saturating_sub(24 * HOUR_MS));
    if from_ms >= to_ms {
        return Err(bad("from must be before to"));
    }
    let max_hours = app.config.limits.max_figures_range_hours;
    if (to_ms - from_ms).div_ceil(HOUR_MS) > max_hours {
        return Err(bad(format!(
            "the range may cover at most {max_hours} hours"
        )));
    }
    let store = p.store()?;
    let figures = app
        .store
        .figures(FiguresQuery {
            from_ms,
            to_ms,
            store: store.clone(),
        })
        .await?;
    Ok(Json(json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "store": store,
        "hours": figures.hours,
        "totals": figures.totals,
        "by_store": figures.by_store,
        "by_intent": figures.by_intent,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_mark_the_first_match_in_characters() {
        let terms = vec!["退货".to_owned()];
        let (text, highlight) = snippet("我想退货可以吗", &terms);
        assert_eq!(text, "我想退货可以吗");
        assert_eq!(highlight, Some([2, 4]));
        let long = format!("{}Refund please{}", "x".repeat(40), "y".repeat(40));
        let (text, highlight) = snippet(&long, &["refund".to_owned()]);
        let [s, e] = highlight.unwrap();
        let marked: String = text.chars().skip(s).take(e - s).collect();
        assert_eq!(marked, "Refund");
        assert!(text.starts_with('…') && text.ends_with('…'));
        let (text, highlight) = snippet("no match here", &["zzz".to_owned()]);
        assert_eq!((text.as_str(), highlight), ("no match here", None));
    }

    #[test]
    fn cursors_round_trip() {
        let id = ConversationId::new().to_string();
        assert_eq!(parse_cursor(&cursor(42, &id)).unwrap(), (42, id));
        assert!(parse_cursor("42").is_err());
        assert!(parse_cursor("x.y").is_err());
    }
}
