//! Live settings (docs/settings.md): changes reach the stores and apply without a restart or a
//! dropped connection. What a user would notice: a routing rule added to the box's file sends
//! the next matching chat to the right person; a bad rule set is refused with its reason and
//! the previous rules keep routing; a capacity HQ pushes applies at two stores while every
//! WebSocket stays open; a store that was offline applies HQ's change when it reconnects; the
//! effective settings say where each value came from.

use std::path::Path;
use std::time::{Duration, Instant};

use aisle_tests::*;

/// Generous bound for what takes well under a second on an idle machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// Creates a staff account without its own capacity (it follows the store's
/// `routing.capacity_per_staff`) and logs it in.
async fn staff_following_the_store(
    edge: &Edge,
    admin: &StaffSession,
    username: &str,
    skills: &[&str],
) -> StaffSession {
    let password = format!("pw-{username}-12345");
    edge.http()
        .post(
            "/api/staff",
            Some(&admin.token),
            &json!({"username": username, "name": username, "password": password,
                    "role": "staff", "skills": skills}),
        )
        .await
        .expect(201);
    edge.http().login(username, &password).await
}

async fn settings_at(edge: &Edge, token: &str) -> Value {
    edge.http()
        .get("/api/v1/settings", Some(token))
        .await
        .expect(200)
        .clone()
}

/// Writes the file the way an editor does: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const RETURNS_RULE: &str = r#"
[routing]
capacity_per_staff = 4

[[routing.rules]]
name = "returns desk"
when = { intents = ["return_refund"] }
assign = { skill = "returns" }
"#;

/// A customer who opens a chat and writes `first`; returns the state frame that placed it.
async fn chat_saying(edge: &Edge, name: &str, first: &str) -> (Customer, String, Value) {
    let mut c = Customer::connect(edge, name).await;
    let conv = c.start_conversation().await;
    c.send_msg(&conv, &cmid(), first).await;
    let st = c.recv_state(&conv, "assigned").await;
    (c, conv, st)
}

#[tokio::test]
async fn a_rule_saved_in_the_watched_file_routes_the_next_matching_chat_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "[routing]\ncapacity_per_staff = 4\n").unwrap();
    let mut opts = EdgeOptions::default();
    opts.args
        .extend(["--config".to_string(), file.display().to_string()]);
    let edge = Edge::start_with(opts).await;
    let admin = edge.http().login_admin().await;
    let alice = staff_following_the_store(&edge, &admin, "alice", &[]).await;
    let bob = staff_following_the_store(&edge, &admin, "bob", &["returns"]).await;
    let mut alice_ws = StaffConn::connect(&edge, &alice, "alice").await;
    let mut bob_ws = StaffConn::connect(&edge, &bob, "bob").await;

    let s = settings_at(&edge, &admin.token).await;
    assert_eq!(s["settings"]["routing"]["capacity_per_staff"], 4, "{s}");
    assert_eq!(s["sources"]["routing.capacity_per_staff"], "file", "{s}");
    assert_eq!(s["sources"]["routing.rules"], "default", "{s}");
    let generation = s["generation"].as_u64().unwrap();

    // The rule is saved in the file while everyone is connected.
    save(&file, RETURNS_RULE);
    eventually("the file's rule is in force", DEADLINE, async || {
        let s = settings_at(&edge, &admin.token).await;
        match s["settings"]["routing"]["rules"][0]["name"].as_str() {
            Some("returns desk") if s["sources"]["routing.rules"] == "file" => Ok(()),
            _ => Err(s.to_string()),
        }
    })
    .await;
    let s = settings_at(&edge, &admin.token).await;
    assert!(s["generation"].as_u64().unwrap() > generation, "{s}");
    assert!(s["refused"].is_null(), "{s}");

    // Nobody was disconnected.
    alice_ws.send(json!({"type":"ping"})).await;
    alice_ws.recv_type("pong").await;
    bob_ws.send(json!({"type":"ping"})).await;
    bob_ws.recv_type("pong").await;

    // A return goes to the returns desk (bob), though alice is as free.
    let (_c1, conv1, st) = chat_saying(
        &edge,
        "Wang",
        "I want to return this jacket, can I get a refund?",
    )
    .await;
    assert_eq!(st["agent"]["id"], bob.id.as_str(), "{st}");
    // Anything else goes by the fallback: the least loaded (alice).
    let (_c2, _conv2, st) = chat_saying(&edge, "Li", "What time do you open on Sunday?").await;
    assert_eq!(st["agent"]["id"], alice.id.as_str(), "{st}");

    // A rule naming an intent the model does not know is refused, with the reason; the
    // returns rule keeps routing.
    save(
        &file,
        &RETURNS_RULE.replace("[\"return_refund\"]", "[\"refunds\"]"),
    );
    eventually("the bad edit is refused", DEADLINE, async || {
        let s = settings_at(&edge, &admin.token).await;
        match s["refused"]["reason"].as_str() {
            Some(reason) if reason.contains("refunds") && s["refused"]["source"] == "file" => {
                Ok(())
            }
            _ => Err(s.to_string()),
        }
    })
    .await;
    let s = settings_at(&edge, &admin.token).await;
    assert_eq!(
        s["settings"]["routing"]["rules"][0]["when"]["intents"][0], "return_refund",
        "{s}"
    );
    let refused_key = "aisle_settings_changes_total{outcome=\"refused\",source=\"file\"}";
    let refusals = metric_value(&edge.http().metrics().await, refused_key);
    let (_c3, conv3, st) = chat_saying(&edge, "Zhao", "我想退货，这件外套太小了").await;
    assert_eq!(st["agent"]["id"], bob.id.as_str(), "{st}");
    assert_ne!(conv1, conv3);
    // One save, one refusal: reading the file is not taken for another edit.
    assert_eq!(
        metric_value(&edge.http().metrics().await, refused_key),
        refusals
    );

    // The edit undone: the rule set in force is the file's again, and nothing is refused.
    save(&file, RETURNS_RULE);
    eventually("the refusal is over", DEADLINE, async || {
        let s = settings_at(&edge, &admin.token).await;
        if s["refused"].is_null() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    // The change is in the audit log, with its author; the metrics say how often.
    let audit = edge
        .http()
        .get("/api/audit?limit=100", Some(&admin.token))
        .await
        .expect(200)
        .clone();
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "settings_changed" && e["actor"] == "file"),
        "{audit}"
    );
    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(
            &metrics,
            "aisle_settings_changes_total{outcome=\"refused\",source=\"file\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "aisle_settings_generation") >= 2.0);
}

#[tokio::test]
async fn a_capacity_pushed_by_hq_applies_at_two_stores_with_every_connection_open_and_reaches_an_offline_store_later()
 {
    let mut hub = Hub::start("eu-west").await;
    let mut stores = Vec::new();
    for id in ["store-a", "store-b"] {
        let edge = hub.start_store(id).await;
        let admin = edge.http().login_admin().await;
        let staff = staff_following_the_store(&edge, &admin, "staff1", &[]).await;
        let ws = StaffConn::connect(&edge, &staff, &format!("staff@{id}")).await;
        wait_connected(&edge, DEADLINE).await;
        stores.push((edge, admin, staff, ws));
    }
    // Each store: one customer with a chat held by the staff member (default capacity 8).
    let mut customers = Vec::new();
    for (edge, _, staff, _) in &stores {
        let mut c = Customer::connect(edge, "Chen").await;
        let conv = c.start_conversation().await;
        let st = c.recv_state(&conv, "assigned").await;
        assert_eq!(st["agent"]["id"], staff.id.as_str(), "{st}");
        customers.push((c, conv));
    }

    let token = hub.admin_token().await;
    let pushed = Instant::now();
    let put = hub
        .http()
        .request(
            "PUT",
            "/api/settings/region",
            Some(&token),
            Some(&json!({"settings": {"routing": {"capacity_per_staff": 1}}})),
        )
        .await;
    let version = put.expect(200)["layer"]["version"].as_u64().unwrap();
    for (edge, admin, _, _) in &stores {
        eventually("HQ's capacity is in force", DEADLINE, async || {
            let s = settings_at(edge, &admin.token).await;
            if s["settings"]["routing"]["capacity_per_staff"] == 1
                && s["sources"]["routing.capacity_per_staff"] == "hq_region"
                && s["hq_version"] == version
            {
                Ok(())
            } else {
                Err(s.to_string())
            }
        })
        .await;
    }
    eprintln!(
        "HQ's capacity in force at both stores {} ms after the push",
        pushed.elapsed().as_millis()
    );

    for (i, (edge, admin, staff, ws)) in stores.iter_mut().enumerate() {
        // The account follows the store: capacity 1 now.
        let listed = edge.http().list_staff(&admin.token).await;
        let me = listed
            .iter()
            .find(|s| s["id"] == staff.id.as_str())
            .unwrap();
        assert_eq!(me["capacity"], 1, "{me}");
        // Every connection stayed open and works both ways.
        let (c, conv) = &mut customers[i];
        let ack = ws.send_msg(conv, &cmid(), "still here").await;
        let m = c.recv_message(conv).await;
        assert_eq!(m["id"], ack["message_id"], "{m}");
        c.send_msg(conv, &cmid(), "thanks").await;
        // At capacity 1 a second chat waits in the queue.
        let mut other = Customer::connect(edge, "Sun").await;
        let second = other.start_conversation().await;
        other.recv_state(&second, "queued").await;
        let metrics = edge.http().metrics().await;
        assert_eq!(
            metric_value(&metrics, "aisle_settings_version"),
            version as f64
        );
        assert_eq!(
            metric_value(&metrics, "aisle_connections{role=\"staff\"}"),
            1.0
        );
        customers.push((other, second));
    }

    // Store B goes offline; HQ gives it a capacity of its own meanwhile.
    stores[1].0.kill();
    let put = hub
        .http()
        .request(
            "PUT",
            "/api/stores/store-b/settings",
            Some(&token),
            Some(&json!({"settings": {"routing": {"capacity_per_staff": 3}}})),
        )
        .await;
    put.expect(200);
    // Store A is not concerned.
    let a = settings_at(&stores[0].0, &stores[0].1.token).await;
    assert_eq!(a["settings"]["routing"]["capacity_per_staff"], 1, "{a}");
    let (edge_b, _, _, _) = &mut stores[1];
    edge_b.restart().await;
    let admin_b = edge_b.http().login_admin().await;
    eventually(
        "store B applies its own capacity after reconnecting",
        DEADLINE,
        async || {
            let s = settings_at(edge_b, &admin_b.token).await;
            if s["settings"]["routing"]["capacity_per_staff"] == 3
                && s["sources"]["routing.capacity_per_staff"] == "hq_store"
            {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_chat_waiting_for_its_first_message_does_not_hold_up_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, RETURNS_RULE).unwrap();
    let mut opts = EdgeOptions::default();
    opts.args
        .extend(["--config".to_string(), file.display().to_string()]);
    let edge = Edge::start_with(opts).await;
    let admin = edge.http().login_admin().await;
    let alice = staff_following_the_store(&edge, &admin, "alice", &[]).await;

    // Nobody is online: a silent customer first, then one who asks something.
    let mut silent = Customer::connect(&edge, "Silent").await;
    let waiting = silent.start_conversation().await;
    silent.recv_state(&waiting, "queued").await;
    let mut asking = Customer::connect(&edge, "Asking").await;
    let asked = asking.start_conversation().await;
    asking.recv_state(&asked, "queued").await;
    asking
        .send_msg(&asked, &cmid(), "What time do you open on Sunday?")
        .await;

    // Alice comes online: the chat with a question is hers; the silent one still waits for
    // its first message, without holding the other up.
    let _alice_ws = StaffConn::connect(&edge, &alice, "alice").await;
    let st = asking.recv_state(&asked, "assigned").await;
    assert_eq!(st["agent"]["id"], alice.id.as_str(), "{st}");
    let c = edge.http().conversation(&admin.token, &waiting).await;
    assert_eq!(c["conversation"]["status"], "queued", "{c}");
    // Its first message routes it (no returns desk online: the fallback, alice).
    silent
        .send_msg(&waiting, &cmid(), "Do you have this in blue?")
        .await;
    let st = silent.recv_state(&waiting, "assigned").await;
    assert_eq!(st["agent"]["id"], alice.id.as_str(), "{st}");
}
