//! The HQ API over a real `aisle-hub` process: two simulated stores sync conversations (Chinese
//! and English messages, staff replies, claims and a resolve) with the real protocol and
//! aisle-sync documents; then HQ lists, reads, searches and counts them over HTTP.

use std::time::Duration;

use aisle_sync::{
    Conversation, ConversationId, Credential, CustomerId, DocumentKey, Event, EventId, EventKind,
    Frame, Hlc, Limits, MessageId, MessageRecord, Meta, Participant, ParticipantRecord, PeerSync,
    StaffId, decode_frame, encode_frame,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{ADMIN_PASSWORD, Hub};
const VIEWER_PASSWORD: &str = "viewer-password";
const TIMEOUT: Duration = Duration::from_secs(10);
const HOUR: u64 = 3_600_000;
/// The start of an hour (2023-11-14 22:00 UTC): every test timestamp is relative to it.
const T: u64 = 472_222 * HOUR;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A simulated store: its sync connection and its side of the protocol.
struct Store {
    ws: Socket,
    peer: PeerSync,
    max: usize,
}

impl Store {
    async fn connect(hub: &Hub, store_id: &str, credential: &str) -> Store {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/sync", hub.addr))
            .await
            .expect("connect /sync");
        let mut store = Store {
            ws,
            peer: PeerSync::new(Limits::default()),
            max: Limits::default().max_frame_bytes,
        };
        store
            .send(&Frame::Hello {
                store_id: store_id.into(),
                region: "cn-east".into(),
                credential: Credential(credential.into()),
                edge_version: "0.1.0".into(),
            })
            .await;
        assert!(matches!(store.recv().await, Frame::Welcome { .. }));
        assert!(matches!(store.recv().await, Frame::Manifest { .. }));
        store
            .send(&Frame::Manifest {
                docs: vec![],
                more: false,
            })
            .await;
        store
    }

    async fn send(&mut self, frame: &Frame) {
        let bytes = encode_frame(frame, self.max).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("the hub did not answer in time");
            match msg {
                Some(Ok(Message::Binary(bytes))) => return decode_frame(&bytes, self.max).unwrap(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => panic!("the hub closed"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Runs a round for `conversation` until it ends: the hub then holds it durably.
    async fn sync(&mut self, conversation: &mut Conversation) {
        let key = DocumentKey::from(conversation.id());
        self.peer.want(key.clone());
        let frame = self
            .peer
            .generate(&key, conversation)
            .unwrap_or_else(|| panic!("a sync frame for {key}"));
        self.send(&frame).await;
        loop {
            match self.recv().await {
                Frame::Sync { doc, message } => {
                    assert_eq!(doc, key);
                    self.peer.receive(&key, conversation, &message).unwrap();
                    let answer = self.peer.answer(&key, conversation);
                    self.send(&answer).await;
                    if matches!(answer, Frame::Ack { .. }) {
                        return;
                    }
                }
                Frame::Ack { doc, .. } => {
                    assert_eq!(doc, key);
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Builds conversations the way an edge writes them.
struct Chat {
    doc: Conversation,
    customer: CustomerId,
    head: Option<EventId>,
}

impl Chat {
    fn open(store_id: &str, created_at_ms: u64) -> Chat {
        let customer = CustomerId::new();
        let meta = Meta::new(ConversationId::new(), store_id, customer, created_at_ms);
        Chat {
            doc: Conversation::create(&meta).unwrap(),
            customer,
            head: None,
        }
    }

    fn id(&self) -> String {
        self.doc.id().to_string()
    }

    fn say(&mut self, sender: Participant, body: &str, at: u64) {
        self.doc
            .add_message(&MessageRecord {
                id: MessageId::new(),
                client_msg_id: format!("c{at}"),
                sender,
                body: body.into(),
                sent_at_ms: at,
                attachment: None,
                intent: None,
            })
            .unwrap();
    }

    fn customer_says(&mut self, body: &str, at: u64) {
        self.say(Participant::Customer(self.customer), body, at);
    }

    fn staff_joins(&mut self, staff: StaffId, name: &str, at: u64) {
        self.doc
            .put_participant(&ParticipantRecord {
                participant: Participant::Staff(staff),
                display_name: name.into(),
                joined_at_ms: at,
            })
            .unwrap();
    }

    fn event(&mut self, kind: EventKind, actor: StaffId, at: u64) {
        let event = Event {
            id: EventId::new(),
            kind,
            actor: Participant::Staff(actor),
            hlc: Hlc::new(at, 0),
            prev: self.head,
        };
        self.head = Some(event.id);
        self.doc.add_event(&event).unwrap();
    }
}

async fn list(hub: &Hub, token: &str, query: impl std::fmt::Display) -> Vec<String> {
    ids(&hub.get(&format!("/api/conversations?{query}"), token).await)
}

fn ids(list: &Value) -> Vec<String> {
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn hits(body: &Value) -> Vec<(String, String)> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["conversation_id"].as_str().unwrap().to_owned(),
                r["snippet"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_lists_reads_searches_and_counts_synced_conversations() {
    let hub = Hub::start("cn-east").await;
    let admin = hub.login_as("admin", ADMIN_PASSWORD).await;
    let cred_a = hub.enrolled_store(&admin, "store-a").await;
    let cred_b = hub.enrolled_store(&admin, "store-b").await;
    let sam = StaffId::new();
    let lee = StaffId::new();

    // store-a, hour 0: a return, answered by Sam 2 minutes later and resolved, synced in two
    // rounds (the customer's message first, the rest later: the incremental path).
    let mut a1 = Chat::open("store-a", T);
    a1.customer_says("你好，我想退货，这件外套太小了", T + 60_000);
    let mut store_a = Store::connect(&hub, "store-a", &cred_a).await;
    store_a.sync(&mut a1.doc).await;
    a1.staff_joins(sam, "Sam", T + 90_000);
    a1.event(EventKind::Claim { agent: sam }, sam, T + 90_000);
    // Written into the document before an earlier message: display order is by time.
    a1.say(
        Participant::Staff(sam),
        "好的，请带上收据到服务台",
        T + 180_000,
    );
    a1.customer_says("谢谢", T + 170_000);
    a1.event(EventKind::Resolve, sam, T + 600_000);
    store_a.sync(&mut a1.doc).await;

    // store-a, hour 1: an English question Lee answers after a minute; still open.
    let mut a2 = Chat::open("store-a", T + HOUR);
    a2.customer_says("Do you have this jacket in size M?", T + HOUR + 60_000);
    a2.staff_joins(lee, "Lee", T + HOUR + 70_000);
    a2.event(EventKind::Claim { agent: lee }, lee, T + HOUR + 70_000);
    a2.say(
        Participant::Staff(lee),
        "Yes, size M is in stock.",
        T + HOUR + 120_000,
    );
    store_a.sync(&mut a2.doc).await;

    // store-b, hour 0: nobody has answered yet.
    let mut b1 = Chat::open("store-b", T + HOUR / 2);
    b1.customer_says("请问退货需要收据吗？", T + HOUR / 2 + 60_000);
    let mut store_b = Store::connect(&hub, "store-b", &cred_b).await;
    store_b.sync(&mut b1.doc).await;

    // A viewer reads everything; without a token nothing.
    hub.add_viewer("viewer", VIEWER_PASSWORD);
    let viewer = hub.login_as("viewer", VIEWER_PASSWORD).await;
    let v = viewer.as_str();
    for path in [
        "/api/conversations",
        &format!("/api/conversations/{}", a1.id()),
        "/api/search?q=jacket",
        "/api/figures",
    ] {
        hub.get_error(path, None, 401, "unauthorized").await;
        hub.get_error(path, Some("hq_not-a-token"), 401, "unauthorized")
            .await;
        hub.get(path, v).await;
    }
    let stores = hub.get("/api/stores", v).await;
    for store in stores["stores"].as_array().unwrap() {
        assert_eq!(store["online"], true, "{store}");
        assert!(store["last_sync_at_ms"].as_u64().is_some(), "{store}");
    }

    // The merged list, newest first, and its filters.
    let all = hub.get("/api/conversations", v).await;
    assert_eq!(ids(&all), [a2.id(), b1.id(), a1.id()]);
    assert!(all["next_before"].is_null());
    let first = &all["conversations"][2];
    assert_eq!(first["store_id"], "store-a");
    assert_eq!(first["status"], "resolved");
    assert_eq!(first["agent_name"], "Sam");
    assert_eq!(first["message_count"], 3);
    assert_eq!(first["first_customer_message_at_ms"], T + 60_000);
    assert_eq!(first["first_response_at_ms"], T + 180_000);
    assert_eq!(first["resolved_at_ms"], T + 600_000);
    assert_eq!(first["last_message_at_ms"], T + 180_000);
    assert!(first["intent"].is_null());
    let b = &all["conversations"][1];
    assert_eq!(
        (b["status"].as_str(), &b["agent_id"]),
        (Some("queued"), &Value::Null)
    );
    assert!(b["first_response_at_ms"].is_null());

    assert_eq!(list(&hub, v, "store=store-a").await, [a2.id(), a1.id()]);
    assert_eq!(list(&hub, v, "store=store-b").await, [b1.id()]);
    assert_eq!(list(&hub, v, "store=store-z").await, Vec::<String>::new());
    assert_eq!(list(&hub, v, "state=resolved").await, [a1.id()]);
    assert_eq!(list(&hub, v, "state=open").await, [a2.id(), b1.id()]);
    assert_eq!(list(&hub, v, "state=queued").await, [b1.id()]);
    assert_eq!(list(&hub, v, format!("staff={lee}")).await, [a2.id()]);
    assert_eq!(
        list(&hub, v, format!("staff={sam}&state=resolved")).await,
        [a1.id()]
    );
    assert_eq!(
        list(&hub, v, format!("staff={sam}&state=open")).await,
        Vec::<String>::new()
    );
    // `from` inclusive, `to` exclusive, on the creation time.
    assert_eq!(
        list(&hub, v, format!("from={}&to={}", T + 1, T + HOUR)).await,
        [b1.id()]
    );
    assert_eq!(list(&hub, v, format!("from={}", T + HOUR)).await, [a2.id()]);
    assert_eq!(
        list(&hub, v, format!("to={}&store=store-a", T + HOUR)).await,
        [a1.id()]
    );
    assert_eq!(list(&hub, v, "intent=unknown").await.len(), 3);
    assert_eq!(list(&hub, v, "intent=returns").await.len(), 0);

    // Pages.
    let page = hub.get("/api/conversations?limit=2", v).await;
    assert_eq!(ids(&page), [a2.id(), b1.id()]);
    let next = page["next_before"].as_str().unwrap();
    let page = hub
        .get(&format!("/api/conversations?limit=2&before={next}"), v)
        .await;
    assert_eq!(ids(&page), [a1.id()]);
    assert!(page["next_before"].is_null());

    // Bad parameters are JSON errors naming the problem.
    for query in [
        "limit=0",
        "limit=201",
        "limit=ten",
        "state=closed",
        "staff=bob",
        "from=yesterday",
        "from=10&to=5",
        "before=garbage",
        "stor=store-a",
        "store=a&store=b",
    ] {
        hub.get_error(
            &format!("/api/conversations?{query}"),
            Some(v),
            400,
            "bad_request",
        )
        .await;
    }

    // The transcript: meta, state, participants, messages in display order.
    let detail = hub.get(&format!("/api/conversations/{}", a1.id()), v).await;
    assert_eq!(detail["conversation"]["id"], a1.id());
    assert_eq!(
        detail["conversation"]["customer_id"],
        a1.customer.to_string()
    );
    assert_eq!(detail["conversation"]["created_at_ms"], T);
    assert_eq!(detail["conversation"]["status"], "resolved");
    assert_eq!(detail["conversation"]["agent_id"], sam.to_string());
    assert_eq!(
        detail["participants"],
        json!([{"kind": "staff", "id": sam.to_string(), "display_name": "Sam",
                "joined_at_ms": T + 90_000}])
    );
    let transcript: Vec<(&str, &str, u64)> = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["sender"]["kind"].as_str().unwrap(),
                m["body"].as_str().unwrap(),
                m["sent_at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transcript,
        [
            ("customer", "你好，我想退货，这件外套太小了", T + 60_000),
            ("customer", "谢谢", T + 170_000),
            ("staff", "好的，请带上收据到服务台", T + 180_000),
        ]
    );
    assert_eq!(detail["messages"][2]["sender"]["display_name"], "Sam");
    assert_eq!(detail["messages"][2]["sender"]["id"], sam.to_string());
    hub.get_error(
        &format!("/api/conversations/{}", ConversationId::new()),
        Some(v),
        404,
        "not_found",
    )
    .await;
    hub.get_error("/api/conversations/not-an-id", Some(v), 400, "bad_request")
        .await;

    // Search: a 3+ character Chinese phrase (the trigram index), a 2-character word (the scan),
    // English whatever the case, several terms, one store, and a word nobody wrote.
    let found = hub.get("/api/search?q=外套太小", v).await;
    assert_eq!(found["method"], "index");
    assert_eq!(
        hits(&found),
        [(a1.id(), "你好，我想退货，这件外套太小了".to_owned())]
    );
    let result = &found["results"][0];
    assert_eq!(result["store_id"], "store-a");
    assert_eq!(result["sender"]["kind"], "customer");
    assert_eq!(result["sent_at_ms"], T + 60_000);
    assert_eq!(result["highlight"], json!([10, 14]));
    assert_eq!(result["message_id"].as_str().unwrap().len(), 26);

    let found = hub.get("/api/search?q=退货", v).await;
    assert_eq!(found["method"], "scan");
    let mut conversations: Vec<String> = hits(&found).into_iter().map(|h| h.0).collect();
    conversations.sort();
    let mut expected = vec![a1.id(), b1.id()];
    expected.sort();
    assert_eq!(conversations, expected);
    let found = hub.get("/api/search?q=退货&store=store-b", v).await;
    assert_eq!(hits(&found).len(), 1);
    assert_eq!(found["results"][0]["conversation_id"], b1.id());

    let found = hub.get("/api/search?q=JACKET", v).await;
    assert_eq!(found["method"], "index");
    assert_eq!(
        hits(&found),
        [(a2.id(), "Do you have this jacket in size M?".to_owned())]
    );
    let found = hub.get("/api/search?q=size%20stock", v).await;
    assert_eq!(
        hits(&found),
        [(a2.id(), "Yes, size M is in stock.".to_owned())]
    );
    assert_eq!(found["results"][0]["sender"]["display_name"], "Lee");
    let found = hub.get("/api/search?q=refund", v).await;
    assert_eq!(found["results"], json!([]));
    let found = hub.get("/api/search?q=退款", v).await;
    assert_eq!(found["results"], json!([]));
    hub.get_error("/api/search", Some(v), 400, "bad_request")
        .await;
    hub.get_error("/api/search?q=%20", Some(v), 400, "bad_request")
        .await;
    hub.get_error("/api/search?q=a&limit=101", Some(v), 400, "bad_request")
        .await;

    // Figures for the two hours.
    let figures = hub
        .get(&format!("/api/figures?from={T}&to={}", T + 2 * HOUR), v)
        .await;
    assert_eq!(
        figures["hours"],
        json!([
            {"hour_start_ms": T, "messages": 4, "new_conversations": 2},
            {"hour_start_ms": T + HOUR, "messages": 2, "new_conversations": 1},
        ])
    );
    let totals = &figures["totals"];
    assert_eq!(totals["messages"], 6);
    assert_eq!(totals["new_conversations"], 3);
    // Sam answered after 120 s, Lee after 60 s; store-b is unanswered.
    assert_eq!(
        totals["first_response"],
        json!({"count": 2, "avg_ms": 90_000, "p50_ms": 60_000, "p90_ms": 120_000})
    );
    assert_eq!(
        totals["resolution"],
        json!({"count": 1, "avg_ms": 600_000, "p50_ms": 600_000, "p90_ms": 600_000})
    );
    let a = &figures["by_store"]["store-a"];
    assert_eq!(
        (a["messages"].as_u64(), a["new_conversations"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(a["first_response"]["count"], 2);
    let b = &figures["by_store"]["store-b"];
    assert_eq!(
        (b["messages"].as_u64(), b["new_conversations"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        b["first_response"],
        json!({"count": 0, "avg_ms": null, "p50_ms": null, "p90_ms": null})
    );
    assert_eq!(figures["by_intent"]["unknown"]["new_conversations"], 3);
    assert_eq!(figures["by_intent"]["unknown"]["messages"], 6);
    assert_eq!(
        figures["by_intent"]["unknown"]["first_response"]["count"],
        2
    );

    let only_b = hub
        .get(
            &format!("/api/figures?from={T}&to={}&store=store-b", T + 2 * HOUR),
            v,
        )
        .await;
    assert_eq!(only_b["totals"]["messages"], 1);
    assert_eq!(only_b["by_store"].as_object().unwrap().len(), 1);
    let later = hub
        .get(
            &format!("/api/figures?from={}&to={}", T + HOUR, T + 2 * HOUR),
            v,
        )
        .await;
    assert_eq!(later["totals"]["new_conversations"], 1);
    assert_eq!(later["totals"]["first_response"]["p50_ms"], 60_000);
    hub.get_error(
        &format!("/api/figures?from={T}&to={T}"),
        Some(v),
        400,
        "bad_request",
    )
    .await;
    hub.get_error(
        &format!("/api/figures?from={T}&to={}", T + 745 * HOUR),
        Some(v),
        400,
        "bad_request",
    )
    .await;

    // A reconnect (fresh sync state) that repeats what the hub holds changes nothing.
    drop(store_a);
    let mut store_a = Store::connect(&hub, "store-a", &cred_a).await;
    store_a.sync(&mut a1.doc).await;
    let detail = hub.get(&format!("/api/conversations/{}", a1.id()), v).await;
    assert_eq!(detail["conversation"]["message_count"], 3);
    assert_eq!(detail["messages"].as_array().unwrap().len(), 3);
}
