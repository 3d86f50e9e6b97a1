//! The staff HTTP API around conversations (api.md "Conversations"): lists by status, the
//! detail view with events and participants, paged history, and actions over HTTP.

use aisle_tests::*;

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|c| c["id"].as_str().map(String::from))
        .collect()
}

/// An open chat is listed under `status=open` and not under `status=resolved`; resolving it
/// over HTTP (`POST …/actions {"action":"resolve"}`) answers the new state, tells the
/// customer's connection, and moves it between the two lists.
#[tokio::test]
async fn status_filters_and_resolve_over_http() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let http = edge.http();
    let token = staff[0].token.as_str();
    let mut s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut c = Customer::connect(&edge, "Listed").await;
    let conv = c.start_conversation().await;
    c.recv_state(&conv, "assigned").await;
    c.send_msg(&conv, &cmid(), "is the café open?").await;
    s.recv_message(&conv).await;

    let open = http.list_conversations(token, "status=open").await;
    assert!(ids(&open).contains(&conv), "status=open: {open:?}");
    let summary = open.iter().find(|x| x["id"] == conv.as_str()).unwrap();
    assert_eq!(summary["status"], "assigned", "{summary}");
    assert_eq!(summary["agent"]["id"], s.id(), "{summary}");
    assert_eq!(summary["last_seq"], 1, "{summary}");
    let resolved = http.list_conversations(token, "status=resolved").await;
    assert!(
        !ids(&resolved).contains(&conv),
        "an open chat is listed under status=resolved: {resolved:?}"
    );
    let assigned = http.list_conversations(token, "status=assigned").await;
    assert!(
        ids(&assigned).contains(&conv),
        "status=assigned: {assigned:?}"
    );

    let r = http
        .conversation_action(token, &conv, &json!({"action":"resolve"}))
        .await;
    let body = r.expect(200);
    assert_eq!(body["state"]["status"], "resolved", "{}", r.text);
    let st = c.recv_state(&conv, "resolved").await;
    assert_eq!(st["event"]["kind"], "resolve", "{st}");
    assert_eq!(st["event"]["actor"]["id"], s.id(), "{st}");
    s.recv_state(&conv, "resolved").await;

    let resolved = http.list_conversations(token, "status=resolved").await;
    assert!(
        ids(&resolved).contains(&conv),
        "status=resolved: {resolved:?}"
    );
    let open = http.list_conversations(token, "status=open").await;
    assert!(
        !ids(&open).contains(&conv),
        "a resolved chat is listed under status=open: {open:?}"
    );
    // Resolving again is an illegal transition, as over the WebSocket.
    http.conversation_action(token, &conv, &json!({"action":"resolve"}))
        .await
        .expect_error(409, "illegal_transition");
    // Unknown conversation: 404.
    http.get(
        &format!("/api/conversations/{}", ulid::Ulid::new()),
        Some(token),
    )
    .await
    .expect_error(404, "not_found");
}

/// `GET /api/conversations/{id}` shows the summary, the state, the applied `assign` event
/// of the routing and the customer among the participants.
#[tokio::test]
async fn conversation_detail_shows_events_and_participants() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let s = StaffConn::connect(&edge, &staff[0], "staff").await;
    let mut c = Customer::connect(&edge, "Lin").await;
    c.send(json!({"type":"start","request_id":"r1","display_name":"Lin"}))
        .await;
    let started = c.recv_reply("started", |v| v["request_id"] == "r1").await;
    assert_eq!(started["type"], "started", "{started}");
    let conv = started.str_("conversation_id").to_string();
    c.recv_state(&conv, "assigned").await;

    let d = edge.http().conversation(&staff[0].token, &conv).await;
    assert_eq!(d["conversation"]["id"], conv.as_str(), "{d}");
    assert_eq!(d["state"]["status"], "assigned", "{d}");
    assert_eq!(d["state"]["agent"]["id"], s.id(), "{d}");
    assert!(d["state"]["version"].as_u64().is_some(), "{d}");

    let events = d["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {d}"));
    // api.md: the document's event log, `kind` being `{"kind":"assign","agent":…}`.
    let assign = events
        .iter()
        .find(|e| e["kind"]["kind"] == "assign")
        .unwrap_or_else(|| panic!("no assign event in {}", d["events"]));
    assert_eq!(assign["kind"]["agent"], s.id(), "{assign}");
    assert_eq!(assign["applied"], true, "{assign}");
    assert_eq!(assign["actor"]["kind"], "system", "{assign}");
    assert!(is_ulid(assign.str_("id")), "{assign}");
    assert!(assign["hlc"].as_u64().is_some(), "{assign}");
    assert_eq!(d["rejected"], json!([]), "nothing was rejected: {d}");

    let participants = d["participants"]
        .as_array()
        .unwrap_or_else(|| panic!("no participants array: {d}"));
    let me = participants
        .iter()
        .find(|p| p["participant"]["kind"] == "customer")
        .unwrap_or_else(|| panic!("the customer is not a participant: {d}"));
    assert_eq!(me["participant"]["id"], c.customer_id.as_str(), "{me}");
    assert_eq!(me["display_name"], "Lin", "{me}");
    assert!(me.u64_("joined_at_ms") > 1_600_000_000_000, "{me}");
}

/// `GET …/messages?after_seq=N&limit=M` pages through the history: `more` is true while
/// messages remain after the page and false on the last page (also when it is exactly full).
#[tokio::test]
async fn message_history_pages_with_after_seq_and_limit() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let token = staff[0].token.as_str();
    let mut c = Customer::connect(&edge, "Pager").await;
    let conv = c.start_conversation().await;
    let mut acks = Vec::new();
    for i in 1..=5 {
        acks.push(c.send_msg(&conv, &cmid(), &format!("line {i}")).await);
    }

    let page = |after: u64, limit: u64| {
        let http = edge.http().clone();
        let conv = conv.clone();
        async move {
            let r = http
                .get(
                    &format!("/api/conversations/{conv}/messages?after_seq={after}&limit={limit}"),
                    Some(token),
                )
                .await;
            let b = r.expect(200).clone();
            let seqs: Vec<u64> = b["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no messages: {}", r.what, r.text))
                .iter()
                .map(|m| m.u64_("seq"))
                .collect();
            let more = b["more"]
                .as_bool()
                .unwrap_or_else(|| panic!("{}: no more flag: {}", r.what, r.text));
            (seqs, more, b)
        }
    };

    let (seqs, more, b) = page(0, 2).await;
    assert_eq!((seqs, more), (vec![1, 2], true), "{b}");
    let first = &b["messages"][0];
    assert_eq!(first["id"], acks[0]["message_id"], "{first}");
    assert_eq!(first["client_msg_id"], acks[0]["client_msg_id"], "{first}");
    assert_eq!(first["body"], "line 1", "{first}");
    assert_eq!(first["sender"]["kind"], "customer", "{first}");
    assert_eq!(first["sent_at_ms"], acks[0]["sent_at_ms"], "{first}");

    let (seqs, more, b) = page(2, 2).await;
    assert_eq!((seqs, more), (vec![3, 4], true), "{b}");
    let (seqs, more, b) = page(4, 2).await;
    assert_eq!((seqs, more), (vec![5], false), "{b}");
    // A last page that is exactly full: nothing more.
    let (seqs, more, b) = page(2, 3).await;
    assert_eq!((seqs, more), (vec![3, 4, 5], false), "{b}");
    // Past the end: empty, nothing more.
    let (seqs, more, b) = page(5, 2).await;
    assert_eq!((seqs, more), (vec![], false), "{b}");
}
