//! The authorization matrix (docs/security.md "Authorization matrix"): every HTTP route of the
//! edge and the hub, and the WebSocket frames that need a role, called as every kind of
//! caller. Each denial must be 401 (who are you?) or 403 (not yours to do) with a JSON error
//! body carrying a `code`, and must not leak anything: no other customer's text, no ids of
//! conversations, no SQL, no file paths, no panics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aisle_sync::{Credential, DocumentKey, Frame, decode_frame, encode_frame};
use aisle_tests::{
    Customer, Edge, EdgeOptions, HUB_ADMIN_PASSWORD, Hub, StaffConn, Value, Ws, cmid, json,
    wait_connected,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    /// A customer's resume token (their own, valid).
    Customer,
    /// A staff member of this store.
    Staff,
    /// A staff account that was disabled by the admin.
    Disabled,
    /// A staff session that was logged out.
    Revoked,
    /// A staff session past its `session_ttl_secs`.
    Expired,
    /// A staff admin session of another box.
    OtherBoxStaff,
    /// A customer's resume token signed by another box.
    OtherBoxCustomer,
    /// The store admin (last: the admin's calls change things the others must still see).
    Admin,
}

const EVERYONE: [Who; 9] = [
    Who::Nobody,
    Who::Customer,
    Who::Staff,
    Who::Disabled,
    Who::Revoked,
    Who::Expired,
    Who::OtherBoxStaff,
    Who::OtherBoxCustomer,
    Who::Admin,
];

/// Who a route is for.
#[derive(Clone, Copy, Debug)]
enum Need {
    Public,
    Staff,
    Admin,
    CustomerOrStaff,
}

enum Body {
    None,
    Json(Value),
    Bytes(&'static str, Vec<u8>),
}

struct Route {
    method: &'static str,
    path: String,
    body: Body,
    need: Need,
    /// The answers an allowed caller may get (a conflict is not a denial).
    ok: &'static [u16],
}

fn route(method: &'static str, path: impl Into<String>, need: Need, ok: &'static [u16]) -> Route {
    Route {
        method,
        path: path.into(),
        body: Body::None,
        need,
        ok,
    }
}

impl Route {
    fn json(mut self, body: Value) -> Self {
        self.body = Body::Json(body);
        self
    }
}

/// The status a caller must get: `None` = one of the route's `ok` answers.
fn edge_expected(need: Need, who: Who) -> Option<u16> {
    let staff = matches!(who, Who::Staff | Who::Admin);
    match need {
        Need::Public => None,
        Need::Staff if staff => None,
        Need::Admin if who == Who::Admin => None,
        Need::Admin if who == Who::Staff => Some(403),
        Need::CustomerOrStaff if staff || who == Who::Customer => None,
        _ => Some(401),
    }
}

struct Call {
    status: u16,
    text: String,
    body: Value,
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    r: &Route,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
) -> Call {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
    let mut req = client.request(method, format!("{base}{}", r.path));
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req = match &r.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Bytes(ctype, bytes) => req.header("content-type", *ctype).body(bytes.clone()),
    };
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Call { status, text, body }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A denial's body: JSON with an `error.code`, and none of `secrets` (texts, ids, SQL, paths).
#[track_caller]
fn assert_clean_denial(what: &str, status: u16, text: &str, body: &Value, secrets: &[String]) {
    let code = body.pointer("/error/code").and_then(Value::as_str);
    assert!(
        code.is_some_and(|c| !c.is_empty()),
        "{what}: denial {status} without a JSON error code: {text}"
    );
    let lower = text.to_lowercase();
    for leak in [
        "select ",
        "insert ",
        "sqlite",
        "panicked",
        "backtrace",
        "/tmp/",
        "/home/",
        ".rs:",
    ] {
        assert!(
            !lower.contains(leak),
            "{what}: denial leaks {leak:?}: {text}"
        );
    }
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what}: denial leaks {secret:?}: {text}"
        );
    }
}

/// A tiny valid PNG (1×1).
fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0; 64]);
    bytes
}

struct EdgeWorld {
    edge: Edge,
    _other: Edge,
    tokens: BTreeMap<Who, Option<String>>,
    /// The first customer's conversation (the one others must not see).
    c1_conversation: String,
    c1_customer: String,
    c1_secret: String,
    c2_conversation: String,
    c2_token: String,
    c2_customer: String,
    /// A conversation of the other box.
    other_conversation: String,
    expired_resume_token: String,
    staff_id: String,
    secrets: Vec<String>,
}

async fn edge_world() -> EdgeWorld {
    // Tokens issued with a 1 s lifetime, then the box runs on with the default: they are
    // expired for good.
    let mut edge = Edge::start_with(
        EdgeOptions::default()
            // Open staff connections re-check their session at each heartbeat.
            .env("AISLE_LIMITS__HEARTBEAT_INTERVAL_SECS", 1)
            .env("AISLE_SESSION_TTL_SECS", 1)
            .env("AISLE_RESUME_TOKEN_TTL_SECS", 1),
    )
    .await;
    // (A login purges that account's expired sessions, so the expired one is another
    // account's, which does not log in again.)
    let first_admin = edge.http().login_admin().await;
    let expired = edge
        .http()
        .create_and_login_staff(&first_admin, "late", "Late Shift", 4)
        .await
        .token;
    let mut short = Customer::connect(&edge, "Short").await;
    let expired_resume_token = short.resume_token.clone();
    short.ws.send(json!({"type":"ping"})).await;
    edge.options_mut()
        .env
        .retain(|(k, _)| !k.ends_with("_TTL_SECS"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    edge.restart().await;

    let http = edge.http().clone();
    let admin = http.login_admin().await;
    let staff = http
        .create_and_login_staff(&admin, "staff1", "Staff One", 4)
        .await;
    let disabled = http
        .create_and_login_staff(&admin, "staff2", "Staff Two", 4)
        .await;
    http.patch_staff(&admin, &disabled.id, &json!({"disabled": true}))
        .await;
    let revoked = http
        .create_and_login_staff(&admin, "staff3", "Staff Three", 4)
        .await;
    http.post("/api/logout", Some(&revoked.token), &json!({}))
        .await
        .expect(204);

    let mut c1 = Customer::connect(&edge, "Ada").await;
    let c1_conversation = c1.start_conversation().await;
    let c1_secret = format!("my card number is {}", ulid::Ulid::new());
    c1.send_and_wait(&c1_conversation, &cmid(), &c1_secret)
        .await;
    let mut c2 = Customer::connect(&edge, "Bob").await;
    let c2_conversation = c2.start_conversation().await;
    c2.send_and_wait(&c2_conversation, &cmid(), "hello from bob")
        .await;

    let other = Edge::start().await;
    let other_admin = other.http().login_admin().await;
    let mut stranger = Customer::connect(&other, "Stranger").await;
    let other_conversation = stranger.start_conversation().await;

    let tokens = BTreeMap::from([
        (Who::Nobody, None),
        (Who::Customer, Some(c2.resume_token.clone())),
        (Who::Staff, Some(staff.token.clone())),
        (Who::Disabled, Some(disabled.token.clone())),
        (Who::Revoked, Some(revoked.token.clone())),
        (Who::Expired, Some(expired)),
        (Who::OtherBoxStaff, Some(other_admin.token.clone())),
        (Who::OtherBoxCustomer, Some(stranger.resume_token.clone())),
        (Who::Admin, Some(admin.token.clone())),
    ]);
    let secrets = vec![
        c1_secret.clone(),
        c1_conversation.clone(),
        c1.customer_id.clone(),
        c2_conversation.clone(),
        other_conversation.clone(),
        edge.data_dir().display().to_string(),
        "hello from bob".into(),
    ];
    EdgeWorld {
        _other: other,
        tokens,
        c1_customer: c1.customer_id.clone(),
        c1_conversation,
        c1_secret,
        c2_conversation,
        c2_token: c2.resume_token.clone(),
        c2_customer: c2.customer_id.clone(),
        other_conversation,
        expired_resume_token,
        staff_id: staff.id.clone(),
        secrets,
        edge,
    }
}

#[tokio::test]
async fn edge_http_matrix() {
    let w = edge_world().await;
    let http = w.edge.http();
    let admin = w.tokens[&Who::Admin].clone().unwrap();
    // Things the admin's calls change (one each, so a success cannot hide another caller's).
    let canned = |shortcut: &str| json!({"shortcut":shortcut,"title":"Hours","body":"9 to 9"});
    let put_id = http
        .post("/api/canned-replies", Some(&admin), &canned("hours"))
        .await
        .expect(201)["canned_reply"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let delete_id = http
        .post("/api/canned-replies", Some(&admin), &canned("gone"))
        .await
        .expect(201)["canned_reply"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let upload = client()
        .post(format!("{}/api/attachments", w.edge.base_url()))
        .bearer_auth(&w.c2_token)
        .header("content-type", "application/octet-stream")
        .body(png())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 201);
    let attachment: Value = upload.json().await.unwrap();
    let attachment = attachment["attachment"]["id"].as_str().unwrap().to_string();

    let (c1, c2) = (&w.c1_conversation, &w.c2_conversation);
    let routes = vec![
        route("GET", "/healthz", Need::Public, &[200]),
        route("GET", "/metrics", Need::Public, &[200]),
        route("GET", "/", Need::Public, &[200]),
        route("GET", "/chat", Need::Public, &[200]),
        route("GET", "/api/qr.svg?text=hello", Need::Public, &[200]),
        route("POST", "/api/handoff/ZZZZZZZZ", Need::Public, &[404]),
        // A capability URL by design (docs/security.md): whoever holds the id.
        route(
            "GET",
            format!("/api/attachments/{attachment}"),
            Need::Public,
            &[200],
        ),
        route("GET", "/api/me", Need::Staff, &[200]),
        route("GET", "/api/staff", Need::Staff, &[200]),
        route("POST", "/api/staff", Need::Admin, &[201]).json(json!({
            "username":"matrix","name":"Matrix","password":"matrix-password","role":"staff"})),
        route(
            "PATCH",
            format!("/api/staff/{}", w.staff_id),
            Need::Admin,
            &[200],
        )
        .json(json!({"name":"Staff Member One"})),
        route("GET", "/api/canned-replies", Need::Staff, &[200]),
        route("POST", "/api/canned-replies", Need::Admin, &[201]).json(canned("new")),
        route(
            "PUT",
            format!("/api/canned-replies/{put_id}"),
            Need::Admin,
            &[200],
        )
        .json(canned("hours")),
        route(
            "DELETE",
            format!("/api/canned-replies/{delete_id}"),
            Need::Admin,
            &[204],
        ),
        route("GET", "/api/conversations", Need::Staff, &[200]),
        route(
            "GET",
            format!("/api/conversations/{c1}"),
            Need::Staff,
            &[200],
        ),
        route(
            "GET",
            format!("/api/conversations/{c1}/messages"),
            Need::Staff,
            &[200],
        ),
        // Staff of this store see this store's conversations only: another box's is unknown.
        route(
            "GET",
            format!("/api/conversations/{}", w.other_conversation),
            Need::Staff,
            &[404],
        ),
        route(
            "POST",
            format!("/api/conversations/{c2}/actions"),
            Need::Staff,
            &[200, 409],
        )
        .json(json!({"action":"claim"})),
        route(
            "GET",
            format!("/api/customers/{}/conversations", w.c1_customer),
            Need::Staff,
            &[200],
        ),
        route("GET", "/api/bot-policy", Need::Staff, &[200]),
        route("PUT", "/api/bot-policy", Need::Admin, &[200])
            .json(json!({"intents":["store_info"],"min_confidence":0.9})),
        route("GET", "/api/bot-answers", Need::Admin, &[200]),
        route("GET", "/api/update", Need::Admin, &[200, 409]),
        Route {
            body: Body::Bytes("application/octet-stream", b"not a bundle".to_vec()),
            ..route("POST", "/api/update", Need::Admin, &[409, 422])
        },
        Route {
            body: Body::Bytes("application/octet-stream", png()),
            ..route("POST", "/api/attachments", Need::CustomerOrStaff, &[201])
        },
    ];

    let client = client();
    let base = w.edge.base_url();
    let mut failures = Vec::new();
    for r in &routes {
        for who in EVERYONE {
            let answer = call(&client, &base, r, w.tokens[&who].as_deref(), &[]).await;
            let what = format!("{} {} as {who:?}", r.method, r.path);
            match edge_expected(r.need, who) {
                None if r.ok.contains(&answer.status) => {}
                Some(denied) if denied == answer.status => {
                    assert_clean_denial(
                        &what,
                        answer.status,
                        &answer.text,
                        &answer.body,
                        &w.secrets,
                    );
                    let code = answer.body.pointer("/error/code").and_then(Value::as_str);
                    if who == Who::Expired {
                        assert_eq!(code, Some("token_expired"), "{what}: {}", answer.text);
                    }
                    if denied == 403 {
                        assert_eq!(code, Some("forbidden"), "{what}: {}", answer.text);
                    }
                }
                expected => failures.push(format!(
                    "{what}: expected {}, got {} {}",
                    expected.map_or(format!("one of {:?}", r.ok), |s| s.to_string()),
                    answer.status,
                    answer.text.chars().take(200).collect::<String>()
                )),
            }
        }
    }
    // Logging out needs a session too.
    let logout = http.post("/api/logout", None, &json!({})).await;
    assert_eq!(logout.status, 401);
    assert_clean_denial("logout", 401, &logout.text, &logout.body, &w.secrets);
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What staff read is this store's: the other box's conversation is in no list.
    let listed = http.list_conversations(&admin, "").await;
    assert!(
        listed
            .iter()
            .all(|c| c["id"] != w.other_conversation.as_str()),
        "{listed:?}"
    );
}

/// Sends `frame` and returns its answer (the first frame that is not a `pong`).
async fn answer(ws: &mut Ws, frame: Value) -> Value {
    ws.send(frame).await;
    ws.recv_where("an answer", |f| f["type"] != "pong").await
}

#[tokio::test]
async fn edge_websocket_matrix() {
    let w = edge_world().await;
    let addr = w.edge.addr();

    // Staff hello with every kind of token: only this store's live staff sessions get in.
    for who in EVERYONE {
        let mut ws = Ws::connect(addr, &format!("staff hello as {who:?}")).await;
        let mut hello = json!({"type":"hello","role":"staff"});
        if let Some(token) = &w.tokens[&who] {
            hello["token"] = json!(token);
        }
        let reply = answer(&mut ws, hello).await;
        if matches!(who, Who::Staff | Who::Admin) {
            assert_eq!(reply["type"], "welcome", "{who:?}: {reply}");
        } else {
            assert_eq!(reply["type"], "error", "{who:?}: {reply}");
            let expected = if who == Who::Expired {
                "token_expired"
            } else {
                "unauthorized"
            };
            assert_eq!(reply["code"], expected, "{who:?}: {reply}");
            let text = reply.to_string();
            assert_clean_denial(
                &format!("staff hello as {who:?}"),
                0,
                &text,
                &json!({"error":reply}),
                &w.secrets,
            );
        }
    }

    // Customer hello: a resume token of this box names its customer; others are refused.
    let cases = [
        (w.c2_token.clone(), Ok(w.c2_customer.clone())),
        (w.expired_resume_token.clone(), Err("token_expired")),
        (
            w.tokens[&Who::OtherBoxCustomer].clone().unwrap(),
            Err("unauthorized"),
        ),
        (w.tokens[&Who::Staff].clone().unwrap(), Err("unauthorized")),
    ];
    for (token, expected) in cases {
        let mut ws = Ws::connect(addr, "customer hello").await;
        let reply = answer(
            &mut ws,
            json!({"type":"hello","role":"customer","resume_token":token}),
        )
        .await;
        match expected {
            Ok(customer) => {
                assert_eq!(reply["type"], "welcome", "{reply}");
                assert_eq!(reply["customer_id"], customer.as_str());
                let ids: Vec<&str> = reply["conversations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|c| c["id"].as_str())
                    .collect();
                assert_eq!(ids, vec![w.c2_conversation.as_str()], "only their own");
            }
            Err(code) => {
                assert_eq!(
                    (reply["type"].as_str(), reply["code"].as_str()),
                    (Some("error"), Some(code)),
                    "{reply}"
                );
            }
        }
    }

    // The second customer tries everything on the first one's conversation.
    let mut bob = Customer::connect_with_token(&w.edge, &w.c2_token, "bob").await;
    let c1 = w.c1_conversation.as_str();
    let staff = w.tokens[&Who::Staff].clone().unwrap();
    let frames = [
        (
            json!({"type":"resume","conversation_id":c1,"after_seq":0}),
            "not_found",
        ),
        (
            json!({"type":"send","conversation_id":c1,"client_msg_id":cmid(),"body":"let me in"}),
            "not_found",
        ),
        (
            json!({"type":"typing","conversation_id":c1,"active":true}),
            "not_found",
        ),
        (json!({"type":"handoff","conversation_id":c1}), "not_found"),
        (
            json!({"type":"claim","conversation_id":c1,"request_id":"r"}),
            "forbidden",
        ),
        (
            json!({"type":"resolve","conversation_id":c1,"request_id":"r"}),
            "forbidden",
        ),
        (
            json!({"type":"transfer","conversation_id":c1,"to":w.staff_id,"request_id":"r"}),
            "forbidden",
        ),
        (
            json!({"type":"snooze","conversation_id":c1,"until_ms":1,"request_id":"r"}),
            "forbidden",
        ),
    ];
    for (frame, code) in frames {
        let reply = answer(&mut bob, frame.clone()).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame} → {reply}"
        );
        let mut secrets = w.secrets.clone();
        secrets.retain(|s| s != c1 && s != &w.c2_conversation);
        assert_clean_denial(
            &frame.to_string(),
            0,
            &reply.to_string(),
            &json!({"error":reply}),
            &secrets,
        );
    }
    // Nothing of the first conversation reached the second customer.
    bob.expect_none(300, "anything of another customer's conversation", |f| {
        f.to_string().contains(&w.c1_secret)
    })
    .await;
    // The first conversation holds only what its customer wrote.
    let messages = w.edge.http().messages(&staff, c1).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["body"], w.c1_secret.as_str());

    // Staff read any conversation of their store.
    let session = aisle_tests::StaffSession {
        id: w.staff_id.clone(),
        username: "staff1".into(),
        name: String::new(),
        token: staff.clone(),
        staff: Value::Null,
    };
    let mut tablet = StaffConn::connect(&w.edge, &session, "tablet").await;
    let resumed = tablet.resume(c1, 0).await;
    assert_eq!(resumed.messages.len(), 1);

    // A session logged out while its tablet is connected ends on that tablet too: it is told
    // and closed, and hears nothing of the store's chats afterwards.
    let admin = w.tokens[&Who::Admin].clone().unwrap();
    let second = w
        .edge
        .http()
        .create_and_login_staff(
            &aisle_tests::StaffSession {
                token: admin,
                ..session.clone()
            },
            "staff4",
            "Staff Four",
            4,
        )
        .await;
    let mut left_open = StaffConn::connect(&w.edge, &second, "logged-out tablet").await;
    left_open.resume(c1, 0).await;
    w.edge
        .http()
        .post("/api/logout", Some(&second.token), &json!({}))
        .await
        .expect(204);
    let told = left_open.recv_error("unauthorized").await;
    assert_clean_denial(
        "logged out",
        0,
        &told.to_string(),
        &json!({"error":told}),
        &[],
    );
    left_open.wait_close().await;
    assert!(left_open.is_closed());
    // The colleague's tablet with a live session stays.
    tablet.send(json!({"type":"ping"})).await;
    tablet.recv_type("pong").await;
    assert!(!tablet.is_closed());
}

// ---- the hub -----------------------------------------------------------------------------

/// Who calls the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HubWho {
    Nobody,
    /// An HQ session past its `session_ttl_secs`.
    HqExpired,
    /// An HQ admin of another region's hub.
    HqOtherRegion,
    /// A read-only HQ account.
    HqViewer,
    /// An enrolled store of this region, by its credential.
    Store,
    /// A revoked store's credential.
    RevokedStore,
    /// A store of another region, by its credential.
    OtherRegionStore,
    HqAdmin,
}

const HUB_CALLERS: [HubWho; 8] = [
    HubWho::Nobody,
    HubWho::HqExpired,
    HubWho::HqOtherRegion,
    HubWho::HqViewer,
    HubWho::Store,
    HubWho::RevokedStore,
    HubWho::OtherRegionStore,
    HubWho::HqAdmin,
];

#[derive(Clone, Copy, Debug)]
enum HubNeed {
    Public,
    HqViewer,
    HqAdmin,
    Store,
}

fn hub_expected(need: HubNeed, who: HubWho) -> Option<u16> {
    match (need, who) {
        (HubNeed::Public, _) => None,
        (HubNeed::HqViewer, HubWho::HqViewer | HubWho::HqAdmin) => None,
        (HubNeed::HqAdmin, HubWho::HqAdmin) => None,
        (HubNeed::HqAdmin, HubWho::HqViewer) => Some(403),
        (HubNeed::Store, HubWho::Store) => None,
        (HubNeed::Store, HubWho::RevokedStore) => Some(403),
        _ => Some(401),
    }
}

async fn enroll(hub: &mut Hub, store_id: &str) -> String {
    let token = hub.register_store(store_id).await;
    let r = hub
        .http()
        .post(
            "/api/enroll",
            None,
            &json!({"store_id":store_id,"enrollment_token":token}),
        )
        .await;
    r.expect(200)["credential"].as_str().unwrap().to_string()
}

/// A sync `hello` on `/sync`: the hub's first answer, and the documents its manifest lists.
async fn sync_hello(
    addr: SocketAddr,
    store_id: &str,
    region: &str,
    credential: &str,
) -> (Frame, Vec<DocumentKey>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/sync"))
        .await
        .expect("connect /sync");
    let max = aisle_sync::Limits::default().max_frame_bytes;
    let hello = Frame::Hello {
        store_id: store_id.into(),
        region: region.into(),
        credential: Credential(credential.into()),
        edge_version: "authz-test".into(),
    };
    ws.send(Message::Binary(encode_frame(&hello, max).unwrap().into()))
        .await
        .unwrap();
    let mut first = None;
    let mut docs = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        let Message::Binary(bytes) = msg else {
            continue;
        };
        let frame = decode_frame(&bytes, max).expect("a sync frame");
        match &frame {
            Frame::Manifest { docs: listed, more } => {
                docs.extend(listed.iter().map(|(key, _)| key.clone()));
                if !more {
                    break;
                }
            }
            Frame::Refused { .. } => {
                first = Some(frame);
                break;
            }
            _ if first.is_none() => first = Some(frame),
            _ => {}
        }
    }
    (first.expect("the hub answered the hello"), docs)
}

#[tokio::test]
async fn hub_matrix() {
    // The region's hub with one store syncing a conversation HQ may read.
    let mut hub = Hub::start("eu-west").await;
    let mut shop = hub.start_store("shop-1").await;
    wait_connected(&shop, Duration::from_secs(20)).await;
    let mut customer = Customer::connect(&shop, "Ada").await;
    let conversation = customer.start_conversation().await;
    let secret = format!("my address is {}", ulid::Ulid::new());
    customer
        .send_and_wait(&conversation, &cmid(), &secret)
        .await;
    aisle_tests::eventually(
        "the conversation reached the hub",
        Duration::from_secs(20),
        async || {
            if hub
                .messages_of(&conversation)
                .iter()
                .any(|(_, body)| body == &secret)
            {
                Ok(())
            } else {
                Err(format!("{:?}", hub.messages_of(&conversation)))
            }
        },
    )
    .await;

    let store_credential = enroll(&mut hub, "shop-2").await;
    let revoked_credential = enroll(&mut hub, "shop-3").await;
    hub.revoke("shop-3").await;
    hub.register_store("shop-4").await;

    // Another region's hub, its admin and its store.
    let mut other = Hub::start("us-east").await;
    let other_admin = other.admin_token().await;
    let other_store_credential = enroll(&mut other, "shop-us").await;

    // An expired HQ session (issued with a 1 s lifetime), and a read-only HQ account (the
    // hub has no account API yet: the row is written while the hub is stopped).
    hub.set_env("AISLE_HUB_SESSION_TTL_SECS", 1);
    hub.restart().await;
    let expired = hub.admin_token().await;
    hub.terminate().await;
    hub.execute(
        "INSERT INTO accounts (id, username, password_hash, role, created_at_ms)
         SELECT 'viewer-1', 'viewer', password_hash, 'hq_viewer', created_at_ms
         FROM accounts WHERE username = 'admin'",
    );
    hub.set_env("AISLE_HUB_SESSION_TTL_SECS", 3600);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    hub.restart().await;
    let admin = hub.admin_token().await;
    let viewer = hub
        .http()
        .post(
            "/api/login",
            None,
            &json!({"username":"viewer","password":HUB_ADMIN_PASSWORD}),
        )
        .await
        .expect(200)["token"]
        .as_str()
        .unwrap()
        .to_string();

    let credentials: BTreeMap<HubWho, (Option<String>, Option<&str>)> = BTreeMap::from([
        (HubWho::Nobody, (None, None)),
        (HubWho::HqExpired, (Some(expired), None)),
        (HubWho::HqOtherRegion, (Some(other_admin.clone()), None)),
        (HubWho::HqViewer, (Some(viewer), None)),
        (
            HubWho::Store,
            (Some(store_credential.clone()), Some("shop-2")),
        ),
        (
            HubWho::RevokedStore,
            (Some(revoked_credential.clone()), Some("shop-3")),
        ),
        (
            HubWho::OtherRegionStore,
            (Some(other_store_credential.clone()), Some("shop-us")),
        ),
        (HubWho::HqAdmin, (Some(admin.clone()), None)),
    ]);
    let c = conversation.as_str();
    let routes = vec![
        (
            route("GET", "/healthz", Need::Public, &[200]),
            HubNeed::Public,
        ),
        (
            route("GET", "/metrics", Need::Public, &[200]),
            HubNeed::Public,
        ),
        (
            route("GET", "/api/stores", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route("POST", "/api/stores", Need::Public, &[201])
                .json(json!({"store_id":"shop-9","name":"Shop 9"})),
            HubNeed::HqAdmin,
        ),
        (
            route("POST", "/api/stores/shop-4/revoke", Need::Public, &[200]).json(json!({})),
            HubNeed::HqAdmin,
        ),
        (
            route("GET", "/api/settings/region", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route("PUT", "/api/settings/region", Need::Public, &[200])
                .json(json!({"settings":{"routing":{"capacity_per_staff":6}}})),
            HubNeed::HqAdmin,
        ),
        (
            route("GET", "/api/stores/shop-1/settings", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route("PUT", "/api/stores/shop-1/settings", Need::Public, &[200])
                .json(json!({"settings":{}})),
            HubNeed::HqAdmin,
        ),
        (
            route("GET", "/api/conversations", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route(
                "GET",
                format!("/api/conversations/{c}"),
                Need::Public,
                &[200],
            ),
            HubNeed::HqViewer,
        ),
        (
            route("GET", "/api/search?q=address", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route("GET", "/api/figures", Need::Public, &[200]),
            HubNeed::HqViewer,
        ),
        (
            route(
                "GET",
                "/api/canned-replies?store=shop-1",
                Need::Public,
                &[200],
            ),
            HubNeed::HqViewer,
        ),
        // Without its parameter: still 401 first, and a JSON 400 for HQ (was plain text).
        (
            route("GET", "/api/canned-replies", Need::Public, &[400]),
            HubNeed::HqViewer,
        ),
        (
            route("PUT", "/api/canned-replies/hours", Need::Public, &[200])
                .json(json!({"title":"Hours","body":"9 to 9"})),
            HubNeed::HqAdmin,
        ),
        (
            route(
                "DELETE",
                "/api/canned-replies/hours",
                Need::Public,
                &[200, 204],
            ),
            HubNeed::HqAdmin,
        ),
        (
            route("POST", "/api/handoffs", Need::Public, &[200]).json(json!({
                "code":"AUTHZ234","conversation_id":ulid::Ulid::new().to_string(),
                "expires_at_ms": aisle_tests::now_ms() + 60_000})),
            HubNeed::Store,
        ),
        (
            route("POST", "/api/continuations", Need::Public, &[404])
                .json(json!({"code":"NOSUCH23"})),
            HubNeed::Store,
        ),
        (
            route(
                "GET",
                "/api/updates/x86_64/latest",
                Need::Public,
                &[200, 204, 304, 404],
            ),
            HubNeed::Store,
        ),
    ];
    let client = client();
    let base = hub.url();
    let secrets = vec![
        secret.clone(),
        conversation.clone(),
        customer.customer_id.clone(),
        hub.data_dir().display().to_string(),
    ];
    let mut failures = Vec::new();
    for (r, need) in &routes {
        for who in HUB_CALLERS {
            let (token, store) = &credentials[&who];
            let headers: Vec<(&str, &str)> = store.iter().map(|s| ("x-aisle-store", *s)).collect();
            let answer = call(&client, &base, r, token.as_deref(), &headers).await;
            let what = format!("{} {} as {who:?}", r.method, r.path);
            match hub_expected(*need, who) {
                None if r.ok.contains(&answer.status) => {}
                Some(denied) if denied == answer.status => {
                    assert_clean_denial(&what, answer.status, &answer.text, &answer.body, &secrets);
                }
                expected => failures.push(format!(
                    "{what}: expected {}, got {} {}",
                    expected.map_or(format!("one of {:?}", r.ok), |s| s.to_string()),
                    answer.status,
                    answer.text.chars().take(200).collect::<String>()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // HQ of another region sees nothing of this one.
    let theirs = other
        .http()
        .get("/api/conversations", Some(&other_admin))
        .await;
    assert!(!theirs.text.contains(c), "{}", theirs.text);
    let found = other
        .http()
        .get("/api/search?q=address", Some(&other_admin))
        .await;
    assert!(!found.text.contains(&secret), "{}", found.text);

    // Over /sync: a store gets only what is its own; a revoked store, a store of another
    // region, a wrong credential and an HQ token as credential get nothing at all.
    let addr = hub.addr();
    let (first, docs) = sync_hello(addr, "shop-2", "eu-west", &store_credential).await;
    assert!(matches!(first, Frame::Welcome { .. }), "{first:?}");
    assert!(
        docs.iter()
            .all(|d| !d.to_string().contains(c) && !d.to_string().contains("shop-1")),
        "shop-2 was offered another store's documents: {docs:?}"
    );
    for (store, region, credential, code) in [
        ("shop-3", "eu-west", revoked_credential.as_str(), "revoked"),
        (
            "shop-us",
            "us-east",
            other_store_credential.as_str(),
            "wrong_region",
        ),
        (
            "shop-us",
            "eu-west",
            other_store_credential.as_str(),
            "unknown_store",
        ),
        (
            "shop-1",
            "eu-west",
            store_credential.as_str(),
            "bad_credential",
        ),
        ("shop-2", "eu-west", admin.as_str(), "bad_credential"),
    ] {
        let (first, docs) = sync_hello(addr, store, region, credential).await;
        match &first {
            Frame::Refused { code: got, message } => {
                assert_eq!(got, code, "{store}: {message}");
                assert!(
                    !message.contains(c) && !message.contains(&secret),
                    "{message}"
                );
            }
            other => panic!("{store} in {region}: expected a refusal, got {other:?}"),
        }
        assert!(docs.is_empty(), "{store}: {docs:?}");
    }

    // The store's own box keeps syncing (nothing above disturbed it).
    shop.restart().await;
    wait_connected(&shop, Duration::from_secs(20)).await;
}
