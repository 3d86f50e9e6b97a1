//! Cross-process tests of the real `aisle-hub` binary over loopback: HTTP enrollment and trust,
//! and a simulated edge (aisle-sync + tokio-tungstenite) syncing a conversation.

use std::time::Duration;

use aisle_sync::protocol::codes;
use aisle_sync::{
    Conversation, ConversationId, Credential, CustomerId, DocumentKey, Frame, Head, Limits,
    MessageId, MessageRecord, Meta, Participant, PeerSync, decode_frame, encode_frame,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::Hub;

const TIMEOUT: Duration = Duration::from_secs(10);

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A simulated edge's sync connection.
struct EdgeLink {
    ws: Socket,
    max: usize,
}

impl EdgeLink {
    async fn connect(hub: &Hub) -> EdgeLink {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/sync", hub.addr))
            .await
            .expect("connect /sync");
        EdgeLink {
            ws,
            max: Limits::default().max_frame_bytes,
        }
    }

    async fn send(&mut self, frame: &Frame) {
        let bytes = encode_frame(frame, self.max).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next frame, or `None` once the hub closed the connection.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("the hub did not answer in time");
            match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    return Some(decode_frame(&bytes, self.max).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn hello(&mut self, store_id: &str, region: &str, credential: &str) -> Frame {
        self.send(&Frame::Hello {
            store_id: store_id.into(),
            region: region.into(),
            credential: Credential(credential.into()),
            edge_version: "0.1.0".into(),
        })
        .await;
        self.recv().await.expect("an answer to hello")
    }
}

/// Connects with a bad hello and checks the refusal code and that the hub then closes.
async fn assert_refused(hub: &Hub, store_id: &str, region: &str, credential: &str, code: &str) {
    let mut link = EdgeLink::connect(hub).await;
    match link.hello(store_id, region, credential).await {
        Frame::Refused { code: got, .. } => assert_eq!(got, code),
        other => panic!("expected refused {code}, got {other:?}"),
    }
    // Anything sent now is ignored; the connection ends.
    let conversation = new_conversation(store_id, 2);
    let _ = link
        .ws
        .send(Message::Binary(
            encode_frame(&conversation.1, link.max).unwrap().into(),
        ))
        .await;
    assert!(
        link.recv().await.is_none(),
        "the hub must close after refused"
    );
}

/// A new conversation of `store_id` with `messages` messages, and the first `sync` frame for it.
fn new_conversation(store_id: &str, messages: usize) -> (Conversation, Frame) {
    let customer = CustomerId::new();
    let mut conversation =
        Conversation::create(&Meta::new(ConversationId::new(), store_id, customer, 1)).unwrap();
    for i in 0..messages {
        conversation
            .add_new_message(&MessageRecord {
                id: MessageId::new(),
                client_msg_id: format!("c{i}"),
                sender: Participant::Customer(customer),
                body: format!("message {i}"),
                sent_at_ms: 10 + i as u64,
                attachment: None,
                intent: None,
            })
            .unwrap();
    }
    let key = DocumentKey::from(conversation.id());
    let mut peer = PeerSync::new(Limits::default());
    let frame = peer.generate(&key, &mut conversation).unwrap();
    (conversation, frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let hub = Hub::start("eu-west").await;
    let (status, body) = hub.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "aisle-hub");
    assert_eq!(body["region"], "eu-west");
    let hub_id = body["hub_id"].as_str().unwrap().to_string();
    assert_eq!(hub_id.len(), 26, "a ULID: {hub_id}");
    let metrics = hub.metrics().await;
    for name in ["aisle_hub_connected_stores", "aisle_hub_documents"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // The hub id survives a restart.
    let mut hub = hub;
    hub.restart().await;
    let (_, body) = hub.call("GET", "/healthz", None, None).await;
    assert_eq!(body["hub_id"], hub_id.as_str());
    // Errors are JSON with a stable code.
    let (status, body) = hub.call("GET", "/api/stores", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = hub
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "admin", "password": "nope"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_single_use() {
    let hub = Hub::start("eu-west").await;
    let admin = hub.login().await;
    let token = hub.register(&admin, "store-1").await;
    let (status, body) = hub.enroll("store-1", "et_wrong").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_enrollment"))
    );
    let (status, body) = hub.enroll("store-9", &token).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = hub.enroll("store-1", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["region"], "eu-west");
    assert_eq!(body["hub_id"].as_str().unwrap().len(), 26);
    assert!(body["credential"].as_str().unwrap().len() >= 43);
    let (status, body) = hub.enroll("store-1", &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("token_used"))
    );
    let (status, body) = hub
        .call(
            "POST",
            "/api/stores",
            Some(&admin),
            Some(json!({"store_id": "store-1", "name": "x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("store_exists"))
    );
    let stores = hub.stores(&admin).await;
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0]["enrolled"], true);
    assert_eq!(stores[0]["online"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_stores_are_refused_and_nothing_is_stored() {
    let hub = Hub::start("eu-west").await;
    let admin = hub.login().await;
    let credential = hub.enrolled_store(&admin, "store-1").await;
    assert_refused(&hub, "store-1", "us-east", &credential, codes::WRONG_REGION).await;
    assert_refused(
        &hub,
        "store-404",
        "eu-west",
        &credential,
        codes::UNKNOWN_STORE,
    )
    .await;
    assert_refused(
        &hub,
        "store-1",
        "eu-west",
        "sc_wrong",
        codes::BAD_CREDENTIAL,
    )
    .await;
    let (status, _) = hub
        .call("POST", "/api/stores/store-1/revoke", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    assert_refused(&hub, "store-1", "eu-west", &credential, codes::REVOKED).await;
    let token = hub.register(&admin, "store-2").await;
    let (status, _) = hub
        .call("POST", "/api/stores/store-2/revoke", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = hub.enroll("store-2", &token).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("revoked"))
    );

    for store in hub.stores(&admin).await {
        assert_eq!(store["online"], false, "{store}");
        assert!(store["last_sync_at_ms"].is_null(), "{store}");
    }
    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "aisle_hub_documents"), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "aisle_hub_document_chunks_stored_total"),
        0.0
    );
}

/// Runs the edge side of a round for `conversation` until it ends (an `ack` from the hub, or the
/// edge's own `ack`); returns the frames exchanged and the heads the hub holds durably.
async fn sync_until_acked(
    link: &mut EdgeLink,
    conversation: &mut Conversation,
) -> (usize, Vec<Head>) {
    let key = DocumentKey::from(conversation.id());
    let mut peer = PeerSync::new(Limits::default());
    peer.want(key.clone());
    let frame = peer.generate(&key, conversation).unwrap();
    link.send(&frame).await;
    let mut rounds = 1;
    loop {
        match link.recv().await.expect("the hub closed mid-round") {
            Frame::Sync { doc, message } => {
                assert_eq!(doc, key);
                peer.receive(&key, conversation, &message).unwrap();
                let answer = peer.answer(&key, conversation);
                link.send(&answer).await;
                rounds += 1;
                if matches!(answer, Frame::Ack { .. }) {
                    // The edge ended the round: the hub's last `sync` named its durable heads.
                    return (rounds, peer.remote_heads(&key).unwrap_or_default().to_vec());
                }
            }
            Frame::Ack { doc, heads } => {
                assert_eq!(doc, key);
                return (rounds, heads);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_syncs_and_a_reconnect_after_restart_needs_no_sync() {
    let mut hub = Hub::start("eu-west").await;
    let admin = hub.login().await;
    let credential = hub.enrolled_store(&admin, "store-1").await;
    let (mut conversation, _) = new_conversation("store-1", 5);
    let key = DocumentKey::from(conversation.id());

    let mut link = EdgeLink::connect(&hub).await;
    match link.hello("store-1", "eu-west", &credential).await {
        Frame::Welcome { region, hub_id, .. } => {
            assert_eq!(region, "eu-west");
            assert_eq!(hub_id.len(), 26);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    match link.recv().await.unwrap() {
        Frame::Manifest { docs, .. } => assert!(docs.is_empty()),
        other => panic!("expected manifest, got {other:?}"),
    }
    link.send(&Frame::Manifest {
        docs: vec![(
            key.clone(),
            aisle_sync::protocol::heads_to_wire(&conversation.heads()),
        )],
        more: false,
    })
    .await;
    let (_, acked) = sync_until_acked(&mut link, &mut conversation).await;
    let ours = aisle_sync::protocol::heads_to_wire(&conversation.heads());
    assert_eq!(acked, ours, "the ack names the edge's heads");
    let stores = hub.stores(&admin).await;
    assert_eq!(stores[0]["online"], true);
    assert!(stores[0]["last_sync_at_ms"].as_u64().is_some());
    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "aisle_hub_documents"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "aisle_hub_connected_stores"), 1.0);

    // A conversation opened at another store is refused for that document only.
    let (mut foreign, _) = new_conversation("store-2", 1);
    let foreign_key = DocumentKey::from(foreign.id());
    let mut peer = PeerSync::new(Limits::default());
    link.send(&peer.generate(&foreign_key, &mut foreign).unwrap())
        .await;
    loop {
        match link.recv().await.unwrap() {
            Frame::Sync { message, .. } => {
                peer.receive(&foreign_key, &mut foreign, &message).unwrap();
                link.send(&peer.answer(&foreign_key, &mut foreign)).await;
            }
            Frame::Error {
                code, doc: Some(_), ..
            } => {
                assert_eq!(code, codes::NOT_ALLOWED);
                break;
            }
            other => panic!("expected not_allowed, got {other:?}"),
        }
    }
    link.send(&Frame::Ping).await;
    assert_eq!(link.recv().await, Some(Frame::Pong));
    drop(link);

    // Restart the hub: the document is on disk; a reconnect with nothing new needs no sync.
    hub.restart().await;
    let mut link = EdgeLink::connect(&hub).await;
    assert!(matches!(
        link.hello("store-1", "eu-west", &credential).await,
        Frame::Welcome { .. }
    ));
    let docs = match link.recv().await.unwrap() {
        Frame::Manifest { docs, .. } => docs,
        other => panic!("expected manifest, got {other:?}"),
    };
    assert_eq!(docs, vec![(key.clone(), ours.clone())], "manifests equal");
    let diff = PeerSync::new(Limits::default()).on_manifest(&[(key.clone(), ours.clone())], &docs);
    assert!(diff.is_empty());
    link.send(&Frame::Manifest {
        docs: vec![(key.clone(), ours)],
        more: false,
    })
    .await;
    link.send(&Frame::Ping).await;
    assert_eq!(link.recv().await, Some(Frame::Pong), "nothing but the pong");
    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "aisle_hub_documents"), 1.0, "{metrics}");

    // A new message after the restart syncs incrementally from the persisted state.
    conversation
        .add_new_message(&MessageRecord {
            id: MessageId::new(),
            client_msg_id: "late".into(),
            sender: Participant::Bot,
            body: "after the restart".into(),
            sent_at_ms: 99,
            attachment: None,
            intent: None,
        })
        .unwrap();
    let (_, acked) = sync_until_acked(&mut link, &mut conversation).await;
    assert_eq!(
        acked,
        aisle_sync::protocol::heads_to_wire(&conversation.heads())
    );

    // A second connection replaces the first.
    let mut second = EdgeLink::connect(&hub).await;
    assert!(matches!(
        second.hello("store-1", "eu-west", &credential).await,
        Frame::Welcome { .. }
    ));
    assert!(
        link.recv().await.is_none(),
        "the older connection is closed"
    );
}
