//! The on-device intent model in the chat, as staff, customers and HQ notice it: every
//! customer message carries the intent the appliance read in it; a complaint or a request for
//! a person makes the chat urgent; the bot answers alone only what the store admin allowed,
//! above the threshold, never a complaint, and every answer is audited; a new model file is
//! swapped in without a restart and a bad one is refused while the old model keeps serving;
//! `aisle-edge classify` reads stdin; intents reach the hub.

use std::io::Write;
use std::time::Duration;

use aisle_tests::*;

const DEADLINE: Duration = Duration::from_secs(10);

const COMPLAINT: &str = "我要投诉！你们店员态度太差了，太让人生气了";
const HOURS: &str = "what time do you open on sunday?";

#[tokio::test]
async fn customer_messages_carry_their_intent_and_complaints_make_the_chat_urgent() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut wang = StaffConn::connect(&edge, &staff[0], "staff1").await;
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start_conversation().await;
    lin.recv_state(&conv, "assigned").await;

    lin.send_msg(&conv, &cmid(), HOURS).await;
    let m = wang.recv_message(&conv).await;
    assert_eq!(m["intent"]["label"], "store_info", "{m}");
    let confidence = m["intent"]["confidence"].as_f64().expect("confidence");
    assert!(confidence > 0.0 && confidence <= 1.0, "{m}");
    assert!(!m.str_("/intent/model").is_empty(), "{m}");
    let open = edge
        .http()
        .list_conversations(&staff[0].token, "status=open")
        .await;
    assert_eq!(open[0]["priority"], "normal", "{open:?}");

    lin.send_msg(&conv, &cmid(), COMPLAINT).await;
    let m = wang.recv_message(&conv).await;
    assert_eq!(m["intent"]["label"], "complaint", "{m}");
    let open = edge
        .http()
        .list_conversations(&staff[0].token, "status=open")
        .await;
    assert_eq!(open[0]["priority"], "high", "{open:?}");

    // Staff messages are not classified; history keeps the readings.
    wang.send_msg(&conv, &cmid(), "I am so sorry, let me help")
        .await;
    let history = edge.http().messages(&staff[0].token, &conv).await;
    let labels: Vec<Option<&str>> = history
        .iter()
        .map(|m| m["intent"]["label"].as_str())
        .collect();
    assert_eq!(labels, vec![Some("store_info"), Some("complaint"), None]);
}

#[tokio::test]
async fn the_bot_answers_only_what_the_admin_allowed_and_never_a_complaint() {
    let edge = Edge::start().await;
    let admin = edge.http().login_admin().await;
    let http = edge.http();

    // A policy naming a complaint or a request for a person is refused outright.
    for label in ["complaint", "human_agent"] {
        http.request(
            "PUT",
            "/api/bot-policy",
            Some(&admin.token),
            Some(&json!({"intents":[label],"min_confidence":0.5})),
        )
        .await
        .expect_error(400, "bad_request");
    }
    http.request(
        "PUT",
        "/api/bot-policy",
        Some(&admin.token),
        Some(&json!({"intents":["store_info"],"min_confidence":0.5})),
    )
    .await
    .expect(200);
    let hours = "We are open 9:00-21:00 every day, Sundays included.";
    http.post(
        "/api/canned-replies",
        Some(&admin.token),
        &json!({"shortcut":"hours","title":"Opening hours","body":hours,"intent":"store_info"}),
    )
    .await
    .expect(201);
    http.post("/api/canned-replies", Some(&admin.token),
        &json!({"shortcut":"sorry","title":"Apology","body":"We are very sorry.","intent":"complaint"}))
        .await
        .expect(201);

    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start_conversation().await;
    let ack = lin.send_msg(&conv, &cmid(), HOURS).await;
    let answer = lin.recv_message(&conv).await;
    assert_eq!(answer["sender"]["kind"], "bot", "{answer}");
    assert_eq!(answer["body"], hours, "{answer}");
    assert_eq!(answer["seq"], ack.u64_("seq") + 1, "{answer}");

    let audit = http.get("/api/bot-answers", Some(&admin.token)).await;
    let audit = audit.expect(200)["bot_answers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["message_id"], answer["id"], "{audit:?}");
    assert_eq!(
        audit[0]["answered_message_id"], ack["message_id"],
        "{audit:?}"
    );
    assert_eq!(audit[0]["intent"], "store_info", "{audit:?}");

    // A complaint gets no bot answer (even with a canned reply for it), and from then on the
    // bot stays out of this conversation.
    lin.send_msg(&conv, &cmid(), COMPLAINT).await;
    lin.send_msg(&conv, &cmid(), HOURS).await;
    lin.expect_none(500, "a bot answer after a complaint", |v| {
        v["type"] == "message" && v["sender"]["kind"] == "bot"
    })
    .await;
    let audit = http.get("/api/bot-answers", Some(&admin.token)).await;
    assert_eq!(
        audit.expect(200)["bot_answers"].as_array().map(Vec::len),
        Some(1)
    );
    let open = http.list_conversations(&admin.token, "status=open").await;
    assert_eq!(open[0]["priority"], "high", "{open:?}");

    // Only admins change the policy or read the audit.
    let staff = http
        .create_and_login_staff(&admin, "staff1", "Staff One", 8)
        .await;
    http.request(
        "PUT",
        "/api/bot-policy",
        Some(&staff.token),
        Some(&json!({"intents":[],"min_confidence":0.9})),
    )
    .await
    .expect_error(403, "forbidden");
    http.get("/api/bot-answers", Some(&staff.token))
        .await
        .expect_error(403, "forbidden");
}

#[tokio::test]
async fn a_new_model_file_is_swapped_in_and_a_bad_one_refused_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("intent.onnx");
    let good = std::fs::read(repo_root().join("models/intent.onnx")).expect("committed model");
    std::fs::write(&model, &good).expect("write model");
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_MODEL__PATH", model.display())).await;
    let health = edge.http().healthz().await.expect(200).clone();
    let version = health.str_("/model/version").to_string();
    assert!(!version.is_empty(), "{health}");
    assert!(health["model"]["error"].is_null(), "{health}");

    // A corrupt file: refused, reported, the model in force keeps answering.
    std::fs::write(&model, b"not an onnx model at all").expect("write garbage");
    let refused = eventually("the corrupt model is refused", DEADLINE, async || {
        let h = edge.http().healthz().await.expect(200).clone();
        if h["model"]["error"].is_string() {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert_eq!(refused["model"]["version"], version.as_str(), "{refused}");
    let metrics = edge.http().metrics().await;
    assert!(metric_value(&metrics, "aisle_model_reloads_total{outcome=\"refused\"}") >= 1.0);
    let (edge_staff, mut customer) = (
        edge.http().login_admin().await,
        Customer::connect(&edge, "Lin").await,
    );
    let conv = customer.start_conversation().await;
    customer.send_msg(&conv, &cmid(), HOURS).await;
    let history = edge.http().messages(&edge_staff.token, &conv).await;
    assert_eq!(history[0]["intent"]["label"], "store_info", "{history:?}");

    // The good file again (written elsewhere and moved in, as an update would): swapped in.
    let staged = dir.path().join("staged.onnx");
    std::fs::write(&staged, &good).expect("stage");
    std::fs::rename(&staged, &model).expect("move into place");
    eventually("the good model is swapped in", DEADLINE, async || {
        let h = edge.http().healthz().await.expect(200).clone();
        if h["model"]["error"].is_null() {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let metrics = edge.http().metrics().await;
    assert!(metric_value(&metrics, "aisle_model_reloads_total{outcome=\"swapped\"}") >= 1.0);
    assert_eq!(
        metric_value(
            &metrics,
            &format!("aisle_model_info{{version=\"{version}\"}}")
        ),
        1.0
    );
}

#[tokio::test]
async fn aisle_edge_classify_prints_one_json_object_per_line() {
    let bin = find_edge_binary().expect("aisle-edge binary");
    let mut child = std::process::Command::new(bin)
        .arg("classify")
        .env("AISLE_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn classify");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{COMPLAINT}\n{HOURS}\n\nwhere is my order #A1029?\n").as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("classify output");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let intents: Vec<&str> = lines.iter().map(|l| l.str_("intent")).collect();
    assert_eq!(intents[0], "complaint", "{lines:?}");
    assert_eq!(intents[1], "store_info", "{lines:?}");
    assert_eq!(intents[3], "order_status", "{lines:?}");
    for l in &lines {
        let c = l["confidence"].as_f64().expect("confidence");
        assert!((0.0..=1.0).contains(&c), "{l}");
    }
}

#[tokio::test]
async fn intents_reach_the_hub_and_hq_filters_by_them() {
    let mut hub = Hub::start("north").await;
    let edge = hub.start_store("store-a").await;
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start_conversation().await;
    lin.send_msg(&conv, &cmid(), COMPLAINT).await;
    let token = hub.admin_token().await;
    eventually(
        "HQ lists the conversation as a complaint",
        DEADLINE,
        async || {
            let r = hub
                .http()
                .get("/api/conversations?intent=complaint", Some(&token))
                .await;
            let list = r.expect(200)["conversations"].clone();
            match list.as_array() {
                Some(l) if l.iter().any(|c| c["id"] == conv.as_str()) => Ok(()),
                _ => Err(list.to_string()),
            }
        },
    )
    .await;
    let t = hub
        .http()
        .get(&format!("/api/conversations/{conv}"), Some(&token))
        .await;
    let t = t.expect(200);
    assert_eq!(t["messages"][0]["intent"], "complaint", "{t}");
    assert_eq!(t["conversation"]["intent"], "complaint", "{t}");
}
