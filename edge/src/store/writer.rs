//! The store's single writer: one thread owns the write connection and the hot conversation
//! documents, and commits in groups.
//!
//! Why one thread: SQLite allows one writer at a time anyway, and a single owner of every
//! conversation document means the session state machine is applied without locks (the
//! compare-and-swap of each event is against the writer's own head). Why groups: one fsync per
//! transaction is the cost that matters; the writer takes every command waiting in its queue
//! (up to `max_batch_commands`), applies them in one transaction, commits, and only *then*
//! answers each sender and fans the results out. An ack therefore always means "on disk".
//!
//! Each message is written twice in the same transaction: as a row (history pages, resume)
//! and into its conversation's Automerge document (the unit of sync with the hub). Documents
//! are persisted as a compacted save plus incremental chunks and compacted when the chunks
//! outgrow the save (amortised O(1) per message).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use aisle_sync::{
    Attachment, AttachmentId, Conversation, ConversationId, CustomerId, Event, EventId, EventKind,
    Fold, HlcClock, IntentRecord, MessageId, MessageRecord, Meta, Participant, ParticipantRecord,
    SCHEMA_VERSION, StaffId, Status,
};
use lru::LruCache;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::audit;
use crate::delivery::{Audience, ConnId, Delivery, Outbound, Targets};
use crate::error::{ApiError, Code};
use crate::frame::{Ack, EventView, MessageView, ServerFrame, StaffRef, StateView};
use crate::limits::Limits;
use crate::metrics::METRICS;
use crate::now_ms;
use crate::routing::{self, Candidate};

mod bot;
pub mod erase;
pub mod replica;

/// Who acts: customers act on their own conversations, staff on the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Customer(CustomerId),
    Staff { id: StaffId, admin: bool },
    System,
}

impl Actor {
    fn participant(self) -> Participant {
        match self {
            Actor::Customer(id) => Participant::Customer(id),
            Actor::Staff { id, .. } => Participant::Staff(id),
            Actor::System => Participant::System,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Claim,
    Transfer { to: StaffId, note: Option<String> },
    Release,
    Resolve,
    Reopen,
    Snooze { until_ms: u64 },
    Wake,
}

pub struct SendCmd {
    pub conversation: ConversationId,
    pub actor: Actor,
    pub client_msg_id: String,
    pub body: String,
    /// An upload of this sender's (`POST /api/attachments`), checked here.
    pub attachment: Option<AttachmentId>,
    /// What the model read in a customer's message (read before the command was sent, off
    /// this thread); `None` for staff or when the classifier did not answer in time.
    pub intent: Option<IntentRecord>,
    /// The sending connection: it gets the ack, not a copy of the message, and starts
    /// watching the conversation once the writer has checked it may.
    pub origin: Option<ConnId>,
    pub reply: oneshot::Sender<Result<Ack, ApiError>>,
}

pub struct Started {
    pub conversation_id: ConversationId,
    pub created: bool,
    pub last_seq: u64,
    pub state: StateView,
}

pub struct StartCmd {
    pub customer: CustomerId,
    pub display_name: String,
    pub origin: Option<ConnId>,
    pub reply: oneshot::Sender<Result<Started, ApiError>>,
}

pub struct ActionCmd {
    pub conversation: ConversationId,
    pub actor: Actor,
    pub action: Action,
    pub reply: Option<oneshot::Sender<Result<StateView, ApiError>>>,
}

pub struct ReadCmd {
    pub conversation: ConversationId,
    pub actor: Actor,
    pub seq: u64,
    pub origin: Option<ConnId>,
}

type Finish = Box<dyn FnOnce(Result<(), ApiError>) + Send>;
/// A rare write (administration, sessions, hand-off codes) run in its own transaction.
/// Returns whether to commit and what to tell the caller once the outcome is known.
type ExecJob = Box<dyn FnOnce(&Connection) -> (bool, Finish) + Send>;

pub enum Command {
    Send(SendCmd),
    Start(StartCmd),
    Action(ActionCmd),
    Read(ReadCmd),
    /// A staff member opened their first connection: give them queued chats.
    StaffOnline,
    /// A sync message from the hub for one conversation ([`replica`]).
    SyncIn(replica::SyncInCmd),
    /// Sync messages to the hub for conversations that changed ([`replica`]).
    SyncOut(replica::SyncOutCmd),
    /// A whole conversation document from the hub (a conversation continued here).
    Import(replica::ImportCmd),
    /// Erase conversations ([`erase`]), in a transaction of their own.
    Erase(erase::EraseCmd),
    Exec(ExecJob),
    /// Finish what is queued before this, then stop the thread.
    Stop,
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    commands: SyncSender<Command>,
}

impl Writer {
    /// Starts the writer thread on an open, migrated connection.
    pub fn start(
        conn: Connection,
        limits: Limits,
        store_id: String,
        delivery: Arc<Delivery>,
        changes: Arc<replica::Changes>,
        live: Arc<crate::settings::LiveSettings>,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (commands, rx) = sync_channel(limits.max_write_queue);
        let state = State {
            docs: LruCache::new(
                std::num::NonZeroUsize::new(limits.max_hot_documents).expect("validated > 0"),
            ),
            clock: HlcClock::default(),
            ids: ulid::Generator::new(),
            last_assigned: HashMap::new(),
            delivery,
            limits,
            store_id,
            changes,
            incoming: HashMap::new(),
            settings: None,
            incoming_session: 0,
            live,
        };
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, state, rx))?;
        Ok((Self { commands }, handle))
    }

    /// Queues a command without waiting; a full queue is `overloaded` (the client retries
    /// with the same ids, which is safe).
    pub fn submit(&self, command: Command) -> Result<(), ApiError> {
        match self.commands.try_send(command) {
            Ok(()) => {
                METRICS.write_queue_depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                METRICS.limit("max_write_queue");
                Err(ApiError::new(
                    Code::Overloaded,
                    "the store's write queue is full; retry with the same client_msg_id",
                ))
            }
            Err(TrySendError::Disconnected(_)) => Err(stopping()),
        }
    }

    /// Queues a command without waiting; a full queue hands it back (`Err(Some)`) for the
    /// caller to retry later, a stopped writer is `Err(None)`. For the uplink, which waits for
    /// room instead of failing. (The command comes back by value: it is moved, not copied.)
    #[allow(clippy::result_large_err)]
    pub fn submit_or_return(&self, command: Command) -> Result<(), Option<Command>> {
        match self.commands.try_send(command) {
            Ok(()) => {
                METRICS.write_queue_depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(command)) => Err(Some(command)),
            Err(TrySendError::Disconnected(_)) => Err(None),
        }
    }

    /// Runs `write` in its own transaction on the writer thread; commits if it returns Ok.
    pub async fn exec<T, F>(&self, write: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ExecJob = Box::new(move |conn| match write(conn) {
            Ok(value) => (
                true,
                Box::new(move |committed: Result<(), ApiError>| {
                    let _ = reply.send(committed.map(|()| value));
                }),
            ),
            Err(err) => (
                false,
                Box::new(move |_| {
                    let _ = reply.send(Err(err));
                }),
            ),
        });
        self.submit(Command::Exec(job))?;
        answer.await.map_err(|_| stopping())?
    }

    pub fn stop(&self) {
        // Blocking send is fine here: called once, at shutdown, off the hot path.
        let _ = self.commands.send(Command::Stop);
    }
}

fn stopping() -> ApiError {
    ApiError::new(Code::ShuttingDown, "the appliance is stopping")
}

/// A conversation held in memory, with what is derived from its document.
struct Hot {
    rowid: i64,
    meta: Meta,
    doc: Conversation,
    fold: Fold,
    last_seq: u64,
    last_message_at_ms: Option<u64>,
    first_response_at_ms: Option<u64>,
    resolved_at_ms: Option<u64>,
    /// Bytes of the compacted save and of the incremental chunks after it.
    saved_bytes: usize,
    pending_bytes: usize,
    next_chunk: i64,
    /// Messages of this batch not yet in the document (added by `prepare`, same transaction).
    pending_messages: Vec<MessageRecord>,
    dirty: bool,
}

impl Hot {
    /// A conversation this store has not written yet (its first chunk will be a full save).
    fn fresh(rowid: i64, meta: Meta, doc: Conversation, fold: Fold) -> Hot {
        Hot {
            rowid,
            meta,
            doc,
            fold,
            last_seq: 0,
            last_message_at_ms: None,
            first_response_at_ms: None,
            resolved_at_ms: None,
            saved_bytes: 0,
            pending_bytes: 0,
            next_chunk: 0,
            pending_messages: Vec::new(),
            dirty: true,
        }
    }

    fn doc_bytes(&self) -> usize {
        self.saved_bytes + self.pending_bytes
    }
}

struct State {
    docs: LruCache<ConversationId, Hot>,
    clock: HlcClock,
    /// Time-ordered ids, strictly increasing within this process: (time, id) order equals
    /// commit order for messages written here.
    ids: ulid::Generator,
    last_assigned: HashMap<StaffId, u64>,
    delivery: Arc<Delivery>,
    limits: Limits,
    store_id: String,
    /// Conversations whose documents changed, for the uplink to sync.
    changes: Arc<replica::Changes>,
    /// Documents the hub is sending that this store never held, until their skeleton arrives.
    incoming: HashMap<ConversationId, Conversation>,
    /// This store's settings document (HQ's canned replies), once loaded.
    settings: Option<aisle_sync::Settings>,
    /// The hub session `incoming` belongs to.
    incoming_session: u64,
    /// The live settings in force (routing rules, capacity, bot, hours), read at each decision.
    live: Arc<crate::settings::LiveSettings>,
}

/// What a batch tells the world once it has committed.
#[derive(Default)]
struct Outbox {
    replies: Vec<Finish>,
    watches: Vec<(ConnId, ConversationId)>,
    unwatches: Vec<(ConversationId, StaffId)>,
    /// Conversations created in this batch.
    fresh: Vec<ConversationId>,
    audiences: Vec<(ConversationId, Option<Audience>)>,
    publishes: Vec<(ConversationId, Outbound, Targets)>,
    touched: Vec<ConversationId>,
    drain_queue: bool,
}

impl Outbox {
    fn reply<T: Send + 'static>(
        &mut self,
        reply: oneshot::Sender<Result<T, ApiError>>,
        result: Result<T, ApiError>,
    ) {
        self.replies.push(Box::new(move |committed| {
            let _ = reply.send(committed.and(result));
        }));
    }
}

fn run(mut conn: Connection, mut state: State, rx: Receiver<Command>) {
    let mut batch: Vec<Command> = Vec::with_capacity(state.limits.max_batch_commands);
    let mut last_wake_check = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(command) => batch.push(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < state.limits.max_batch_commands {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        METRICS.write_queue_depth.sub(batch.len() as i64);

        let mut stop = false;
        let mut chat = Vec::with_capacity(batch.len());
        let mut jobs = Vec::new();
        let mut erasures = Vec::new();
        for command in batch.drain(..) {
            match command {
                Command::Exec(job) => jobs.push(job),
                Command::Erase(cmd) => erasures.push(cmd),
                Command::Stop => stop = true,
                other => chat.push(other),
            }
        }
        if !chat.is_empty() {
            run_batch(&mut conn, &mut state, chat);
        }
        if !jobs.is_empty() {
            for job in jobs {
                run_exec(&mut conn, job);
            }
            // Staff capacity or accounts may have changed: queued chats may now fit.
            run_batch(&mut conn, &mut state, vec![Command::StaffOnline]);
        }
        for cmd in erasures {
            erase::run(&mut conn, &mut state, cmd);
        }
        if last_wake_check.elapsed() >= Duration::from_secs(1) {
            last_wake_check = Instant::now();
            wake_due(&mut conn, &mut state);
        }
        if stop {
            break;
        }
    }
    // The audit head in the logs too (a second copy of the anchor, wherever logs are kept).
    if let Ok(Some((seq, hash))) = audit::head(&conn) {
        tracing::info!(seq, hash = %hash, "audit log head");
    }
    tracing::info!("writer stopped; every accepted command was committed or answered");
}

fn run_exec(conn: &mut Connection, job: ExecJob) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => {
            tracing::error!(error = %err, "cannot begin transaction");
            return;
        }
    };
    let (commit, finish) = job(&tx);
    if commit {
        let committed = tx.commit().map_err(ApiError::from);
        crate::audit::anchor_after_commit(conn);
        finish(committed);
    } else {
        drop(tx);
        crate::audit::anchor_after_commit(conn);
        finish(Ok(()));
    }
}

fn run_batch(conn: &mut Connection, state: &mut State, commands: Vec<Command>) {
    let started = Instant::now();
    let count = commands.len();
    let mut out = Outbox::default();
    let result = (|| -> Result<Vec<ConversationId>, ApiError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for command in commands {
            apply(&tx, state, command, &mut out)?;
        }
        if out.drain_queue {
            drain_queue(&tx, state, &mut out)?;
        }
        let changed = flush_dirty(&tx, state)?;
        tx.commit()?;
        Ok(changed)
    })();
    crate::audit::anchor_after_commit(conn);
    METRICS.commit_batch_commands.observe(count as f64);
    METRICS
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(changed) => {
            state.changes.mark(&changed);
            for (conversation, audience) in out.audiences {
                state.delivery.set_audience(conversation, audience);
            }
            for (conversation, frame, targets) in &out.publishes {
                state.delivery.publish(*conversation, frame, targets);
            }
            // Subscriptions after the publishes (a connection that just started a chat gets its
            // state in the `started` answer, not twice) and before the answers (a client that
            // acts the moment it hears `started` or its first `ack` is already subscribed).
            for (id, conversation) in out.watches {
                state.delivery.watch(id, conversation);
            }
            for (conversation, staff) in out.unwatches {
                state.delivery.unwatch_staff(conversation, staff);
            }
            for finish in out.replies {
                finish(Ok(()));
            }
        }
        Err(err) => {
            // Nothing was committed: the in-memory documents touched by this batch hold
            // changes that are not on disk, so forget them (they reload from disk on demand).
            tracing::error!(error = %err.message, commands = count, "batch rolled back");
            for id in &out.touched {
                state.docs.pop(id);
            }
            // The same for what sync held in memory (reloaded or asked again).
            state.settings = None;
            state.incoming.clear();
            for finish in out.replies {
                finish(Err(err.clone()));
            }
        }
    }
    METRICS.hot_documents.set(state.docs.len() as i64);
}

/// Applies one command. `Err` aborts the whole batch (a database error); refusals (not found,
/// forbidden, …) are replies, not errors.
fn apply(
    db: &Connection,
    state: &mut State,
    command: Command,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    match command {
        Command::Send(cmd) => {
            let reply = cmd.reply;
            let origin = cmd.origin;
            let conversation = cmd.conversation;
            let result = send(
                db,
                state,
                conversation,
                cmd.actor,
                cmd.client_msg_id,
                cmd.body,
                cmd.attachment,
                cmd.intent,
                origin,
                out,
            );
            let result = refusal_or_abort(result)?;
            // A customer's device follows the chat it writes in; staff follow the chats they
            // hold (delivery's audience) or open with `resume`.
            if result.is_ok()
                && matches!(cmd.actor, Actor::Customer(_))
                && let Some(origin) = origin
            {
                out.watches.push((origin, conversation));
            }
            out.reply(reply, result);
        }
        Command::Start(cmd) => {
            let result = start(db, state, cmd.customer, &cmd.display_name, out);
            let result = refusal_or_abort(result)?;
            if let (Ok(started), Some(origin)) = (&result, cmd.origin) {
                out.watches.push((origin, started.conversation_id));
            }
            out.reply(cmd.reply, result);
        }
        Command::Action(cmd) => {
            let result = action(db, state, cmd.conversation, cmd.actor, cmd.action, out);
            let result = refusal_or_abort(result)?;
            if let Some(reply) = cmd.reply {
                out.reply(reply, result);
            }
        }
        Command::Read(cmd) => {
            let result = read(
                db,
                state,
                cmd.conversation,
                cmd.actor,
                cmd.seq,
                cmd.origin,
                out,
            );
            if let Err(err) = refusal_or_abort(result)? {
                tracing::debug!(code = err.code.as_str(), "read receipt refused");
            }
        }
        Command::StaffOnline => out.drain_queue = true,
        Command::SyncIn(cmd) => {
            let reply = cmd.reply;
            let result = refusal_or_abort(replica::sync_in(
                db,
                state,
                &cmd.session,
                &cmd.key,
                &cmd.message,
                out,
            ))?;
            out.reply(reply, result.map(|frame| vec![frame]));
        }
        Command::SyncOut(cmd) => {
            let reply = cmd.reply;
            let result =
                refusal_or_abort(replica::sync_out(db, state, &cmd.session, cmd.keys, out))?;
            out.reply(reply, result);
        }
        Command::Import(cmd) => {
            let reply = cmd.reply;
            let result = refusal_or_abort(replica::import(db, state, cmd.bytes, out))?;
            out.reply(reply, result);
        }
        Command::Exec(_) | Command::Erase(_) | Command::Stop => {
            unreachable!("separated before the batch")
        }
    }
    Ok(())
}

/// Internal errors abort the batch; everything else is an answer to the client.
fn refusal_or_abort<T>(result: Result<T, ApiError>) -> Result<Result<T, ApiError>, ApiError> {
    match result {
        Err(err) if err.code == Code::Internal => Err(err),
        other => Ok(other),
    }
}

/// Loads a conversation into the hot set (if it exists) and returns it.
fn hot<'a>(
    db: &Connection,
    state: &'a mut State,
    id: ConversationId,
    out: &mut Outbox,
) -> Result<Option<&'a mut Hot>, ApiError> {
    if !state.docs.contains(&id) {
        let Some(loaded) = load(db, id)? else {
            return Ok(None);
        };
        state.delivery.set_audience(
            id,
            Some(Audience {
                agent: loaded.fold.state.agent,
            }),
        );
        insert_hot(db, state, id, loaded, out)?;
    } else {
        out.touched.push(id);
    }
    Ok(state.docs.get_mut(&id))
}

/// Puts a conversation into the hot set; the one it evicts is written out first if dirty.
fn insert_hot(
    db: &Connection,
    state: &mut State,
    id: ConversationId,
    hot: Hot,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    if let Some((evicted_id, mut evicted)) = state.docs.push(id, hot)
        && evicted_id != id
    {
        if evicted.dirty {
            flush(db, &mut evicted)?;
        }
        out.audiences.push((evicted_id, None));
    }
    out.touched.push(id);
    Ok(())
}

fn load(db: &Connection, id: ConversationId) -> Result<Option<Hot>, ApiError> {
    let row = db
        .prepare_cached(
            "SELECT rowid, last_seq, last_message_at_ms, first_response_at_ms, resolved_at_ms
             FROM conversations WHERE id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((rowid, last_seq, last_message_at, first_response_at, resolved_at)) = row else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    let mut saved_bytes = 0;
    let mut next_chunk = 0;
    let mut statement =
        db.prepare_cached("SELECT n, bytes FROM doc_chunks WHERE conversation = ?1 ORDER BY n")?;
    let mut rows = statement.query([rowid])?;
    while let Some(row) = rows.next()? {
        let n: i64 = row.get(0)?;
        let chunk: Vec<u8> = row.get(1)?;
        if bytes.is_empty() {
            saved_bytes = chunk.len();
        }
        bytes.extend_from_slice(&chunk);
        next_chunk = n + 1;
    }
    let doc = Conversation::load(&bytes)?;
    let meta = doc.meta()?;
    let fold = doc.fold()?;
    Ok(Some(Hot {
        rowid,
        meta,
        doc,
        fold,
        last_seq: last_seq as u64,
        last_message_at_ms: last_message_at.map(|v| v as u64),
        first_response_at_ms: first_response_at.map(|v| v as u64),
        resolved_at_ms: resolved_at.map(|v| v as u64),
        pending_bytes: bytes.len() - saved_bytes,
        saved_bytes,
        next_chunk,
        pending_messages: Vec::new(),
        dirty: false,
    }))
}

/// Compaction threshold: increments are folded into a new compacted save once they outgrow the
/// last save (and at least this much).
const MIN_COMPACT_BYTES: usize = 64 * 1024;
/// With at least this many documents changed in a batch, their Automerge work is split over two
/// threads (the second core is otherwise idle while the writer works).
const PARALLEL_MIN_DOCUMENTS: usize = 8;

/// What a document contributes to the batch's transaction.
enum Chunk {
    None,
    Incremental(Vec<u8>),
    Full(Vec<u8>),
}

/// The Automerge half of a flush, touching only the document (so it can run on another
/// thread): applies the batch's messages, closes the change, and decides on compaction. The
/// amortised cost per message stays constant because a compaction rewrites only what was
/// written since the last one, at most.
fn prepare(hot: &mut Hot) -> Result<Chunk, aisle_sync::SyncError> {
    for message in hot.pending_messages.drain(..) {
        // Ids minted by the writer's monotonic generator: new to the document by construction.
        hot.doc.add_new_message(&message)?;
    }
    let chunk = hot.doc.save_incremental();
    if chunk.is_empty() {
        return Ok(Chunk::None);
    }
    if hot.next_chunk > 0
        && hot.pending_bytes + chunk.len() > hot.saved_bytes.max(MIN_COMPACT_BYTES)
    {
        return Ok(Chunk::Full(hot.doc.save()));
    }
    Ok(Chunk::Incremental(chunk))
}

/// The SQLite half of a flush: the document's chunk and its index row.
fn write(db: &Connection, hot: &mut Hot, chunk: Chunk) -> Result<(), ApiError> {
    match chunk {
        Chunk::None => {}
        Chunk::Full(full) => {
            db.prepare_cached("DELETE FROM doc_chunks WHERE conversation = ?1")?
                .execute([hot.rowid])?;
            db.prepare_cached(
                "INSERT INTO doc_chunks (conversation, n, bytes) VALUES (?1, 0, ?2)",
            )?
            .execute(params![hot.rowid, full])?;
            hot.saved_bytes = full.len();
            hot.pending_bytes = 0;
            hot.next_chunk = 1;
            METRICS.document_compactions.inc();
        }
        Chunk::Incremental(chunk) => {
            db.prepare_cached(
                "INSERT INTO doc_chunks (conversation, n, bytes) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![hot.rowid, hot.next_chunk, chunk])?;
            if hot.next_chunk == 0 {
                // The first chunk of a new document is its base.
                hot.saved_bytes = chunk.len();
            } else {
                hot.pending_bytes += chunk.len();
            }
            hot.next_chunk += 1;
        }
    }
    let s = &hot.fold.state;
    db.prepare_cached(
        "UPDATE conversations SET status = ?2, agent_id = ?3, previous_agent_id = ?4,
            snoozed_until_ms = ?5, state_version = ?6, last_seq = ?7, last_message_at_ms = ?8,
            first_response_at_ms = ?9, resolved_at_ms = ?10, doc_bytes = ?11, heads = ?12
         WHERE rowid = ?1",
    )?
    .execute(params![
        hot.rowid,
        s.status.as_str(),
        s.agent.map(|a| a.to_string()),
        s.previous_agent.map(|a| a.to_string()),
        s.snoozed_until_ms.map(|v| v as i64),
        s.applied,
        hot.last_seq as i64,
        hot.last_message_at_ms.map(|v| v as i64),
        hot.first_response_at_ms.map(|v| v as i64),
        hot.resolved_at_ms.map(|v| v as i64),
        hot.doc_bytes() as i64,
        replica::heads_bytes(&hot.doc.heads()),
    ])?;
    hot.dirty = false;
    Ok(())
}

/// Writes one document's pending changes (used when a dirty document leaves the cache).
fn flush(db: &Connection, hot: &mut Hot) -> Result<(), ApiError> {
    let chunk = prepare(hot)?;
    write(db, hot, chunk)
}

/// Writes every changed document of the batch: the Automerge work split over two threads when
/// there is enough of it, the SQLite work on the writer thread.
fn flush_dirty(db: &Connection, state: &mut State) -> Result<Vec<ConversationId>, ApiError> {
    let mut dirty: Vec<&mut Hot> = state
        .docs
        .iter_mut()
        .filter_map(|(_, hot)| hot.dirty.then_some(hot))
        .collect();
    let chunks: Vec<Result<Chunk, aisle_sync::SyncError>> = if dirty.len() >= PARALLEL_MIN_DOCUMENTS
    {
        let half = dirty.len() / 2;
        let (first, second) = dirty.split_at_mut(half);
        std::thread::scope(|scope| {
            let helper = scope.spawn(|| first.iter_mut().map(|h| prepare(h)).collect::<Vec<_>>());
            let mut rest: Vec<_> = second.iter_mut().map(|h| prepare(h)).collect();
            let mut chunks = match helper.join() {
                Ok(chunks) => chunks,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            chunks.append(&mut rest);
            chunks
        })
    } else {
        dirty.iter_mut().map(|h| prepare(h)).collect()
    };
    let mut changed = Vec::new();
    for (hot, chunk) in dirty.into_iter().zip(chunks) {
        let chunk = chunk?;
        if !matches!(chunk, Chunk::None) {
            changed.push(hot.meta.id);
        }
        write(db, hot, chunk)?;
    }
    Ok(changed)
}

/// The upload `id`, if `sender` made it: a message can only carry the sender's own image.
fn own_attachment(
    db: &Connection,
    id: AttachmentId,
    sender: &Participant,
) -> Result<Attachment, ApiError> {
    let row: Option<(String, i64)> = db
        .prepare_cached("SELECT mime, bytes FROM attachments WHERE id = ?1 AND uploader = ?2")?
        .query_row(params![id.to_string(), uploader_key(sender)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        Some((mime, bytes)) => Ok(Attachment {
            id,
            mime,
            bytes: bytes as u64,
        }),
        None => Err(ApiError::new(
            Code::NotFound,
            "no such attachment: upload it with POST /api/attachments first",
        )),
    }
}

/// Who uploaded an attachment, as stored in `attachments.uploader`.
pub fn uploader_key(sender: &Participant) -> String {
    match sender {
        Participant::Customer(id) => format!("customer:{id}"),
        Participant::Staff(id) => format!("staff:{id}"),
        Participant::Bot => "bot".into(),
        Participant::System => "system".into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    actor: Actor,
    client_msg_id: String,
    body: String,
    attachment: Option<AttachmentId>,
    intent: Option<IntentRecord>,
    origin: Option<ConnId>,
    out: &mut Outbox,
) -> Result<Ack, ApiError> {
    let limits = state.limits.clone();
    let Some(hot) = hot(db, state, conversation, out)? else {
        return Err(not_found());
    };
    if let Actor::Customer(customer) = actor
        && hot.meta.customer != customer
    {
        return Err(not_found());
    }
    // A retry finds its first copy: answer with the original ack, change nothing.
    let existing = db
        .prepare_cached(
            "SELECT id, seq, sent_at_ms FROM messages WHERE conversation = ?1 AND client_msg_id = ?2",
        )?
        .query_row(params![hot.rowid, client_msg_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .optional()?;
    if let Some((id, seq, sent_at)) = existing {
        METRICS.messages_duplicate.inc();
        return Ok(Ack {
            conversation_id: conversation,
            client_msg_id,
            message_id: id.parse().map_err(ApiError::internal)?,
            seq: seq as u64,
            sent_at_ms: sent_at as u64,
            duplicate: true,
        });
    }
    if hot.last_seq >= limits.max_messages_per_conversation {
        METRICS.limit("max_messages_per_conversation");
        return Err(ApiError::new(
            Code::ConversationFull,
            format!(
                "the conversation holds max_messages_per_conversation = {} messages; start a new one",
                limits.max_messages_per_conversation
            ),
        ));
    }
    if hot.doc_bytes() >= limits.max_document_bytes {
        METRICS.limit("max_document_bytes");
        return Err(ApiError::new(
            Code::ConversationFull,
            format!(
                "the conversation document reached max_document_bytes = {}; start a new one",
                limits.max_document_bytes
            ),
        ));
    }

    // What writing does to the session: a customer reopens a resolved chat and wakes a
    // snoozed one; a staff member writing into a queued chat claims it.
    let status = hot.fold.state.status;
    let agent = hot.fold.state.agent;
    match actor {
        Actor::Customer(_) => {
            if status == Status::Resolved {
                apply_event(db, state, conversation, EventKind::Reopen, actor, None, out)?
                    .map_err(rejection_error)?;
                route(db, state, conversation, None, out)?;
            } else if status == Status::Snoozed {
                apply_event(db, state, conversation, EventKind::Wake, actor, None, out)?
                    .map_err(rejection_error)?;
                if agent.is_none() {
                    route(db, state, conversation, None, out)?;
                }
            }
        }
        Actor::Staff { id, admin } => {
            let holds = agent == Some(id);
            let unassigned = agent.is_none() || status == Status::Queued;
            if status == Status::Resolved {
                return Err(ApiError::new(
                    Code::IllegalTransition,
                    "the conversation is resolved; reopen it first",
                ));
            }
            if unassigned && matches!(status, Status::Queued | Status::Reopened) {
                apply_event(
                    db,
                    state,
                    conversation,
                    EventKind::Claim { agent: id },
                    actor,
                    None,
                    out,
                )?
                .map_err(rejection_error)?;
                audit::append(
                    db,
                    &audit::actor::staff(id),
                    "conversation_claim",
                    &conversation.to_string(),
                    serde_json::json!({ "by_sending": true }),
                )?;
            } else if !holds && !admin {
                return Err(forbidden_colleague(db, agent)?);
            }
        }
        Actor::System => {}
    }

    let attachment = match attachment {
        Some(id) => Some(own_attachment(db, id, &actor.participant())?),
        None => None,
    };
    let customer_intent = intent.clone();
    let view = append_message(
        db,
        state,
        conversation,
        NewMessage {
            sender: actor.participant(),
            client_msg_id,
            body,
            attachment,
            intent,
        },
        origin,
        out,
    )?;
    let ack = Ack {
        conversation_id: conversation,
        client_msg_id: view.client_msg_id.clone(),
        message_id: view.id,
        seq: view.seq,
        sent_at_ms: view.sent_at_ms,
        duplicate: false,
    };
    if let Actor::Customer(_) = actor
        && state
            .live
            .current()
            .resolved
            .settings
            .routing
            .waits_for_first_message()
        && state
            .docs
            .get(&conversation)
            .is_some_and(|hot| in_queue(&hot.fold.state))
    {
        // The rules read the first message: now the chat can be routed.
        route(db, state, conversation, None, out)?;
    }
    if let (Actor::Customer(_), Some(intent)) = (actor, customer_intent) {
        bot::answer(db, state, conversation, view.id, &intent, out)?;
    }
    if let Actor::Staff { id, .. } = actor {
        // The message's id only: what staff wrote stays in the conversation, not in the log.
        audit::append(
            db,
            &audit::actor::staff(id),
            "message_sent",
            &conversation.to_string(),
            serde_json::json!({ "message_id": view.id }),
        )?;
    }
    Ok(ack)
}

/// A message about to be written: what the sender said and what the model read in it.
pub struct NewMessage {
    pub sender: Participant,
    pub client_msg_id: String,
    pub body: String,
    pub attachment: Option<Attachment>,
    pub intent: Option<IntentRecord>,
}

/// Writes a new message of a loaded conversation: its row (next `seq`), the document (at the
/// end of the batch, same transaction) and the `message` frame to everyone but `origin`.
fn append_message(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    m: NewMessage,
    origin: Option<ConnId>,
    out: &mut Outbox,
) -> Result<MessageView, ApiError> {
    let now = now_ms();
    let attachment_json = m
        .attachment
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)?;
    let hot = state
        .docs
        .get_mut(&conversation)
        .expect("loaded by the caller");
    let id = MessageId::from_ulid(
        state
            .ids
            .generate()
            .map_err(|_| ApiError::internal("message id space exhausted this millisecond"))?,
    );
    let seq = hot.last_seq + 1;
    let (sender_kind, sender_id) = participant_columns(&m.sender);
    db.prepare_cached(
        "INSERT INTO messages (conversation, seq, id, client_msg_id, sender_kind, sender_id, body,
                               sent_at_ms, attachment, intent, intent_confidence, intent_model)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        hot.rowid,
        seq as i64,
        id.to_string(),
        m.client_msg_id,
        sender_kind,
        sender_id,
        m.body,
        now as i64,
        attachment_json,
        m.intent.as_ref().map(|i| i.label.as_str()),
        m.intent.as_ref().map(|i| i.confidence as f64),
        m.intent.as_ref().map(|i| i.model.as_str()),
    ])?;
    let staff = matches!(m.sender, Participant::Staff(_));
    let record = MessageRecord {
        id,
        client_msg_id: m.client_msg_id,
        sender: m.sender,
        body: m.body,
        sent_at_ms: now,
        attachment: m.attachment,
        intent: m.intent,
    };
    // Into the document at the end of the batch (`prepare`), in the same transaction.
    hot.pending_messages.push(record.clone());
    hot.last_seq = seq;
    hot.last_message_at_ms = Some(now);
    if staff && hot.first_response_at_ms.is_none() {
        hot.first_response_at_ms = Some(now);
    }
    hot.dirty = true;
    METRICS.messages_persisted.inc();

    let view = MessageView::of(seq, record);
    let text = ServerFrame::Message {
        conversation_id: conversation,
        message: &view,
    }
    .to_text();
    out.publishes.push((
        conversation,
        Outbound::new(Some(conversation), seq, text),
        Targets {
            except: origin,
            ..Targets::default()
        },
    ));
    Ok(view)
}

fn start(
    db: &Connection,
    state: &mut State,
    customer: CustomerId,
    display_name: &str,
    out: &mut Outbox,
) -> Result<Started, ApiError> {
    let now = now_ms();
    db.prepare_cached(
        "INSERT INTO customers (id, display_name, created_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name
         WHERE excluded.display_name != ''",
    )?
    .execute(params![customer.to_string(), display_name, now as i64])?;

    // One open conversation per customer: a retried `start` finds it.
    let open: Option<String> = db
        .prepare_cached(
            "SELECT id FROM conversations WHERE customer_id = ?1 AND status != 'resolved'
             ORDER BY created_at_ms DESC LIMIT 1",
        )?
        .query_row([customer.to_string()], |r| r.get(0))
        .optional()?;
    if let Some(open) = open {
        let id: ConversationId = open.parse().map_err(ApiError::internal)?;
        let hot =
            hot(db, state, id, out)?.ok_or_else(|| ApiError::internal("row without document"))?;
        let (last_seq, fold_state) = (hot.last_seq, hot.fold.state.clone());
        return Ok(Started {
            conversation_id: id,
            created: false,
            last_seq,
            state: state_view(db, &fold_state)?,
        });
    }

    let id = ConversationId::new();
    let meta = Meta {
        id,
        store_id: state.store_id.clone(),
        customer,
        created_at_ms: now,
        schema_version: SCHEMA_VERSION,
    };
    let mut doc = Conversation::create(&meta)?;
    doc.put_participant(&ParticipantRecord {
        participant: Participant::Customer(customer),
        display_name: display_name.to_owned(),
        joined_at_ms: now,
    })?;
    let fold = doc.fold()?;
    db.prepare_cached(
        "INSERT INTO conversations (id, customer_id, status, created_at_ms, origin_store)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.to_string(),
        customer.to_string(),
        fold.state.status.as_str(),
        now as i64,
        state.store_id,
    ])?;
    let rowid = db.last_insert_rowid();
    insert_hot(db, state, id, Hot::fresh(rowid, meta, doc, fold), out)?;
    out.fresh.push(id);
    out.audiences.push((id, Some(Audience { agent: None })));
    METRICS.conversations_started.inc();

    // Outside business hours the customer is told at once (the chat still waits for staff).
    let in_force = state.live.current();
    let hours = &in_force.resolved.settings.hours;
    if !hours.offline_message.is_empty() && !hours.is_open(now) {
        append_message(
            db,
            state,
            id,
            NewMessage {
                sender: Participant::Bot,
                client_msg_id: format!("offline#{id}"),
                body: hours.offline_message.clone(),
                attachment: None,
                intent: None,
            },
            None,
            out,
        )?;
    }

    route(db, state, id, None, out)?;
    let hot = state.docs.get_mut(&id).expect("just inserted");
    let fold_state = hot.fold.state.clone();
    if fold_state.status == Status::Queued {
        // Nobody could take it: every online staff member sees it waiting.
        publish_state(db, id, None, &fold_state, None, Vec::new(), out)?;
    }
    Ok(Started {
        conversation_id: id,
        created: true,
        last_seq: 0,
        state: state_view(db, &fold_state)?,
    })
}

fn action(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    actor: Actor,
    action: Action,
    out: &mut Outbox,
) -> Result<StateView, ApiError> {
    let Some(hot) = hot(db, state, conversation, out)? else {
        return Err(not_found());
    };
    let current = hot.fold.state.clone();
    let (staff, admin) = match actor {
        Actor::Staff { id, admin } => (Some(id), admin),
        Actor::System => (None, true),
        Actor::Customer(_) => return Err(ApiError::new(Code::Forbidden, "staff only")),
    };
    let holds = staff.is_some() && current.agent == staff;
    let unassigned =
        current.agent.is_none() || matches!(current.status, Status::Queued | Status::Resolved);
    // Who may act: the holder, a store admin, or anyone on a chat nobody holds.
    let may_act = holds || admin || unassigned;
    let kind = match &action {
        Action::Claim => {
            let agent = staff.ok_or_else(|| ApiError::new(Code::Forbidden, "staff only"))?;
            if current.agent == Some(agent)
                && matches!(current.status, Status::Assigned | Status::Transferred)
            {
                // Claiming what you already hold is a no-op, not an error (retries).
                return state_view(db, &current);
            }
            EventKind::Claim { agent }
        }
        Action::Transfer { to, .. } => {
            if !may_act {
                return Err(forbidden_colleague(db, current.agent)?);
            }
            let active: Option<bool> = db
                .prepare_cached("SELECT disabled = 0 FROM staff WHERE id = ?1")?
                .query_row([to.to_string()], |r| r.get(0))
                .optional()?;
            if active != Some(true) {
                return Err(ApiError::new(
                    Code::NotFound,
                    "no active colleague with that id",
                ));
            }
            EventKind::Transfer { to: *to }
        }
        other => {
            if !may_act {
                return Err(forbidden_colleague(db, current.agent)?);
            }
            match other {
                Action::Release => EventKind::Release,
                Action::Resolve => EventKind::Resolve,
                Action::Reopen => EventKind::Reopen,
                Action::Snooze { until_ms } => EventKind::Snooze {
                    until_ms: *until_ms,
                },
                Action::Wake => EventKind::Wake,
                Action::Claim | Action::Transfer { .. } => unreachable!("matched above"),
            }
        }
    };
    let note = match &action {
        Action::Transfer { note, .. } => note.clone(),
        _ => None,
    };
    let is_claim = matches!(kind, EventKind::Claim { .. });
    let outcome = apply_event(db, state, conversation, kind, actor, note, out)?;
    if let Err(rejection) = outcome {
        if is_claim && current.agent.is_some() && current.agent != staff {
            let name = staff_name(db, current.agent)?;
            return Err(ApiError::new(
                Code::AlreadyClaimed,
                format!("conversation is already assigned to {name}"),
            ));
        }
        return Err(rejection_error(rejection));
    }
    if let Some(staff) = staff {
        audit_action(db, staff, conversation, &action, current.agent)?;
    }
    match action {
        Action::Reopen => {
            route(db, state, conversation, None, out)?;
        }
        Action::Release => {
            route(db, state, conversation, staff, out)?;
        }
        Action::Wake => {
            let agent = state
                .docs
                .get(&conversation)
                .and_then(|h| h.fold.state.agent);
            if agent.is_none() {
                route(db, state, conversation, None, out)?;
            }
        }
        _ => {}
    }
    if matches!(
        action,
        Action::Resolve | Action::Transfer { .. } | Action::Snooze { .. } | Action::Release
    ) {
        // A slot may have freed: queued chats may now find someone.
        out.drain_queue = true;
    }
    let hot = state.docs.get(&conversation).expect("loaded above");
    state_view(db, &hot.fold.state.clone())
}

/// The audit entry of a staff member's action on a conversation (the transfer note, free text,
/// is not copied).
fn audit_action(
    db: &Connection,
    staff: StaffId,
    conversation: ConversationId,
    action: &Action,
    held_by: Option<StaffId>,
) -> Result<(), ApiError> {
    let (name, details) = match action {
        Action::Claim => ("conversation_claim", serde_json::json!({})),
        Action::Transfer { to, .. } => (
            "conversation_transfer",
            serde_json::json!({ "from": held_by, "to": to }),
        ),
        Action::Release => ("conversation_release", serde_json::json!({})),
        Action::Resolve => ("conversation_resolve", serde_json::json!({})),
        Action::Reopen => ("conversation_reopen", serde_json::json!({})),
        Action::Snooze { until_ms } => (
            "conversation_snooze",
            serde_json::json!({ "until_ms": until_ms }),
        ),
        Action::Wake => ("conversation_wake", serde_json::json!({})),
    };
    audit::append(
        db,
        &audit::actor::staff(staff),
        name,
        &conversation.to_string(),
        details,
    )?;
    Ok(())
}

fn read(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    actor: Actor,
    seq: u64,
    origin: Option<ConnId>,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    let Some(hot) = hot(db, state, conversation, out)? else {
        return Err(not_found());
    };
    if let Actor::Customer(customer) = actor
        && hot.meta.customer != customer
    {
        return Err(not_found());
    }
    let seq = seq.min(hot.last_seq);
    let participant = actor.participant();
    let (kind, id) = participant_columns(&participant);
    let key = format!("{kind}:{}", id.unwrap_or_default());
    let changed = db
        .prepare_cached(
            "INSERT INTO read_cursors (conversation, participant, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (conversation, participant) DO UPDATE SET seq = excluded.seq
             WHERE excluded.seq > read_cursors.seq",
        )?
        .execute(params![hot.rowid, key, seq as i64])?;
    if changed > 0 {
        let text = ServerFrame::Read {
            conversation_id: conversation,
            seq,
            by: &participant,
        }
        .to_text();
        out.publishes.push((
            conversation,
            Outbound::new(Some(conversation), 0, text),
            Targets {
                except: origin,
                ..Targets::default()
            },
        ));
    }
    Ok(())
}

/// Appends an event to the conversation's log if the transition table allows it from the
/// current state, with the current head as its compare-and-swap expectation.
fn apply_event(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    kind: EventKind,
    actor: Actor,
    note: Option<String>,
    out: &mut Outbox,
) -> Result<Result<(), aisle_sync::Rejection>, ApiError> {
    let now = now_ms();
    let hot = state
        .docs
        .get_mut(&conversation)
        .expect("caller loaded the conversation");
    let before = hot.fold.state.clone();
    if let Err(rejection) = aisle_sync::transition(&before, &kind) {
        return Ok(Err(rejection));
    }
    let event = Event {
        id: EventId::from_ulid(
            state
                .ids
                .generate()
                .map_err(|_| ApiError::internal("event id space exhausted this millisecond"))?,
        ),
        kind: kind.clone(),
        actor: actor.participant(),
        hlc: state.clock.tick(now),
        prev: before.head,
    };
    hot.doc.add_event(&event)?;
    hot.fold = hot.doc.fold()?;
    // Invariant: the writer is the only local author and acts on the head it holds, so its
    // own event always wins the compare-and-swap.
    assert_eq!(
        hot.fold.state.head,
        Some(event.id),
        "the writer's own event must apply"
    );
    if hot.fold.state.status == Status::Resolved {
        hot.resolved_at_ms = Some(now);
    }
    hot.dirty = true;
    let after = hot.fold.state.clone();
    let mut row = serde_json::to_value(&event).map_err(ApiError::internal)?;
    if let Some(note) = &note {
        row["note"] = serde_json::Value::String(note.clone());
    }
    db.prepare_cached(
        "INSERT INTO events (conversation, id, body, at_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        hot.rowid,
        event.id.to_string(),
        row.to_string(),
        now as i64
    ])?;
    METRICS
        .state_changes
        .with_label_values(&[event_kind_name(&kind)])
        .inc();
    if let EventKind::Assign { agent }
    | EventKind::Claim { agent }
    | EventKind::Transfer { to: agent } = &kind
    {
        state.last_assigned.insert(*agent, now);
        // The holder's name travels with the document, so another store that holds a copy
        // (a conversation continued elsewhere, the hub) can name them.
        let name: Option<String> = db
            .prepare_cached("SELECT name FROM staff WHERE id = ?1")?
            .query_row([agent.to_string()], |r| r.get(0))
            .optional()?;
        if let Some(name) = name {
            let hot = state
                .docs
                .get_mut(&conversation)
                .expect("caller loaded the conversation");
            hot.doc.put_participant(&ParticipantRecord {
                participant: Participant::Staff(*agent),
                display_name: name,
                joined_at_ms: now,
            })?;
        }
    }

    // Everyone concerned hears of it: the old holder too (a transfer or release takes the
    // chat out of their list).
    let mut extra = Vec::new();
    if let Some(old) = before.agent {
        extra.push(old);
    }
    let view = EventView {
        id: event.id,
        kind,
        actor: event.actor,
        note,
    };
    out.audiences
        .push((conversation, Some(Audience { agent: after.agent })));
    publish_state(
        db,
        conversation,
        Some(&before),
        &after,
        Some(&view),
        extra,
        out,
    )?;
    // A transfer or release takes the chat from its holder: their open views stop following it.
    if matches!(view.kind, EventKind::Transfer { .. } | EventKind::Release)
        && let Some(old) = before.agent
    {
        out.unwatches.push((conversation, old));
    }
    Ok(Ok(()))
}

/// Queues a `state` frame for everyone concerned: watchers, the holder, `staff` (e.g. the
/// previous holder), and every online staff member while the chat is in the queue or has
/// just left it (so every tablet's queue stays right, and a losing claimer sees the winner).
fn publish_state(
    db: &Connection,
    conversation: ConversationId,
    before: Option<&aisle_sync::SessionState>,
    session: &aisle_sync::SessionState,
    event: Option<&EventView>,
    mut staff: Vec<StaffId>,
    out: &mut Outbox,
) -> Result<(), ApiError> {
    let view = state_view(db, session)?;
    let text = ServerFrame::State {
        conversation_id: conversation,
        state: &view,
        event,
    }
    .to_text();
    if let Some(agent) = session.agent {
        staff.push(agent);
    }
    // A chat opened in this batch was never shown in the queue: no need to announce it left.
    let left_queue = before.is_some_and(in_queue) && !out.fresh.contains(&conversation);
    out.publishes.push((
        conversation,
        Outbound::new(Some(conversation), 0, text),
        Targets {
            staff,
            all_staff: in_queue(session) || left_queue,
            except: None,
        },
    ));
    Ok(())
}

fn in_queue(session: &aisle_sync::SessionState) -> bool {
    session.status == Status::Queued
        || (session.status == Status::Reopened && session.agent.is_none())
}

/// Assigns a conversation that nobody holds to the best online staff member, if any, by the
/// routing rules in force (`aisle_settings::Routing::plan`): the first matching rule with
/// someone online with room chooses among them (least loaded, the customer's previous agent
/// first); then, unless the fallback is the queue, anyone with room. When a rule reads the
/// customer's first message (intent, language), a chat without one waits in the queue.
fn route(
    db: &Connection,
    state: &mut State,
    conversation: ConversationId,
    exclude: Option<StaffId>,
    out: &mut Outbox,
) -> Result<bool, ApiError> {
    let online = state.delivery.online_staff();
    if online.is_empty() {
        return Ok(false);
    }
    let hot = state.docs.get(&conversation).expect("caller loaded it");
    let current = hot.fold.state.clone();
    if !matches!(current.status, Status::Queued | Status::Reopened) {
        return Ok(false);
    }
    let (customer, rowid) = (hot.meta.customer, hot.rowid);
    let in_force = state.live.current();
    let settings = &in_force.resolved.settings;
    let first: Option<(String, Option<String>)> = db
        .prepare_cached(
            "SELECT body, intent FROM messages WHERE conversation = ?1 AND sender_kind = 'customer'
             ORDER BY seq LIMIT 1",
        )?
        .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if first.is_none() && current.agent.is_none() && settings.routing.waits_for_first_message() {
        return Ok(false);
    }
    let mut candidates = Vec::with_capacity(online.len());
    for id in online {
        if Some(id) == exclude {
            continue;
        }
        type StaffRow = (u32, bool, String, Option<String>, String);
        let row: Option<StaffRow> = db
            .prepare_cached(
                "SELECT capacity, disabled, username, team, skills FROM staff WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((capacity, false, username, team, skills)) = row else {
            continue;
        };
        let open_chats: u32 = db
            .prepare_cached(
                "SELECT COUNT(*) FROM conversations WHERE agent_id = ?1
                 AND status IN ('assigned', 'transferred', 'reopened') AND id != ?2",
            )?
            .query_row(params![id.to_string(), conversation.to_string()], |r| {
                r.get(0)
            })?;
        let profile = aisle_settings::StaffProfile {
            username,
            team,
            skills: serde_json::from_str(&skills).unwrap_or_default(),
        };
        let candidate = Candidate {
            id,
            open_chats,
            capacity,
            last_assigned_at_ms: state.last_assigned.get(&id).copied().unwrap_or(0),
        };
        candidates.push((candidate, profile));
    }
    // The one who served this customer last: the chat's own agent (a reopened chat), or the
    // agent of the customer's previous conversation.
    let previous: Option<Option<String>> = db
        .prepare_cached(
            "SELECT agent_id FROM conversations WHERE customer_id = ?1 AND id != ?2
             ORDER BY agent_id IS NULL, created_at_ms DESC LIMIT 1",
        )?
        .query_row(
            params![customer.to_string(), conversation.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    let preferred = match current.agent {
        Some(agent) => Some(agent),
        None => previous.clone().flatten().and_then(|s| s.parse().ok()),
    };
    let queue_length: u32 = db
        .prepare_cached(
            "SELECT COUNT(*) FROM conversations WHERE id != ?1
             AND (status = 'queued' OR (status = 'reopened' AND agent_id IS NULL))",
        )?
        .query_row([conversation.to_string()], |r| r.get(0))?;
    let (body, intent) = match &first {
        Some((body, intent)) => (Some(body.as_str()), intent.as_deref()),
        None => (None, None),
    };
    let facts = aisle_settings::Facts {
        intent,
        language: body.and_then(aisle_settings::language_of),
        store_id: &state.store_id,
        within_hours: settings.hours.is_open(now_ms()),
        queue_length,
        returning_customer: previous.is_some(),
    };
    let mut chosen = None;
    for step in settings.routing.plan(&facts) {
        let (rule, pool): (Option<&str>, Vec<Candidate>) = match step {
            aisle_settings::Step::Rule { name, target } => (
                Some(name),
                candidates
                    .iter()
                    .filter(|(_, p)| target.admits(p))
                    .map(|(c, _)| c.clone())
                    .collect(),
            ),
            aisle_settings::Step::Anyone => {
                (None, candidates.iter().map(|(c, _)| c.clone()).collect())
            }
        };
        if let Some(agent) = routing::pick(&pool, preferred) {
            chosen = Some((agent, rule.map(str::to_owned)));
            break;
        }
    }
    let Some((agent, rule)) = chosen else {
        return Ok(false);
    };
    tracing::debug!(conversation = %conversation, agent = %agent, rule = ?rule, "routed");
    apply_event(
        db,
        state,
        conversation,
        EventKind::Assign { agent },
        Actor::System,
        None,
        out,
    )?
    .map_err(rejection_error)?;
    Ok(true)
}

/// Offers queued chats, urgent then oldest first, to whoever has room. A chat the rules keep
/// waiting (for its first message, or for a busy team while others are free) does not hold up
/// the chats behind it; the offer stops when nobody online has room at all.
fn drain_queue(db: &Connection, state: &mut State, out: &mut Outbox) -> Result<(), ApiError> {
    const MAX_PER_BATCH: usize = 256;
    if state.delivery.online_staff().is_empty() {
        return Ok(());
    }
    let waits = state
        .live
        .current()
        .resolved
        .settings
        .routing
        .waits_for_first_message();
    let queued: Vec<String> = db
        .prepare_cached(concat!(
            "SELECT c.id FROM conversations c WHERE c.status IN ('queued', 'reopened')
             AND (?2 = 0 OR c.agent_id IS NOT NULL OR EXISTS (SELECT 1 FROM messages m
                  WHERE m.conversation = c.rowid AND m.sender_kind = 'customer'))
             ORDER BY EXISTS (SELECT 1 FROM messages m WHERE m.conversation = c.rowid
                              AND m.intent IN ",
            crate::urgent_intents_sql!(),
            ") DESC, c.created_at_ms LIMIT ?1"
        ))?
        .query_map(params![MAX_PER_BATCH as i64, waits], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in queued {
        let id: ConversationId = id.parse().map_err(ApiError::internal)?;
        if hot(db, state, id, out)?.is_none() {
            continue;
        }
        if !route(db, state, id, None, out)? && !anyone_has_room(db, state)? {
            break;
        }
    }
    Ok(())
}

/// Whether some online, enabled staff member holds fewer chats than their capacity.
fn anyone_has_room(db: &Connection, state: &State) -> Result<bool, ApiError> {
    for id in state.delivery.online_staff() {
        let room: Option<bool> = db
            .prepare_cached(
                "SELECT s.capacity > (SELECT COUNT(*) FROM conversations c WHERE c.agent_id = s.id
                   AND c.status IN ('assigned', 'transferred', 'reopened'))
                 FROM staff s WHERE s.id = ?1 AND s.disabled = 0",
            )?
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?;
        if room == Some(true) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Emits `Wake` for snoozes that are due.
fn wake_due(conn: &mut Connection, state: &mut State) {
    let due: Result<Vec<String>, rusqlite::Error> = conn
        .prepare_cached(
            "SELECT id FROM conversations WHERE status = 'snoozed' AND snoozed_until_ms <= ?1 LIMIT 256",
        )
        .and_then(|mut s| {
            s.query_map([now_ms() as i64], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    let due = match due {
        Ok(due) => due,
        Err(err) => {
            tracing::error!(error = %err, "looking for due snoozes");
            return;
        }
    };
    let commands: Vec<Command> = due
        .into_iter()
        .filter_map(|id| id.parse().ok())
        .map(|conversation| {
            Command::Action(ActionCmd {
                conversation,
                actor: Actor::System,
                action: Action::Wake,
                reply: None,
            })
        })
        .collect();
    if !commands.is_empty() {
        run_batch(conn, state, commands);
    }
}

pub fn state_view(db: &Connection, s: &aisle_sync::SessionState) -> Result<StateView, ApiError> {
    Ok(StateView {
        status: s.status,
        agent: staff_ref(db, s.agent)?,
        previous_agent: staff_ref(db, s.previous_agent)?,
        snoozed_until_ms: s.snoozed_until_ms,
        version: s.applied,
    })
}

pub fn staff_ref(db: &Connection, id: Option<StaffId>) -> Result<Option<StaffRef>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    let name: Option<String> = db
        .prepare_cached("SELECT name FROM staff WHERE id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))
        .optional()?;
    // A colleague from another store (a conversation continued here or there) has no row
    // here: their name comes from the documents this store received.
    let name = match name {
        Some(name) => Some(name),
        None => db
            .prepare_cached("SELECT name FROM remote_staff WHERE id = ?1")?
            .query_row([id.to_string()], |r| r.get(0))
            .optional()?,
    };
    Ok(Some(StaffRef {
        id,
        name: name.unwrap_or_default(),
    }))
}

fn staff_name(db: &Connection, id: Option<StaffId>) -> Result<String, ApiError> {
    Ok(staff_ref(db, id)?
        .map(|s| s.name)
        .unwrap_or_else(|| "a colleague".into()))
}

fn forbidden_colleague(db: &Connection, agent: Option<StaffId>) -> Result<ApiError, ApiError> {
    Ok(ApiError::new(
        Code::Forbidden,
        format!("this conversation is held by {}", staff_name(db, agent)?),
    ))
}

pub fn participant_columns(p: &Participant) -> (&'static str, Option<String>) {
    match p {
        Participant::Customer(id) => ("customer", Some(id.to_string())),
        Participant::Staff(id) => ("staff", Some(id.to_string())),
        Participant::Bot => ("bot", None),
        Participant::System => ("system", None),
    }
}

fn event_kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Assign { .. } => "assign",
        EventKind::Claim { .. } => "claim",
        EventKind::Transfer { .. } => "transfer",
        EventKind::Release => "release",
        EventKind::Resolve => "resolve",
        EventKind::Reopen => "reopen",
        EventKind::Snooze { .. } => "snooze",
        EventKind::Wake => "wake",
    }
}

fn rejection_error(rejection: aisle_sync::Rejection) -> ApiError {
    match rejection {
        aisle_sync::Rejection::Illegal { from } => ApiError::new(
            Code::IllegalTransition,
            format!("not allowed while the conversation is {}", from.as_str()),
        ),
        aisle_sync::Rejection::Conflict { .. } | aisle_sync::Rejection::Orphaned { .. } => {
            ApiError::new(
                Code::AlreadyClaimed,
                "another action on this conversation came first",
            )
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such conversation")
}
