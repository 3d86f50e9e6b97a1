//! One WebSocket connection: a customer's phone or a staff member's tablet.
//!
//! The task reads frames, checks them against the limits, turns them into writer commands
//! and writes back what concerns this client: answers to its own requests (acks, results)
//! and frames fanned out to it (`delivery.rs`). It never waits for the writer inline: each
//! request's answer is a future in `pending`, so a client can keep several sends in flight
//! (up to `max_inflight_sends`, then reading pauses: TCP back-pressure).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aisle_sync::{ConversationId, CustomerId, Participant};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::{FuturesUnordered, SplitSink, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::delivery::{ConnId, Outbound, Targets, Who};
use crate::error::{ApiError, Code};
use crate::frame::{self, ClientFrame, Echo, Role, ServerFrame, StaffView};
use crate::limits::RateLimiter;
use crate::metrics::METRICS;
use crate::store::queries::{self, Filter};
use crate::store::writer::{Action, ActionCmd, Actor, Command, ReadCmd, SendCmd, StartCmd};
use crate::{App, auth, now_ms};

/// WebSocket close codes used (RFC 6455 §7.4).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_RESTART: u16 = 1012;

/// Most conversation ids a customer connection remembers as its own.
const OWNED_CACHE_ITEMS: usize = 256;

/// Frames queued for this client in answer to its own requests.
type Pending = FuturesUnordered<Pin<Box<dyn Future<Output = Vec<Utf8Bytes>> + Send>>>;
type Sink = SplitSink<WebSocket, Message>;

enum Session {
    Customer(CustomerId),
    Staff {
        staff: StaffView,
        admin: bool,
        expires_at_ms: u64,
        /// The session's token hash: the session is looked up again at each heartbeat, so a
        /// logout (or a disabled account) ends open connections too, not only new requests.
        token_hash: Vec<u8>,
    },
}

impl Session {
    fn actor(&self) -> Actor {
        match self {
            Session::Customer(id) => Actor::Customer(*id),
            Session::Staff { staff, admin, .. } => Actor::Staff {
                id: staff.id,
                admin: *admin,
            },
        }
    }

    fn role(&self) -> &'static str {
        match self {
            Session::Customer(_) => "customer",
            Session::Staff { .. } => "staff",
        }
    }
}

struct Ctx {
    app: Arc<App>,
    session: Option<Session>,
    conn_id: Option<ConnId>,
    /// Handed to the delivery registry at `hello`; until then it keeps the queue open.
    outbound_tx: Option<mpsc::Sender<Outbound>>,
    /// Highest seq already sent per conversation (after a `resume`): later live copies of
    /// replayed messages are skipped.
    seen: HashMap<ConversationId, u64>,
    /// Conversations this customer is known to own (bounded by `OWNED_CACHE_ITEMS`).
    owned: HashSet<ConversationId>,
    limiter: RateLimiter,
    /// The client's address (throttle.rs): its frames count against the per-IP limit too.
    ip: std::net::IpAddr,
    last_inbound: Instant,
    /// The customer's name from `hello`, used when `start` gives none.
    display_name: String,
}

enum Flow {
    Continue,
    Close,
}

pub async fn serve(
    app: Arc<App>,
    socket: WebSocket,
    permit: OwnedSemaphorePermit,
    ip: std::net::IpAddr,
) {
    let limits = app.config.limits.clone();
    let (outbound_tx, mut outbound) = mpsc::channel::<Outbound>(limits.max_outbound_frames);
    let mut shutdown = app.shutdown.subscribe();
    let (mut sink, mut stream) = socket.split();
    let mut pending: Pending = FuturesUnordered::new();
    let mut ctx = Ctx {
        limiter: RateLimiter::new(limits.max_frames_per_sec, limits.max_frames_burst),
        ip,
        app: Arc::clone(&app),
        session: None,
        conn_id: None,
        outbound_tx: Some(outbound_tx),
        seen: HashMap::new(),
        owned: HashSet::new(),
        display_name: String::new(),
        last_inbound: Instant::now(),
    };
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(limits.heartbeat_interval_secs));
    heartbeat.tick().await;
    let hello_deadline = tokio::time::sleep(Duration::from_millis(limits.hello_timeout_ms));
    tokio::pin!(hello_deadline);
    METRICS
        .connections
        .with_label_values(&["unauthenticated"])
        .inc();

    loop {
        // Unbiased on purpose: a busy outbound queue must not starve reading (or the reverse).
        tokio::select! {
            _ = shutdown.recv() => {
                // Answer what was already handed to the writer (it keeps committing until the
                // last connection is gone), then say goodbye.
                let grace = Duration::from_millis(limits.shutdown_grace_ms);
                let _ = tokio::time::timeout(grace, async {
                    while let Some(frames) = pending.next().await {
                        if write_all(&mut sink, frames, write_timeout).await.is_err() {
                            break;
                        }
                    }
                })
                .await;
                let bye = ServerFrame::Bye {
                    code: Code::ShuttingDown.as_str(),
                    message: "the appliance is restarting; reconnect and resume",
                }
                .to_text();
                let _ = write_all(&mut sink, vec![bye.into()], write_timeout).await;
                close(&mut sink, CLOSE_RESTART, "shutting down", write_timeout).await;
                break;
            }
            out = outbound.recv() => {
                let Some(out) = out else {
                    // The registry dropped us: our queue filled because we did not read.
                    METRICS.error(Code::SlowConsumer);
                    let text = frame::error_text(
                        &ApiError::new(Code::SlowConsumer, "you stopped reading; reconnect and resume"),
                        &Echo::default(),
                    );
                    let _ = write_all(&mut sink, vec![text.into()], write_timeout).await;
                    close(&mut sink, CLOSE_POLICY, "slow consumer", write_timeout).await;
                    break;
                };
                let mut frames = Vec::with_capacity(8);
                let mut close_after = out.close_after;
                push_outbound(&mut ctx, &mut frames, out);
                while frames.len() < 64 && !close_after {
                    match outbound.try_recv() {
                        Ok(out) => {
                            close_after = out.close_after;
                            push_outbound(&mut ctx, &mut frames, out);
                        }
                        Err(_) => break,
                    }
                }
                if write_all(&mut sink, frames, write_timeout).await.is_err() {
                    break;
                }
                if close_after {
                    close(&mut sink, CLOSE_POLICY, "session ended", write_timeout).await;
                    break;
                }
            }
            Some(frames) = pending.next(), if !pending.is_empty() => {
                if write_all(&mut sink, frames, write_timeout).await.is_err() {
                    break;
                }
            }
            message = stream.next(), if pending.len() < limits.max_inflight_sends => {
                let Some(message) = message else { break };
                ctx.last_inbound = Instant::now();
                let flow = match message {
                    Ok(Message::Text(text)) => {
                        handle_text(&mut ctx, &mut sink, &mut pending, text.as_str(), write_timeout).await
                    }
                    Ok(Message::Binary(_)) => {
                        let err = ApiError::new(Code::UnsupportedFrame, "frames are JSON text");
                        reply_error(&mut sink, &err, &Echo::default(), write_timeout).await
                    }
                    Ok(Message::Close(_)) => Flow::Close,
                    Ok(Message::Ping(_) | Message::Pong(_)) => Flow::Continue,
                    Err(err) => {
                        let text = err.to_string();
                        if text.contains("too long") || text.contains("Space limit") {
                            METRICS.limit("max_frame_bytes");
                            let err = ApiError::new(
                                Code::FrameTooLarge,
                                format!("frame refused by the socket layer ({text})"),
                            );
                            let _ = reply_error(&mut sink, &err, &Echo::default(), write_timeout).await;
                            close(&mut sink, CLOSE_TOO_BIG, "frame too large", write_timeout).await;
                        }
                        Flow::Close
                    }
                };
                if matches!(flow, Flow::Close) {
                    break;
                }
            }
            _ = heartbeat.tick() => {
                if let Some(Session::Staff { expires_at_ms, .. }) = &ctx.session
                    && now_ms() >= *expires_at_ms
                {
                    // The session ends for open tablets too, not only for new requests.
                    let err = ApiError::new(Code::TokenExpired, "session expired; log in again");
                    let _ = reply_error(&mut sink, &err, &Echo::default(), write_timeout).await;
                    close(&mut sink, CLOSE_POLICY, "session expired", write_timeout).await;
                    break;
                }
                if let Some(Session::Staff { token_hash, .. }) = &ctx.session {
                    let hash = token_hash.clone();
                    let live = app
                        .reader
                        .read(move |conn| queries::staff_by_session(conn, &hash, now_ms()))
                        .await;
                    if let Err(err) = live
                        && matches!(err.code, Code::Unauthorized | Code::TokenExpired)
                    {
                        // Logged out or disabled since `hello`: the tablet hears nothing more.
                        let _ = reply_error(&mut sink, &err, &Echo::default(), write_timeout).await;
                        close(&mut sink, CLOSE_POLICY, "session ended", write_timeout).await;
                        break;
                    }
                }
                if ctx.last_inbound.elapsed() > Duration::from_secs(limits.idle_timeout_secs) {
                    METRICS.limit("idle_timeout_secs");
                    close(&mut sink, CLOSE_NORMAL, "idle timeout", write_timeout).await;
                    break;
                }
                if tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await.map_or(true, |r| r.is_err()) {
                    break;
                }
            }
            _ = &mut hello_deadline, if ctx.session.is_none() => {
                METRICS.limit("hello_timeout_ms");
                let err = ApiError::new(Code::HelloRequired, "no hello within hello_timeout_ms");
                let _ = reply_error(&mut sink, &err, &Echo::default(), write_timeout).await;
                close(&mut sink, CLOSE_POLICY, "hello timeout", write_timeout).await;
                break;
            }
        }
    }

    if let Some(id) = ctx.conn_id {
        app.delivery.unregister(id);
    }
    let role = ctx
        .session
        .as_ref()
        .map_or("unauthenticated", Session::role);
    METRICS.connections.with_label_values(&[role]).dec();
    drop(permit);
}

fn push_outbound(ctx: &mut Ctx, frames: &mut Vec<Utf8Bytes>, out: Outbound) {
    if out.seq > 0
        && let Some(conversation) = out.conversation
        && let Some(seen) = ctx.seen.get_mut(&conversation)
    {
        if out.seq <= *seen {
            return;
        }
        *seen = out.seq;
    }
    frames.push(out.text);
}

async fn write_all(sink: &mut Sink, frames: Vec<Utf8Bytes>, timeout: Duration) -> Result<(), ()> {
    let write = async {
        for text in frames {
            sink.feed(Message::Text(text)).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            METRICS.limit("write_timeout_ms");
            Err(())
        }
    }
}

async fn close(sink: &mut Sink, code: u16, reason: &'static str, timeout: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await;
}

async fn reply_error(sink: &mut Sink, err: &ApiError, echo: &Echo, timeout: Duration) -> Flow {
    let text = frame::error_text(err, echo);
    match write_all(sink, vec![text.into()], timeout).await {
        Ok(()) => Flow::Continue,
        Err(()) => Flow::Close,
    }
}

fn error_frames(err: &ApiError, echo: Echo) -> Vec<Utf8Bytes> {
    vec![frame::error_text(err, &echo).into()]
}

fn echo_conversation(conversation: ConversationId, request_id: Option<String>) -> Echo {
    Echo {
        request_id,
        conversation_id: Some(conversation.to_string()),
        client_msg_id: None,
    }
}

async fn handle_text(
    ctx: &mut Ctx,
    sink: &mut Sink,
    pending: &mut Pending,
    text: &str,
    timeout: Duration,
) -> Flow {
    let limits = &ctx.app.config.limits;
    if text.len() > limits.max_frame_bytes {
        METRICS.limit("max_frame_bytes");
        let err = ApiError::new(
            Code::FrameTooLarge,
            format!(
                "frame is {} bytes; the limit is max_frame_bytes = {}",
                text.len(),
                limits.max_frame_bytes
            ),
        );
        return reply_error(sink, &err, &Echo::default(), timeout).await;
    }
    if !ctx.limiter.allow() {
        METRICS.limit("max_frames_per_sec");
        let err = ApiError::new(
            Code::RateLimited,
            format!(
                "more than max_frames_per_sec = {} frames per second; frame dropped",
                limits.max_frames_per_sec
            ),
        );
        return reply_error(sink, &err, &Echo::default(), timeout).await;
    }
    if let Err(err) = ctx.app.throttles.frame(ctx.ip) {
        return reply_error(sink, &err, &Echo::default(), timeout).await;
    }
    let frame = match frame::parse(text) {
        Ok(frame) => frame,
        Err((err, echo)) => return reply_error(sink, &err, &echo, timeout).await,
    };
    let Some(session) = &ctx.session else {
        return match frame {
            ClientFrame::Hello {
                role,
                token,
                resume_token,
                display_name,
            } => hello(ctx, sink, role, token, resume_token, display_name, timeout).await,
            other => {
                let err = ApiError::new(Code::HelloRequired, "send hello first");
                reply_error(sink, &err, &frame::echo_of(&other), timeout).await
            }
        };
    };
    let actor = session.actor();
    let is_customer = matches!(session, Session::Customer(_));
    let conn_id = ctx.conn_id;
    let app = Arc::clone(&ctx.app);

    match frame {
        ClientFrame::Hello { .. } => {
            let err = ApiError::new(Code::AlreadyHello, "this connection already said hello");
            reply_error(sink, &err, &Echo::default(), timeout).await
        }
        ClientFrame::Ping => {
            write_flow(sink, vec![ServerFrame::Pong.to_text().into()], timeout).await
        }
        ClientFrame::Start {
            request_id,
            display_name,
        } => {
            let Actor::Customer(customer) = actor else {
                let err = ApiError::new(Code::Forbidden, "only customers start conversations");
                let echo = Echo {
                    request_id,
                    ..Echo::default()
                };
                return reply_error(sink, &err, &echo, timeout).await;
            };
            let (reply, answer) = oneshot::channel();
            let command = Command::Start(StartCmd {
                customer,
                display_name: display_name.unwrap_or_else(|| ctx.display_name.clone()),
                origin: conn_id,
                reply,
            });
            submit_then(
                ctx,
                sink,
                pending,
                command,
                answer,
                timeout,
                move |result| {
                    let echo = Echo {
                        request_id: request_id.clone(),
                        ..Echo::default()
                    };
                    match result {
                        Ok(started) => {
                            let started_text = ServerFrame::Started {
                                request_id: request_id.as_deref(),
                                conversation_id: started.conversation_id,
                                created: started.created,
                                last_seq: started.last_seq,
                            }
                            .to_text();
                            let state_text = ServerFrame::State {
                                conversation_id: started.conversation_id,
                                state: &started.state,
                                event: None,
                            }
                            .to_text();
                            vec![started_text.into(), state_text.into()]
                        }
                        Err(err) => error_frames(&err, echo),
                    }
                },
            )
            .await
        }
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
            attachment_id,
        } => {
            let echo = Echo {
                request_id: None,
                conversation_id: Some(conversation_id.to_string()),
                client_msg_id: Some(client_msg_id.clone()),
            };
            if let Err(err) = check_send(&app, &client_msg_id, &body, attachment_id.is_some()) {
                return reply_error(sink, &err, &echo, timeout).await;
            }
            // Read before the writer takes it, off the writer's thread and off this runtime
            // (the model runs on its own threads); bounded by classify_timeout_ms.
            let intent = match actor {
                Actor::Customer(_) => crate::intent::read(&app, &body).await,
                _ => None,
            };
            let (reply, answer) = oneshot::channel();
            let command = Command::Send(SendCmd {
                conversation: conversation_id,
                actor,
                client_msg_id,
                body,
                attachment: attachment_id,
                intent,
                origin: conn_id,
                reply,
            });
            submit_then(
                ctx,
                sink,
                pending,
                command,
                answer,
                timeout,
                move |result| match result {
                    Ok(ack) => vec![ServerFrame::Ack(&ack).to_text().into()],
                    Err(err) => error_frames(&err, echo),
                },
            )
            .await
        }
        ClientFrame::Typing {
            conversation_id,
            active,
        } => {
            let Some(conn_id) = conn_id else {
                return Flow::Continue;
            };
            if is_customer && !app.delivery.is_watching(conn_id, conversation_id) {
                let err = ApiError::new(Code::NotFound, "start or resume the conversation first");
                return reply_error(
                    sink,
                    &err,
                    &echo_conversation(conversation_id, None),
                    timeout,
                )
                .await;
            }
            let from: Participant = match actor {
                Actor::Customer(id) => Participant::Customer(id),
                Actor::Staff { id, .. } => Participant::Staff(id),
                Actor::System => Participant::System,
            };
            let text = ServerFrame::Typing {
                conversation_id,
                active,
                from: &from,
            }
            .to_text();
            app.delivery.publish(
                conversation_id,
                &Outbound::new(Some(conversation_id), 0, text),
                &Targets {
                    except: Some(conn_id),
                    ..Targets::default()
                },
            );
            Flow::Continue
        }
        ClientFrame::Read {
            conversation_id,
            seq,
        } => {
            let command = Command::Read(ReadCmd {
                conversation: conversation_id,
                actor,
                seq,
                origin: conn_id,
            });
            if let Err(err) = app.writer.submit(command) {
                return reply_error(
                    sink,
                    &err,
                    &echo_conversation(conversation_id, None),
                    timeout,
                )
                .await;
            }
            Flow::Continue
        }
        ClientFrame::Resume {
            conversation_id,
            after_seq,
        } => resume(ctx, sink, actor, conversation_id, after_seq, timeout).await,
        ClientFrame::Claim {
            conversation_id,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Claim,
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Transfer {
            conversation_id,
            to,
            note,
            request_id,
        } => {
            if note
                .as_ref()
                .is_some_and(|n| n.chars().count() > limits.max_message_chars)
            {
                METRICS.limit("max_message_chars");
                let err = ApiError::new(Code::MessageTooLong, "transfer note is too long");
                return reply_error(
                    sink,
                    &err,
                    &echo_conversation(conversation_id, request_id),
                    timeout,
                )
                .await;
            }
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Transfer { to, note },
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Release {
            conversation_id,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Release,
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Resolve {
            conversation_id,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Resolve,
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Reopen {
            conversation_id,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Reopen,
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Snooze {
            conversation_id,
            until_ms,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Snooze { until_ms },
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Wake {
            conversation_id,
            request_id,
        } => {
            act(
                ctx,
                sink,
                pending,
                conversation_id,
                Action::Wake,
                request_id,
                timeout,
            )
            .await
        }
        ClientFrame::Handoff { conversation_id } => {
            let Actor::Customer(customer) = actor else {
                let err = ApiError::new(Code::Forbidden, "hand-off codes are for customers");
                return reply_error(
                    sink,
                    &err,
                    &echo_conversation(conversation_id, None),
                    timeout,
                )
                .await;
            };
            pending.push(Box::pin(async move {
                match create_handoff(&app, customer, conversation_id).await {
                    Ok((code, expires_at_ms)) => {
                        let url = format!("/h/{code}");
                        vec![
                            ServerFrame::Handoff {
                                conversation_id,
                                code: &code,
                                url: &url,
                                expires_at_ms,
                            }
                            .to_text()
                            .into(),
                        ]
                    }
                    Err(err) => error_frames(&err, echo_conversation(conversation_id, None)),
                }
            }));
            Flow::Continue
        }
    }
}

async fn write_flow(sink: &mut Sink, frames: Vec<Utf8Bytes>, timeout: Duration) -> Flow {
    match write_all(sink, frames, timeout).await {
        Ok(()) => Flow::Continue,
        Err(()) => Flow::Close,
    }
}

fn check_send(
    app: &App,
    client_msg_id: &str,
    body: &str,
    has_attachment: bool,
) -> Result<(), ApiError> {
    let limits = &app.config.limits;
    if client_msg_id.is_empty() || client_msg_id.len() > limits.max_client_msg_id_bytes {
        METRICS.limit("max_client_msg_id_bytes");
        return Err(ApiError::new(
            Code::BadFrame,
            format!(
                "client_msg_id must be 1 to max_client_msg_id_bytes = {} bytes",
                limits.max_client_msg_id_bytes
            ),
        ));
    }
    if body.trim().is_empty() && !has_attachment {
        return Err(ApiError::new(Code::MessageTooLong, "the message is empty"));
    }
    let chars = body.chars().count();
    if chars > limits.max_message_chars {
        METRICS.limit("max_message_chars");
        return Err(ApiError::new(
            Code::MessageTooLong,
            format!(
                "body is {chars} characters; the limit is max_message_chars = {}",
                limits.max_message_chars
            ),
        ));
    }
    Ok(())
}

/// Hands a command to the writer and queues `render(answer)` as this client's reply.
async fn submit_then<T, F>(
    ctx: &Ctx,
    sink: &mut Sink,
    pending: &mut Pending,
    command: Command,
    answer: oneshot::Receiver<Result<T, ApiError>>,
    timeout: Duration,
    render: F,
) -> Flow
where
    T: Send + 'static,
    F: FnOnce(Result<T, ApiError>) -> Vec<Utf8Bytes> + Send + 'static,
{
    if let Err(err) = ctx.app.writer.submit(command) {
        // `render` knows the ids to echo; the answer never comes, so render the refusal.
        let frames = render(Err(err));
        return write_flow(sink, frames, timeout).await;
    }
    pending.push(Box::pin(async move {
        let result = answer.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                Code::ShuttingDown,
                "the appliance is stopping",
            ))
        });
        render(result)
    }));
    Flow::Continue
}

#[allow(clippy::too_many_arguments)]
async fn act(
    ctx: &Ctx,
    sink: &mut Sink,
    pending: &mut Pending,
    conversation: ConversationId,
    action: Action,
    request_id: Option<String>,
    timeout: Duration,
) -> Flow {
    let echo = echo_conversation(conversation, request_id.clone());
    let actor = ctx.session.as_ref().map(Session::actor);
    let Some(actor @ Actor::Staff { .. }) = actor else {
        let err = ApiError::new(Code::Forbidden, "only staff change a conversation's state");
        return reply_error(sink, &err, &echo, timeout).await;
    };
    let (reply, answer) = oneshot::channel();
    let command = Command::Action(ActionCmd {
        conversation,
        actor,
        action,
        reply: Some(reply),
    });
    submit_then(
        ctx,
        sink,
        pending,
        command,
        answer,
        timeout,
        move |result| match result {
            Ok(_) => vec![
                ServerFrame::Ok {
                    request_id: request_id.as_deref(),
                }
                .to_text()
                .into(),
            ],
            Err(err) => error_frames(&err, echo),
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn hello(
    ctx: &mut Ctx,
    sink: &mut Sink,
    role: Role,
    token: Option<String>,
    resume_token: Option<String>,
    display_name: Option<String>,
    timeout: Duration,
) -> Flow {
    let app = Arc::clone(&ctx.app);
    let limit = app.config.limits.max_page_items;
    let result: Result<Vec<Utf8Bytes>, ApiError> = async {
        match role {
            Role::Customer => {
                let now = now_ms();
                let customer = match resume_token {
                    Some(token) => app.tokens.verify(&token, now / 1000)?,
                    None => CustomerId::new(),
                };
                ctx.display_name = display_name.unwrap_or_default();
                let token = app
                    .tokens
                    .sign(customer, now / 1000 + app.config.resume_token_ttl_secs);
                let tx = ctx.outbound_tx.take().expect("hello happens once");
                let (conn_id, _) = app.delivery.register(Who::Customer(customer), tx);
                ctx.conn_id = Some(conn_id);
                ctx.session = Some(Session::Customer(customer));
                let conversations = app
                    .reader
                    .read(move |conn| {
                        queries::conversations(
                            conn,
                            &Filter {
                                customer: Some(customer),
                                limit,
                                ..Filter::default()
                            },
                        )
                    })
                    .await?;
                ctx.owned
                    .extend(conversations.iter().map(|c| c.id).take(OWNED_CACHE_ITEMS));
                Ok(vec![
                    ServerFrame::Welcome {
                        role,
                        customer_id: Some(customer),
                        resume_token: Some(&token),
                        staff: None,
                        conversations: &conversations,
                    }
                    .to_text()
                    .into(),
                ])
            }
            Role::Staff => {
                let token = token.ok_or_else(|| {
                    ApiError::new(Code::Unauthorized, "staff hello needs the session token")
                })?;
                let token_hash = auth::token_hash(&token);
                let hash = token_hash.clone();
                let session = app
                    .reader
                    .read(move |conn| queries::staff_by_session(conn, &hash, now_ms()))
                    .await?;
                let staff = session.staff.clone();
                let admin = session.is_admin();
                let tx = ctx.outbound_tx.take().expect("hello happens once");
                let (conn_id, came_online) = app.delivery.register(Who::Staff(staff.id), tx);
                ctx.conn_id = Some(conn_id);
                ctx.session = Some(Session::Staff {
                    staff: staff.clone(),
                    admin,
                    expires_at_ms: session.expires_at_ms,
                    token_hash,
                });
                if came_online && let Err(err) = app.writer.submit(Command::StaffOnline) {
                    tracing::warn!(code = err.code.as_str(), "could not offer queued chats");
                }
                let staff_id = staff.id;
                let conversations = app
                    .reader
                    .read(move |conn| queries::staff_inbox(conn, staff_id, limit))
                    .await?;
                Ok(vec![
                    ServerFrame::Welcome {
                        role,
                        customer_id: None,
                        resume_token: None,
                        staff: Some(&staff),
                        conversations: &conversations,
                    }
                    .to_text()
                    .into(),
                ])
            }
        }
    }
    .await;
    match result {
        Ok(frames) => {
            let role = ctx
                .session
                .as_ref()
                .map_or("unauthenticated", Session::role);
            METRICS
                .connections
                .with_label_values(&["unauthenticated"])
                .dec();
            METRICS.connections.with_label_values(&[role]).inc();
            METRICS.connections_total.with_label_values(&[role]).inc();
            write_flow(sink, frames, timeout).await
        }
        Err(err) => reply_error(sink, &err, &Echo::default(), timeout).await,
    }
}

/// Subscribes, then replays what the client missed. Subscribing first means nothing
/// committed in between is lost; `seen` drops the live copies of what the replay covered.
async fn resume(
    ctx: &mut Ctx,
    sink: &mut Sink,
    actor: Actor,
    conversation: ConversationId,
    after_seq: u64,
    timeout: Duration,
) -> Flow {
    let app = Arc::clone(&ctx.app);
    let echo = echo_conversation(conversation, None);
    // A customer's own conversations are known from `welcome` (or an earlier resume), which
    // saves a database round trip on the device-switch path.
    let allowed = if ctx.owned.contains(&conversation) {
        true
    } else {
        let owner = app
            .reader
            .read(move |conn| queries::conversation_customer(conn, conversation))
            .await;
        match (&owner, actor) {
            (Ok(Some(owner)), Actor::Customer(customer)) => *owner == customer,
            (Ok(Some(_)), _) => true,
            (Ok(None), _) => false,
            (Err(err), _) => return reply_error(sink, err, &echo, timeout).await,
        }
    };
    if allowed && matches!(actor, Actor::Customer(_)) && ctx.owned.len() < OWNED_CACHE_ITEMS {
        ctx.owned.insert(conversation);
    }
    if !allowed {
        let err = ApiError::new(Code::NotFound, "no such conversation");
        return reply_error(sink, &err, &echo, timeout).await;
    }
    let Some(conn_id) = ctx.conn_id else {
        return Flow::Continue;
    };
    app.delivery.watch(conn_id, conversation);
    let limit = app.config.limits.max_history_frames;
    let replay = app
        .reader
        .read(move |conn| {
            let history = queries::history(conn, conversation, after_seq, limit)?;
            let state = queries::state(conn, conversation)?;
            Ok(history.zip(state))
        })
        .await;
    let (history, state) = match replay {
        Ok(Some(found)) => found,
        Ok(None) => {
            let err = ApiError::new(Code::NotFound, "no such conversation");
            return reply_error(sink, &err, &echo, timeout).await;
        }
        Err(err) => return reply_error(sink, &err, &echo, timeout).await,
    };
    let mut frames: Vec<Utf8Bytes> = Vec::with_capacity(history.messages.len() + 2);
    for message in &history.messages {
        frames.push(
            ServerFrame::Message {
                conversation_id: conversation,
                message,
            }
            .to_text()
            .into(),
        );
    }
    let seen = ctx.seen.entry(conversation).or_insert(0);
    *seen = (*seen).max(history.last_seq);
    for (by, seq) in &history.reads {
        frames.push(
            ServerFrame::Read {
                conversation_id: conversation,
                seq: *seq,
                by,
            }
            .to_text()
            .into(),
        );
    }
    frames.push(
        ServerFrame::State {
            conversation_id: conversation,
            state: &state,
            event: None,
        }
        .to_text()
        .into(),
    );
    frames.push(
        ServerFrame::Resumed {
            conversation_id: conversation,
            last_seq: history.last_seq,
            more: history.more,
        }
        .to_text()
        .into(),
    );
    write_flow(sink, frames, timeout).await
}

/// Creates a single-use hand-off code for the customer's own conversation.
pub async fn create_handoff(
    app: &Arc<App>,
    customer: CustomerId,
    conversation: ConversationId,
) -> Result<(String, u64), ApiError> {
    let owner = app
        .reader
        .read(move |conn| queries::conversation_customer(conn, conversation))
        .await?;
    if owner != Some(customer) {
        return Err(ApiError::new(Code::NotFound, "no such conversation"));
    }
    let code = auth::handoff_code();
    let expires_at_ms = now_ms() + app.config.handoff_ttl_secs * 1000;
    let stored = code.clone();
    app.writer
        .exec(move |conn| {
            conn.execute(
                "INSERT INTO handoffs (code, customer_id, conversation_id, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    stored,
                    customer.to_string(),
                    conversation.to_string(),
                    expires_at_ms as i64
                ],
            )?;
            Ok(())
        })
        .await?;
    crate::uplink::register_handoff(app, &code, conversation, expires_at_ms).await;
    Ok((code, expires_at_ms))
}
