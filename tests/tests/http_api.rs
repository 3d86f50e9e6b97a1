//! The HTTP API as staff and admins use it: login, roles, sessions, metrics.

use aisle_tests::http::metric_samples;
use aisle_tests::*;

#[tokio::test]
async fn login_with_a_wrong_password_is_401_with_a_json_error() {
    let edge = Edge::start().await;
    let http = edge.http();
    http.try_login(ADMIN_USER, "not-the-password")
        .await
        .expect_error(401, "invalid_credentials");
    http.try_login("nobody", "whatever-password")
        .await
        .expect_error(401, "invalid_credentials");
    let admin = http.login(ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(admin.staff["role"], "admin", "{}", admin.staff);
    assert_eq!(admin.username, ADMIN_USER);
    let me = http.get("/api/me", Some(&admin.token)).await;
    assert_eq!(
        me.expect(200)["staff"]["id"],
        admin.id.as_str(),
        "{}",
        me.text
    );
    http.assert_healthy().await;
}

#[tokio::test]
async fn admin_endpoints_are_forbidden_to_plain_staff() {
    let (edge, admin, staff) = edge_with_staff(1, 8).await;
    let http = edge.http();
    let s = &staff[0];
    assert_eq!(s.staff["role"], "staff", "{}", s.staff);

    http.post(
        "/api/staff",
        Some(&s.token),
        &json!({"username":"sneaky","name":"Sneaky","password":"password-123","role":"admin","capacity":8}),
    )
    .await
    .expect_error(403, "forbidden");
    http.patch(
        &format!("/api/staff/{}", admin.id),
        Some(&s.token),
        &json!({"disabled":true}),
    )
    .await
    .expect_error(403, "forbidden");
    http.patch(
        &format!("/api/staff/{}", s.id),
        Some(&s.token),
        &json!({"role":"admin"}),
    )
    .await
    .expect_error(403, "forbidden");
    http.post(
        "/api/canned-replies",
        Some(&s.token),
        &json!({"shortcut":"hours","title":"Opening hours","body":"9–21"}),
    )
    .await
    .expect_error(403, "forbidden");
    // Nothing changed: the sneaky account does not exist, the admin still works.
    http.try_login("sneaky", "password-123")
        .await
        .expect_error(401, "invalid_credentials");
    http.get("/api/me", Some(&admin.token)).await.expect(200);
    let me = http.get("/api/me", Some(&s.token)).await;
    assert_eq!(me.expect(200)["staff"]["role"], "staff", "{}", me.text);

    // What plain staff may do: list colleagues.
    let listed = http.list_staff(&s.token).await;
    assert!(
        listed.iter().any(|e| e["id"] == admin.id.as_str()),
        "{listed:?}"
    );

    // No token or a bad one: 401.
    http.get("/api/conversations", None)
        .await
        .expect_error(401, "unauthorized");
    http.get("/api/conversations", Some("st_bogus"))
        .await
        .expect_error(401, "unauthorized");
    // An admin can create accounts.
    let created = http
        .create_staff(&admin, "lina", "Li Na", "password-456", 8)
        .await;
    assert_eq!(created["username"], "lina", "{created}");
    http.post(
        "/api/staff",
        Some(&admin.token),
        &json!({"username":"lina","name":"Li Na 2","password":"password-789","role":"staff","capacity":8}),
    )
    .await
    .expect_error(409, "conflict");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let (edge, _admin, staff) = edge_with_staff(1, 8).await;
    let http = edge.http();
    let s = &staff[0];
    http.get("/api/me", Some(&s.token)).await.expect(200);
    let r = http.post("/api/logout", Some(&s.token), &json!({})).await;
    assert_eq!(r.status, 204, "logout: {} {}", r.status, r.text);
    http.get("/api/me", Some(&s.token))
        .await
        .expect_error(401, "unauthorized");
    let mut ws = Ws::connect(edge.addr(), "logged-out tablet").await;
    ws.send(json!({"type":"hello","role":"staff","token":s.token}))
        .await;
    ws.recv_error("unauthorized").await;
}

#[tokio::test]
async fn metrics_count_the_messages() {
    let edge = Edge::start().await;
    let before = metric_samples(&edge.http().metrics().await);
    let mut c = Customer::connect(&edge, "Counted").await;
    let conv = c.start_conversation().await;
    const N: usize = 5;
    for i in 0..N {
        c.send_msg(&conv, &cmid(), &format!("m{i}")).await;
    }
    let after_text = edge.http().metrics().await;
    let after = metric_samples(&after_text);
    let value = |samples: &[(String, f64)], key: &str| {
        samples
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    };
    let grown: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| {
            let name = k.split('{').next().unwrap_or("");
            name.contains("message") && !name.ends_with("_bucket") && !name.ends_with("_sum")
        })
        .map(|(k, v)| (k.clone(), v - value(&before, k)))
        .filter(|(_, d)| *d >= N as f64)
        .collect();
    assert!(
        !grown.is_empty(),
        "no message counter in /metrics grew by {N} after {N} acked messages:\n{after_text}"
    );
}
