//! The tamper-evident audit log (docs/security.md, "Audit log") against the real binaries:
//! what staff, admins, the bot, HQ and stores do shows up with the right actor; `audit verify`
//! passes on a real log and names each tampering (an edited entry, a removed middle entry, a
//! removed last entry, caught through the anchor) done with SQLite on the stopped server's file.

use std::path::Path;
use std::process::Command;

use aisle_tests::hub::find_hub_binary;
use aisle_tests::*;

const HOURS: &str = "what time do you open on sunday?";
const STAFF_TEXT: &str = "Happy to help, one moment please";

/// Runs `<binary> --data <dir> audit verify`; returns the exit code and the printed JSON.
fn verify(binary: &Path, data: &Path) -> (i32, Value) {
    let output = Command::new(binary)
        .arg("--data")
        .arg(data)
        .args(["audit", "verify"])
        .env_remove("AISLE_CONFIG")
        .env_remove("AISLE_HUB_CONFIG")
        .output()
        .expect("run audit verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "audit verify printed no JSON ({e}): stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

fn edge_verify(edge: &Edge) -> (i32, Value) {
    verify(&find_edge_binary().unwrap(), edge.data_dir())
}

/// Every entry of the log, through `GET /api/audit` pages of `page` entries.
async fn all_entries(http: &Http, token: &str, page: usize) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0u64;
    loop {
        let r = http
            .get(
                &format!("/api/audit?after={after}&limit={page}"),
                Some(token),
            )
            .await;
        let body = r.expect(200).clone();
        let got = body["entries"].as_array().expect("entries").clone();
        assert!(got.len() <= page, "a page longer than its limit: {body}");
        entries.extend(got);
        match body["next_after"].as_u64() {
            Some(next) => after = next,
            None => return entries,
        }
    }
}

fn find<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

fn one<'a>(entries: &'a [Value], action: &str) -> &'a Value {
    let found = find(entries, action);
    assert_eq!(
        found.len(),
        1,
        "expected one {action} entry, got {found:?} in {entries:#?}"
    );
    found[0]
}

#[tokio::test]
async fn staff_admin_and_bot_actions_are_recorded_with_their_actor() {
    let (edge, admin, staff) = edge_with_staff(1, 8).await;
    let http = edge.http();
    let s = &staff[0];

    // A wrong password, the bot allowed to answer opening hours, a canned reply for it.
    http.try_login(&s.username, "not-the-password")
        .await
        .expect_error(401, "invalid_credentials");
    http.request(
        "PUT",
        "/api/bot-policy",
        Some(&admin.token),
        Some(&json!({"intents":["store_info"],"min_confidence":0.5})),
    )
    .await
    .expect(200);
    let hours = "We are open 9:00-21:00 every day, Sundays included.";
    let reply = http
        .post(
            "/api/canned-replies",
            Some(&admin.token),
            &json!({"shortcut":"hours","title":"Opening hours","body":hours,"intent":"store_info"}),
        )
        .await
        .expect(201)["canned_reply"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Capacity changed, then promoted to admin.
    http.patch_staff(&admin, &s.id, &json!({"capacity": 5}))
        .await;
    http.patch_staff(&admin, &s.id, &json!({"role": "admin"}))
        .await;

    // A customer asks the bot; the staff member comes online (routing, the box's doing, gives
    // them the chat), answers, resolves and reopens it; the admin transfers it to a colleague.
    let plain = http
        .create_and_login_staff(&admin, "plain", "Plain Staff", 4)
        .await;
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start_conversation().await;
    lin.send_msg(&conv, &cmid(), HOURS).await;
    let bot = lin.recv_message(&conv).await;
    assert_eq!(bot["sender"]["kind"], "bot", "{bot}");
    let mut tablet = StaffConn::connect(&edge, s, "tablet").await;
    let ack = tablet.send_msg(&conv, &cmid(), STAFF_TEXT).await;
    let staff_message = ack.str_("message_id").to_string();
    for action in ["resolve", "reopen"] {
        http.conversation_action(&s.token, &conv, &json!({ "action": action }))
            .await
            .expect(200);
    }
    http.conversation_action(
        &admin.token,
        &conv,
        &json!({"action":"transfer","to":plain.id,"note":"over to you, see the receipt"}),
    )
    .await
    .expect(200);
    http.post("/api/logout", Some(&s.token), &json!({}))
        .await
        .expect(204);

    // Only admins read the log.
    http.get("/api/audit", Some(&plain.token))
        .await
        .expect_error(403, "forbidden");
    http.get("/api/audit", None)
        .await
        .expect_error(401, "unauthorized");
    http.get("/api/audit?after=x", Some(&admin.token))
        .await
        .expect_error(400, "bad_request");

    // Pages of 3 hold the whole log, in seq order, chained.
    let entries = all_entries(http, &admin.token, 3).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=entries.len() as u64).collect::<Vec<_>>());
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:?}");
    }
    let staff_actor = format!("staff:{}", s.id);
    let admin_actor = format!("staff:{}", admin.id);

    let first = &entries[0];
    assert_eq!(
        (first["actor"].as_str(), first["action"].as_str()),
        (Some("system"), Some("staff_created")),
        "the first admin is made by the box: {first}"
    );
    let created = find(&entries, "staff_created")
        .into_iter()
        .find(|e| e["target"] == s.id.as_str())
        .unwrap_or_else(|| panic!("no staff_created for {}: {entries:#?}", s.id));
    assert_eq!(created["actor"], admin_actor.as_str(), "{created}");
    assert_eq!(created["details"]["username"], s.username.as_str());

    let failed = one(&entries, "staff_login_failed");
    assert_eq!(failed["actor"], "anonymous", "{failed}");
    assert_eq!(failed["target"], s.id.as_str(), "{failed}");
    assert_eq!(failed["details"]["reason"], "wrong_password", "{failed}");
    assert!(
        !failed.to_string().contains("not-the-password"),
        "a password in the log: {failed}"
    );
    assert!(
        find(&entries, "staff_login")
            .iter()
            .any(|e| e["actor"] == staff_actor.as_str()),
        "no staff_login of {staff_actor}: {entries:#?}"
    );

    let policy = one(&entries, "bot_policy_changed");
    assert_eq!(policy["actor"], admin_actor.as_str());
    assert_eq!(policy["details"]["intents"], json!(["store_info"]));
    let canned = one(&entries, "canned_reply_created");
    assert_eq!(
        (&canned["actor"], &canned["target"]),
        (&json!(admin_actor), &json!(reply))
    );
    let changed = one(&entries, "staff_changed");
    assert_eq!(
        changed["details"]["fields"],
        json!(["capacity"]),
        "{changed}"
    );
    let role = one(&entries, "staff_role_changed");
    assert_eq!(
        (&role["actor"], &role["target"]),
        (&json!(admin_actor), &json!(s.id))
    );
    assert_eq!(role["details"], json!({"from":"staff","to":"admin"}));

    let answer = one(&entries, "bot_answer");
    assert_eq!(
        (&answer["actor"], &answer["target"]),
        (&json!("bot"), &json!(conv))
    );
    assert_eq!(answer["details"]["intent"], "store_info", "{answer}");
    assert_eq!(answer["details"]["message_id"], bot["id"], "{answer}");

    assert!(
        find(&entries, "conversation_claim").is_empty(),
        "routing's assignment is not a staff action: {entries:#?}"
    );
    let sent = one(&entries, "message_sent");
    assert_eq!(sent["actor"], staff_actor.as_str());
    assert_eq!(sent["details"], json!({ "message_id": staff_message }));
    for action in ["conversation_resolve", "conversation_reopen"] {
        let entry = one(&entries, action);
        assert_eq!(
            (&entry["actor"], &entry["target"]),
            (&json!(staff_actor), &json!(conv))
        );
    }
    let transfer = one(&entries, "conversation_transfer");
    assert_eq!(transfer["actor"], admin_actor.as_str());
    assert_eq!(transfer["details"], json!({"from": s.id, "to": plain.id}));
    let logout = one(&entries, "staff_logout");
    assert_eq!(logout["actor"], staff_actor.as_str());

    // Neither what the customer nor what staff wrote is in the log.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains(STAFF_TEXT)
            && !text.contains(HOURS)
            && !text.contains(hours)
            && !text.contains("see the receipt"),
        "message text in the audit log"
    );

    // The CLI agrees with the API, beside the running server.
    let (code, report) = edge_verify(&edge);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries"], json!(entries.len()), "{report}");
    assert_eq!(report["head"], entries.last().unwrap()["hash"], "{report}");
    drop(tablet);
}

/// A staff member writing into a chat nobody holds claims it: two entries, the claim first.
#[tokio::test]
async fn a_staff_message_into_a_queued_chat_is_recorded_as_a_claim_and_a_message() {
    // Capacity 0: routing gives the chat to no one, so it waits in the queue.
    let (edge, admin, staff) = edge_with_staff(1, 0).await;
    let s = &staff[0];
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start_conversation().await;
    lin.send_msg(&conv, &cmid(), "is anyone there?").await;
    let mut tablet = StaffConn::connect(&edge, s, "tablet").await;
    let ack = tablet.send_msg(&conv, &cmid(), STAFF_TEXT).await;

    let entries = all_entries(edge.http(), &admin.token, 100).await;
    let claim = one(&entries, "conversation_claim");
    let sent = one(&entries, "message_sent");
    let staff_actor = format!("staff:{}", s.id);
    for entry in [claim, sent] {
        assert_eq!(
            (&entry["actor"], &entry["target"]),
            (&json!(staff_actor), &json!(conv))
        );
    }
    assert_eq!(claim["details"], json!({"by_sending": true}));
    assert_eq!(sent["details"], json!({"message_id": ack["message_id"]}));
    assert_eq!(
        sent["seq"],
        claim["seq"].as_u64().unwrap() + 1,
        "{entries:#?}"
    );
    drop(tablet);
}

/// `(seq, details)` of every entry, straight from the file.
fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn
        .prepare("SELECT seq, details FROM audit_log ORDER BY seq")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs `sql` (with `?1` = seq) on the stopped server's database.
fn tamper(db: &Path, sql: &str, seq: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    assert_eq!(
        conn.execute(sql, [seq]).unwrap(),
        1,
        "{sql} changed nothing"
    );
}

/// Copies the database (no WAL: the server stopped and checkpointed... or not; the copy is
/// taken with SQLite's own backup so it is whole either way).
fn snapshot(db: &Path, to: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let _ = std::fs::remove_file(to);
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .unwrap();
}

fn restore(from: &Path, db: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
    std::fs::copy(from, db).unwrap();
}

fn assert_fault(report: &(i32, Value), seq: i64, reason: &str) {
    let (code, report) = report;
    assert_eq!(*code, 1, "verify must fail: {report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], seq, "{report}");
    assert_eq!(report["reason"], reason, "{report}");
}

#[tokio::test]
async fn edge_verify_names_an_edited_a_removed_and_a_cut_entry() {
    let (mut edge, admin, staff) = edge_with_staff(2, 4).await;
    let http = edge.http();
    for s in &staff {
        http.patch_staff(&admin, &s.id, &json!({"capacity": 2}))
            .await;
    }
    edge.terminate().await;
    let db = edge.data_dir().join("aisle-edge.db");
    let original = edge.data_dir().join("original.db");
    snapshot(&db, &original);
    let entries = rows(&db);
    let last = entries.len() as i64;
    assert!(last >= 6, "too few entries to tamper with: {entries:?}");

    let (code, report) = edge_verify(&edge);
    assert_eq!((code, &report["ok"]), (0, &json!(true)), "{report}");
    assert_eq!(report["entries"], last, "{report}");
    assert_eq!(
        report["anchor"]["seq"], last,
        "the anchor is the head: {report}"
    );

    // An entry's details edited.
    tamper(
        &db,
        "UPDATE audit_log SET details = '{\"capacity\":99}' WHERE seq = ?1",
        3,
    );
    assert_fault(&edge_verify(&edge), 3, "edited");

    // A middle entry removed.
    restore(&original, &db);
    assert_eq!(edge_verify(&edge).0, 0, "the restored copy verifies");
    tamper(&db, "DELETE FROM audit_log WHERE seq = ?1", 4);
    assert_fault(&edge_verify(&edge), 4, "removed");

    // The last entry removed: the chain alone is consistent, the anchor is not.
    restore(&original, &db);
    tamper(&db, "DELETE FROM audit_log WHERE seq = ?1", last);
    assert_fault(&edge_verify(&edge), last, "removed");

    // Started on that log, the edge records what it found before appending anything else.
    edge.restart().await;
    let admin = edge.http().login_admin().await;
    let entries = all_entries(edge.http(), &admin.token, 100).await;
    let mismatch = &entries[(last - 1) as usize];
    assert_eq!(mismatch["action"], "audit_anchor_mismatch", "{entries:#?}");
    assert_eq!(mismatch["actor"], "system");
    assert_eq!(mismatch["details"]["anchor_seq"], last, "{mismatch}");
    assert_eq!(mismatch["details"]["last_seq"], last - 1, "{mismatch}");
}

#[tokio::test]
async fn hub_actions_are_recorded_and_verify_names_an_edit() {
    let mut hub = Hub::start("audit-region").await;
    let token = hub.admin_token().await;
    let http = hub.http();
    http.post(
        "/api/login",
        None,
        &json!({"username":"admin","password":"wrong-password"}),
    )
    .await
    .expect_error(401, "invalid_credentials");
    let enrollment = hub.register_store("store-a").await;
    let http = hub.http();
    http.post(
        "/api/enroll",
        None,
        &json!({"store_id":"store-a","enrollment_token":"et_wrong"}),
    )
    .await
    .expect_error(401, "invalid_enrollment");
    http.post(
        "/api/enroll",
        None,
        &json!({"store_id":"store-a","enrollment_token":enrollment}),
    )
    .await
    .expect(200);
    http.request(
        "PUT",
        "/api/canned-replies/returns",
        Some(&token),
        Some(&json!({"title":"Returns","body":"Within 30 days with the receipt."})),
    )
    .await
    .expect(200);
    hub.revoke("store-a").await;

    let http = hub.http();
    let r = http.get("/api/audit?limit=100", Some(&token)).await;
    let entries = r.expect(200)["entries"].as_array().unwrap().clone();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "hq_account_created",
            "hq_login",
            "hq_login_failed",
            "store_created",
            "store_enrollment_refused",
            "store_enrolled",
            "canned_reply_put",
            "store_revoked"
        ],
        "{entries:#?}"
    );
    // The first account is made by the hub itself.
    assert_eq!(entries[0]["actor"], "system");
    assert_eq!(
        entries[0]["details"],
        json!({"username":"admin","role":"hq_admin"})
    );
    let entries = &entries[1..];
    let admin_id = entries[0]["target"].as_str().unwrap().to_string();
    let hq = format!("hq:{admin_id}");
    assert_eq!(entries[0]["actor"], hq.as_str());
    assert_eq!(entries[1]["actor"], "anonymous");
    assert_eq!(entries[1]["target"], admin_id.as_str());
    assert_eq!(
        (&entries[2]["actor"], &entries[2]["target"]),
        (&json!(hq), &json!("store-a"))
    );
    assert_eq!(entries[3]["actor"], "store:store-a");
    assert_eq!(entries[3]["details"]["reason"], "bad_token");
    assert_eq!(entries[4]["actor"], "store:store-a");
    assert_eq!(
        (&entries[5]["actor"], &entries[5]["target"]),
        (&json!(hq), &json!("returns"))
    );
    assert_eq!(entries[5]["details"]["store_id"], "store-a");
    assert_eq!(entries[6]["actor"], hq.as_str());
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("wrong-password") && !text.contains("Within 30 days"),
        "a password or a reply's text in the log: {text}"
    );
    http.get("/api/audit?limit=0", Some(&token))
        .await
        .expect_error(400, "bad_request");

    let binary = find_hub_binary().unwrap();
    let (code, report) = verify(&binary, hub.data_dir());
    assert_eq!((code, &report["ok"]), (0, &json!(true)), "{report}");
    assert_eq!(report["entries"], 8, "{report}");
    assert_eq!(report["head"], entries[6]["hash"], "{report}");

    hub.terminate().await;
    // Entry 4 is store-a's registration.
    tamper(
        &hub.database_path(),
        "UPDATE audit_log SET target = 'store-b' WHERE seq = ?1",
        4,
    );
    assert_fault(&verify(&binary, hub.data_dir()), 4, "edited");
    tamper(
        &hub.database_path(),
        "UPDATE audit_log SET target = 'store-a' WHERE seq = ?1",
        4,
    );
    assert_eq!(
        verify(&binary, hub.data_dir()).0,
        0,
        "the entry put back verifies"
    );
    tamper(
        &hub.database_path(),
        "DELETE FROM audit_log WHERE seq = ?1",
        8,
    );
    assert_fault(&verify(&binary, hub.data_dir()), 8, "removed");
}
