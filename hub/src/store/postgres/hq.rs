//! The HQ projection tables on PostgreSQL: writing a round's projection, and the queries of the
//! HQ API (list, detail, search, figures), with the semantics of the SQLite ones (sqlite.rs).

use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::super::sqlite::TRIGRAM_CHARS;
use super::super::{
    ConversationDetail, ConversationFilter, ConversationSummary, DurationStats, Figures,
    FiguresQuery, GroupFigures, ParticipantView, SearchHit, SearchMethod, SearchQuery, Sender,
    StoreResult, TranscriptMessage,
};
use super::{Cached, Tx};
use crate::projection::Projection;

/// Applies a round's projection inside the caller's transaction. Idempotent: the conversation
/// row is rewritten, participants upserted, messages inserted once by id; the derived figures
/// are recomputed from the message rows only when a message was new.
pub(super) async fn write_projection(tx: &Tx<'_>, p: &Projection) -> StoreResult<()> {
    let conv = &p.conversation;
    tx.run(
        "INSERT INTO conversations (id, store_id, customer_id, status, agent_id, agent_name, \
         created_at_ms, resolved_at_ms, intent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, agent_id = excluded.agent_id, \
         agent_name = excluded.agent_name, resolved_at_ms = excluded.resolved_at_ms, \
         intent = coalesce(excluded.intent, conversations.intent)",
        &[
            &conv.id,
            &conv.store_id,
            &conv.customer_id,
            &conv.status,
            &conv.agent_id,
            &conv.agent_name,
            &(conv.created_at_ms as i64),
            &conv.resolved_at_ms.map(|v| v as i64),
            &conv.intent,
        ],
    )
    .await?;
    if !p.participants.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO participants (conversation, participant, kind, participant_id, \
                 display_name, joined_at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (conversation, participant) DO UPDATE SET \
                 display_name = excluded.display_name, joined_at_ms = excluded.joined_at_ms",
            )
            .await?;
        for part in &p.participants {
            tx.execute(
                &stmt,
                &[
                    &conv.id,
                    &part.key,
                    &part.kind,
                    &part.id,
                    &part.display_name,
                    &(part.joined_at_ms as i64),
                ],
            )
            .await?;
        }
    }
    let mut inserted = 0u64;
    if !p.messages.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO messages (id, conversation, store_id, sender_kind, sender_id, \
                 sender_name, body, sent_at_ms, intent, attachment) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        for m in &p.messages {
            inserted += tx
                .execute(
                    &stmt,
                    &[
                        &m.id,
                        &m.conversation,
                        &m.store_id,
                        &m.sender_kind,
                        &m.sender_id,
                        &m.sender_name,
                        &m.body,
                        &(m.sent_at_ms as i64),
                        &m.intent,
                        &m.attachment,
                    ],
                )
                .await?;
        }
    }
    if inserted > 0 {
        tx.run(
            "UPDATE conversations SET message_count = message_count + $2, \
             last_message_at_ms = (SELECT max(sent_at_ms) FROM messages WHERE conversation = $1), \
             first_customer_message_at_ms = (SELECT min(sent_at_ms) FROM messages \
                 WHERE conversation = $1 AND sender_kind = 'customer'), \
             first_response_at_ms = (SELECT min(sent_at_ms) FROM messages \
                 WHERE conversation = $1 AND sender_kind = 'staff' AND sent_at_ms >= \
                 (SELECT min(sent_at_ms) FROM messages \
                  WHERE conversation = $1 AND sender_kind = 'customer')) \
             WHERE id = $1",
            &[&conv.id, &(inserted as i64)],
        )
        .await?;
    }
    Ok(())
}

const CONVERSATION_COLUMNS: &str = "id, store_id, customer_id, status, agent_id, agent_name, \
    created_at_ms, first_customer_message_at_ms, first_response_at_ms, resolved_at_ms, \
    last_message_at_ms, message_count, intent";

fn opt_u64(row: &Row, index: usize) -> Option<u64> {
    row.get::<_, Option<i64>>(index).map(|v| v.max(0) as u64)
}

fn u64_at(row: &Row, index: usize) -> u64 {
    row.get::<_, i64>(index).max(0) as u64
}

fn conversation_row(row: &Row) -> ConversationSummary {
    ConversationSummary {
        id: row.get(0),
        store_id: row.get(1),
        customer_id: row.get(2),
        status: row.get(3),
        agent_id: row.get(4),
        agent_name: row.get(5),
        created_at_ms: u64_at(row, 6),
        first_customer_message_at_ms: opt_u64(row, 7),
        first_response_at_ms: opt_u64(row, 8),
        resolved_at_ms: opt_u64(row, 9),
        last_message_at_ms: opt_u64(row, 10),
        message_count: u64_at(row, 11),
        intent: row.get(12),
    }
}

/// SQL arguments built alongside a query string: `push` returns the placeholder.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(value));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

pub(super) async fn list_conversations(
    c: &tokio_postgres::Client,
    f: &ConversationFilter,
) -> StoreResult<Vec<ConversationSummary>> {
    let mut args = Args::default();
    let mut sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE true");
    if let Some(store) = &f.store {
        sql += &format!(" AND store_id = {}", args.push(store.clone()));
    }
    if let Some(statuses) = &f.statuses {
        let list: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
        sql += &format!(" AND status = ANY({})", args.push(list));
    }
    if let Some(from) = f.from_ms {
        sql += &format!(" AND created_at_ms >= {}", args.push(from as i64));
    }
    if let Some(to) = f.to_ms {
        sql += &format!(" AND created_at_ms < {}", args.push(to as i64));
    }
    if let Some(agent) = &f.agent_id {
        sql += &format!(" AND agent_id = {}", args.push(agent.clone()));
    }
    if let Some(intent) = &f.intent {
        sql += &format!(
            " AND coalesce(intent, 'unknown') = {}",
            args.push(intent.clone())
        );
    }
    if let Some((at, id)) = &f.before {
        let at = args.push(*at as i64);
        let id = args.push(id.clone());
        sql += &format!(" AND (created_at_ms, id) < ({at}, {id})");
    }
    sql += &format!(
        " ORDER BY created_at_ms DESC, id DESC LIMIT {}",
        args.push(f.limit.min(i64::MAX as usize) as i64)
    );
    let rows = c.query(&sql, &args.refs()).await?;
    Ok(rows.iter().map(conversation_row).collect())
}

/// The sender's current display name (from the participants table), else the one the message
/// was projected with. `m` is the messages table, `p` a LEFT JOIN of participants on [`SENDER_JOIN`].
const SENDER_NAME: &str = "coalesce(p.display_name, m.sender_name)";
const SENDER_JOIN: &str = "LEFT JOIN participants p ON p.conversation = m.conversation AND \
    p.participant = CASE WHEN m.sender_id IS NULL THEN m.sender_kind \
    ELSE m.sender_kind || ':' || m.sender_id END";

pub(super) async fn conversation_detail(
    tx: &Transaction<'_>,
    id: &str,
) -> StoreResult<Option<ConversationDetail>> {
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1"),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let conversation = conversation_row(&row);
    let participants = tx
        .query(
            "SELECT kind, participant_id, display_name, joined_at_ms FROM participants \
             WHERE conversation = $1 ORDER BY joined_at_ms, participant",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| ParticipantView {
            kind: r.get(0),
            id: r.get(1),
            display_name: r.get(2),
            joined_at_ms: u64_at(r, 3),
        })
        .collect();
    let messages = tx
        .query(
            &format!(
                "SELECT m.id, m.sender_kind, m.sender_id, {SENDER_NAME}, m.body, m.sent_at_ms, \
                 m.intent, m.attachment FROM messages m {SENDER_JOIN} \
                 WHERE m.conversation = $1 ORDER BY m.sent_at_ms, m.id"
            ),
            &[&id],
        )
        .await?
        .iter()
        .map(|r| TranscriptMessage {
            id: r.get(0),
            sender: Sender {
                kind: r.get(1),
                id: r.get(2),
                display_name: r.get(3),
            },
            body: r.get(4),
            sent_at_ms: u64_at(r, 5),
            intent: r.get(6),
            attachment: r
                .get::<_, Option<String>>(7)
                .and_then(|json| serde_json::from_str(&json).ok()),
        })
        .collect();
    Ok(Some(ConversationDetail {
        conversation,
        participants,
        messages,
    }))
}

/// `%term%` for (I)LIKE, with the pattern characters escaped by `\`.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for ch in term.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

/// Every term must occur in the body as a case-insensitive substring (`ILIKE`). When a term has
/// 3 or more characters the trigram index (`messages_body_trgm`) can find the candidates; with
/// no such term there is nothing to look up, so the newest `scan_messages` messages are scanned.
/// Either way the newest received come first.
pub(super) async fn search_messages(
    c: &tokio_postgres::Client,
    q: &SearchQuery,
) -> StoreResult<(SearchMethod, Vec<SearchHit>)> {
    let indexed = q.terms.iter().any(|t| t.chars().count() >= TRIGRAM_CHARS);
    let mut args = Args::default();
    let method;
    let mut sql;
    if !indexed {
        method = SearchMethod::Scan;
        let store = match &q.store {
            Some(store) => format!("WHERE store_id = {}", args.push(store.clone())),
            None => String::new(),
        };
        let scan = args.push(q.scan_messages.min(i64::MAX as usize) as i64);
        sql = format!(
            "SELECT m.conversation, m.store_id, m.id, m.sender_kind, m.sender_id, \
             {SENDER_NAME}, m.sent_at_ms, m.body \
             FROM (SELECT * FROM messages {store} ORDER BY seq DESC LIMIT {scan}) m \
             {SENDER_JOIN} WHERE true"
        );
    } else {
        method = SearchMethod::Index;
        sql = format!(
            "SELECT m.conversation, m.store_id, m.id, m.sender_kind, m.sender_id, \
             {SENDER_NAME}, m.sent_at_ms, m.body \
             FROM messages m {SENDER_JOIN} WHERE true"
        );
        if let Some(store) = &q.store {
            sql += &format!(" AND m.store_id = {}", args.push(store.clone()));
        }
    }
    for term in &q.terms {
        sql += &format!(
            " AND m.body ILIKE {} ESCAPE E'\\\\'",
            args.push(like_pattern(term))
        );
    }
    sql += &format!(
        " ORDER BY m.seq DESC LIMIT {}",
        args.push(q.limit.min(i64::MAX as usize) as i64)
    );
    let rows = c.query(&sql, &args.refs()).await?;
    let hits = rows
        .iter()
        .map(|r| SearchHit {
            conversation_id: r.get(0),
            store_id: r.get(1),
            message_id: r.get(2),
            sender: Sender {
                kind: r.get(3),
                id: r.get(4),
                display_name: r.get(5),
            },
            sent_at_ms: u64_at(r, 6),
            body: r.get(7),
        })
        .collect();
    Ok((method, hits))
}

use crate::store::HOUR_MS;

/// Duration statistics of conversations created in the range, grouped by `group` (an SQL
/// expression over `conversations`): nearest-rank percentiles computed with window functions.
async fn duration_stats(
    tx: &Transaction<'_>,
    q: &FiguresQuery,
    group: &str,
    value: &str,
    present: &str,
) -> StoreResult<Vec<(String, DurationStats)>> {
    let sql = format!(
        "WITH v AS (SELECT ({group})::text AS g, greatest(0, {value}) AS v FROM conversations \
             WHERE {present} IS NOT NULL AND created_at_ms >= $1 AND created_at_ms < $2 \
             AND ($3::text IS NULL OR store_id = $3::text)), \
         r AS (SELECT g, v, row_number() OVER (PARTITION BY g ORDER BY v) AS rn, \
             count(*) OVER (PARTITION BY g) AS n FROM v) \
         SELECT g, n, sum(v)::bigint, \
             max(CASE WHEN rn = (n * 50 + 99) / 100 THEN v END), \
             max(CASE WHEN rn = (n * 90 + 99) / 100 THEN v END) \
         FROM r GROUP BY g, n"
    );
    let rows = tx
        .query(&sql, &[&range_start(q), &range_end(q), &q.store])
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let count = u64_at(r, 1);
            let sum = u64_at(r, 2);
            (
                r.get::<_, String>(0),
                DurationStats {
                    count,
                    avg_ms: (count > 0).then(|| (sum + count / 2) / count),
                    p50_ms: opt_u64(r, 3),
                    p90_ms: opt_u64(r, 4),
                },
            )
        })
        .collect())
}

fn range_start(q: &FiguresQuery) -> i64 {
    q.from_ms.min(i64::MAX as u64) as i64
}

fn range_end(q: &FiguresQuery) -> i64 {
    q.to_ms.min(i64::MAX as u64) as i64
}

/// Counts grouped by `group` (as text) over `table` rows whose `at` column is in the range (and
/// whose `store` column is the query's store, if it names one).
async fn counts(
    tx: &Transaction<'_>,
    q: &FiguresQuery,
    table: &str,
    group: &str,
    [at, store]: [&str; 2],
) -> StoreResult<Vec<(String, u64)>> {
    let sql = format!(
        "SELECT ({group})::text, count(*) FROM {table} WHERE {at} >= $1 AND {at} < $2 \
         AND ($3::text IS NULL OR {store} = $3::text) GROUP BY 1"
    );
    let rows = tx
        .query(&sql, &[&range_start(q), &range_end(q), &q.store])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), u64_at(r, 1))).collect())
}

pub(super) async fn figures(tx: &Transaction<'_>, q: &FiguresQuery) -> StoreResult<Figures> {
    let first_response = (
        "first_response_at_ms - first_customer_message_at_ms",
        "first_response_at_ms",
    );
    let resolution = ("resolved_at_ms - created_at_ms", "resolved_at_ms");
    let intent = "coalesce(intent, 'unknown')";
    let mut groups: [(&str, BTreeMap<String, GroupFigures>); 3] = [
        ("'all'", Default::default()),
        ("store_id", Default::default()),
        (intent, Default::default()),
    ];
    for (group, figures) in groups.iter_mut() {
        for (key, stats) in duration_stats(tx, q, group, first_response.0, first_response.1).await?
        {
            figures.entry(key).or_default().first_response = stats;
        }
        for (key, stats) in duration_stats(tx, q, group, resolution.0, resolution.1).await? {
            figures.entry(key).or_default().resolution = stats;
        }
        for (key, n) in counts(tx, q, "conversations", group, ["created_at_ms", "store_id"]).await?
        {
            figures.entry(key).or_default().new_conversations = n;
        }
    }
    // Messages count under their conversation's intent (messages have none of their own yet).
    let [(_, all), (_, by_store), (_, by_intent)] = &mut groups;
    for (group, figures) in [("'all'", all), ("store_id", by_store)] {
        for (key, n) in counts(tx, q, "messages", group, ["sent_at_ms", "store_id"]).await? {
            figures.entry(key).or_default().messages = n;
        }
    }
    for (key, n) in counts(
        tx,
        q,
        "messages m JOIN conversations c ON c.id = m.conversation",
        "coalesce(c.intent, 'unknown')",
        ["m.sent_at_ms", "m.store_id"],
    )
    .await?
    {
        by_intent.entry(key).or_default().messages = n;
    }
    let hour = format!("sent_at_ms / {HOUR_MS}");
    let message_hours = counts(tx, q, "messages", &hour, ["sent_at_ms", "store_id"]).await?;
    let hour = format!("created_at_ms / {HOUR_MS}");
    let conversation_hours =
        counts(tx, q, "conversations", &hour, ["created_at_ms", "store_id"]).await?;
    let hours = crate::store::hour_volumes(q, message_hours, conversation_hours);
    let [(_, mut all), (_, by_store), (_, by_intent)] = groups;
    Ok(Figures {
        hours,
        totals: all.remove("all").unwrap_or_default(),
        by_store,
        by_intent,
    })
}
