//! What a store admin manages over HTTP (api.md): canned replies and disabling a staff
//! account.

use aisle_tests::*;

fn find<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["canned_replies"]
        .as_array()
        .unwrap_or_else(|| panic!("no canned_replies array: {list}"))
        .iter()
        .find(|r| r["id"] == id)
}

/// Admin creates (201), staff list, admin updates (200) and deletes (204) a canned reply;
/// plain staff may read but not write (403).
#[tokio::test]
async fn canned_replies_crud_by_admin_read_by_staff() {
    let (edge, admin, staff) = edge_with_staff(1, 8).await;
    let http = edge.http();
    let s = &staff[0];

    let r = http
        .post(
            "/api/canned-replies",
            Some(&admin.token),
            &json!({"shortcut":"hours","title":"Opening hours","body":"We are open 9:00–21:00 every day."}),
        )
        .await;
    let created = r.expect(201)["canned_reply"].clone();
    let id = created.str_("id").to_string();
    assert!(is_ulid(&id), "{created}");
    assert_eq!(created["shortcut"], "hours", "{created}");
    assert_eq!(created["title"], "Opening hours", "{created}");
    assert_eq!(
        created["body"], "We are open 9:00–21:00 every day.",
        "{created}"
    );

    // Any staff member can list them.
    let list = http.get("/api/canned-replies", Some(&s.token)).await;
    let listed = find(list.expect(200), &id)
        .unwrap_or_else(|| panic!("created reply not listed: {}", list.text))
        .clone();
    assert_eq!(listed, created, "listed differs from created");
    http.get("/api/canned-replies", None)
        .await
        .expect_error(401, "unauthorized");

    // Plain staff may not write.
    http.post(
        "/api/canned-replies",
        Some(&s.token),
        &json!({"shortcut":"x","title":"X","body":"x"}),
    )
    .await
    .expect_error(403, "forbidden");
    http.request(
        "PUT",
        &format!("/api/canned-replies/{id}"),
        Some(&s.token),
        Some(&json!({"shortcut":"hours","title":"Hacked","body":"closed forever"})),
    )
    .await
    .expect_error(403, "forbidden");
    http.request(
        "DELETE",
        &format!("/api/canned-replies/{id}"),
        Some(&s.token),
        None,
    )
    .await
    .expect_error(403, "forbidden");

    // Admin updates it.
    let r = http
        .request(
            "PUT",
            &format!("/api/canned-replies/{id}"),
            Some(&admin.token),
            Some(&json!({"shortcut":"hours","title":"Opening hours (summer)","body":"9:00–22:00 in July and August."})),
        )
        .await;
    let updated = r.expect(200)["canned_reply"].clone();
    assert_eq!(updated["id"], id.as_str(), "{updated}");
    assert_eq!(updated["title"], "Opening hours (summer)", "{updated}");
    let list = http.get("/api/canned-replies", Some(&s.token)).await;
    let listed = find(list.expect(200), &id).cloned();
    assert_eq!(
        listed.as_ref().map(|r| r["body"].clone()),
        Some(json!("9:00–22:00 in July and August.")),
        "{}",
        list.text
    );
    assert_eq!(
        listed.as_ref().map(|r| r["title"].clone()),
        Some(json!("Opening hours (summer)")),
        "the update was not applied: {}",
        list.text
    );

    // Admin deletes it.
    let r = http
        .request(
            "DELETE",
            &format!("/api/canned-replies/{id}"),
            Some(&admin.token),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}: {} {}", r.what, r.status, r.text);
    let list = http.get("/api/canned-replies", Some(&s.token)).await;
    assert!(
        find(list.expect(200), &id).is_none(),
        "deleted reply still listed: {}",
        list.text
    );
    http.request(
        "PUT",
        &format!("/api/canned-replies/{id}"),
        Some(&admin.token),
        Some(&json!({"shortcut":"hours","title":"Back","body":"again"})),
    )
    .await
    .expect_error(404, "not_found");
}

/// `PATCH /api/staff/{id} {"disabled":true}`: the account's session token stops working at
/// once (HTTP 401, WebSocket `unauthorized`) and its login fails; enabling it again lets
/// the person log in anew.
#[tokio::test]
async fn disabled_staff_cannot_use_their_token_or_log_in() {
    let (edge, admin, staff) = edge_with_staff(2, 8).await;
    let http = edge.http();
    let s = &staff[0];
    let password = format!("pw-{}-12345", s.username);
    http.get("/api/me", Some(&s.token)).await.expect(200);
    // The colleague is online with one chat; the soon-disabled member's tablet is open with
    // none, so least-loaded routing would pick them.
    let mut colleague = StaffConn::connect(&edge, &staff[1], "colleague").await;
    let mut first = Customer::connect(&edge, "First").await;
    let conv1 = first.start_conversation().await;
    let st = first.recv_state(&conv1, "assigned").await;
    assert_eq!(st["agent"]["id"], colleague.id(), "{st}");
    let mut tablet = StaffConn::connect(&edge, s, "soon disabled").await;

    let patched = http
        .patch_staff(&admin, &s.id, &json!({"disabled":true}))
        .await;
    assert_eq!(patched["id"], s.id.as_str(), "{patched}");
    assert_eq!(patched["disabled"], true, "{patched}");

    // api.md: the open tablet is told `unauthorized` and closed (1008).
    let close = tablet.wait_close().await;
    let frames = tablet.take_backlog();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "unauthorized"),
        "{}",
        tablet.report(&format!(
            "the disabled account's open tablet got no unauthorized error (close {close:?})"
        ))
    );
    assert_eq!(
        close.as_ref().map(|c| c.0),
        Some(1008),
        "{}",
        tablet.report("the disabled account's open tablet must be closed with 1008")
    );

    let r = http.get("/api/me", Some(&s.token)).await;
    assert_eq!(
        r.status, 401,
        "a disabled account's token still works: {} {}",
        r.status, r.text
    );
    assert!(r.error_code().is_some(), "{}", r.text);
    http.get("/api/conversations", Some(&s.token))
        .await
        .expect_error(401, "unauthorized");
    let r = http.try_login(&s.username, &password).await;
    assert_eq!(
        r.status, 401,
        "a disabled account can log in: {} {}",
        r.status, r.text
    );
    assert!(r.error_code().is_some(), "{}", r.text);
    let mut ws = Ws::connect(edge.addr(), "disabled staff tablet").await;
    ws.send(json!({"type":"hello","role":"staff","token":s.token}))
        .await;
    ws.recv_error("unauthorized").await;

    // A new chat does not go to the disabled account, although its tablet is still open.
    let mut second = Customer::connect(&edge, "Second").await;
    let conv2 = second.start_conversation().await;
    let st = second.recv_state(&conv2, "assigned").await;
    assert_eq!(
        st["agent"]["id"],
        colleague.id(),
        "a new chat was routed to a disabled staff member: {st}"
    );
    colleague.recv_state(&conv2, "assigned").await;

    // The colleague is unaffected; the list shows the account as disabled.
    http.get("/api/me", Some(&staff[1].token)).await.expect(200);
    let listed = http.list_staff(&staff[1].token).await;
    let entry = listed
        .iter()
        .find(|e| e["id"] == s.id.as_str())
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(entry["disabled"], true, "{entry}");

    // Enabled again: a new login works; the old session stays ended.
    let patched = http
        .patch_staff(&admin, &s.id, &json!({"disabled":false}))
        .await;
    assert_eq!(patched["disabled"], false, "{patched}");
    let again = http.login(&s.username, &password).await;
    http.get("/api/me", Some(&again.token)).await.expect(200);
    http.get("/api/me", Some(&s.token))
        .await
        .expect_error(401, "unauthorized");
}
