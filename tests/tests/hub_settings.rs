//! HQ's live settings at a real `aisle-hub` (docs/hub-api.md, "HQ live settings"): the region
//! layer is stored with a growing version and refused whole when a setting is wrong (400
//! `invalid_settings` naming it, the previous layer kept); only `hq_admin` writes; a store
//! registered afterwards gets the region layer; a store's own layer wins over the region's in
//! the effective settings, and `{}` clears it.
//!
//! On PostgreSQL too (`HUB_TEST_POSTGRES_URL`, ci/hub-postgres).

use aisle_tests::*;

/// `PUT path {"settings": settings}` as `token`.
async fn put_settings(hub: &Hub, path: &str, token: Option<&str>, settings: Value) -> Resp {
    hub.http()
        .request("PUT", path, token, Some(&json!({ "settings": settings })))
        .await
}

async fn region_layer(hub: &Hub, token: &str) -> Value {
    hub.http()
        .get("/api/settings/region", Some(token))
        .await
        .expect(200)["layer"]
        .clone()
}

/// Asserts a 400 `invalid_settings` whose message names `path`.
#[track_caller]
fn assert_refused(r: &Resp, path: &str) {
    r.expect_error(400, "invalid_settings");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(path),
        "{}: the message does not name {path}: {message}",
        r.what
    );
}

#[tokio::test]
async fn the_region_layer_is_versioned_validated_and_written_by_admins_only() {
    let mut hub = Hub::start("eu-west").await;
    hub.register_store("shop-1").await;
    // A read-only HQ account (the hub has no account API yet: the row is written while the
    // hub is stopped, as in authz.rs).
    hub.terminate().await;
    hub.execute(
        "INSERT INTO accounts (id, username, password_hash, role, created_at_ms)
         SELECT 'viewer-1', 'viewer', password_hash, 'hq_viewer', created_at_ms
         FROM accounts WHERE username = 'admin'",
    );
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

    assert_eq!(region_layer(&hub, &admin).await, Value::Null);
    let region = "/api/settings/region";
    let first = put_settings(
        &hub,
        region,
        Some(&admin),
        json!({"routing": {"capacity_per_staff": 12}}),
    )
    .await;
    let first = first.expect(200).clone();
    assert_eq!(first["stores"], json!(["shop-1"]), "{first}");
    let layer = &first["layer"];
    assert_eq!(
        layer["settings"],
        json!({"routing": {"capacity_per_staff": 12}})
    );
    assert!(
        layer["author"].as_str().unwrap().starts_with("hq:"),
        "{layer}"
    );
    let v1 = layer["version"].as_u64().expect("a version");
    assert!(v1 > 0);
    assert_eq!(&region_layer(&hub, &viewer).await, layer);

    let second = put_settings(
        &hub,
        region,
        Some(&admin),
        json!({"routing": {"capacity_per_staff": 14, "fallback": "queue"}}),
    )
    .await;
    let saved = second.expect(200)["layer"].clone();
    assert!(saved["version"].as_u64().unwrap() > v1, "{saved}");
    assert_eq!(region_layer(&hub, &admin).await, saved);

    // Each fault is refused whole, named by its path, and the saved layer stays.
    let faults = [
        (
            json!({"routing": {"rules": [{"name": "refunds", "when": {"intents": ["refunds"]},
                                          "assign": {"team": "desk"}}]}}),
            "routing.rules[0].when.intents",
        ),
        (json!({"routing": {"capacity": 3}}), "routing.capacity"),
        (
            json!({"routing": {"capacity_per_staff": 100000}}),
            "routing.capacity_per_staff",
        ),
        (
            json!({"routing": {"rules": [{"name": "two", "assign": {"team": "a", "skill": "b"}}]}}),
            "routing.rules[0].assign",
        ),
        (json!({"bot": {"intents": ["complaint"]}}), "bot.intents"),
        (json!(5), "settings"),
    ];
    for (settings, path) in faults {
        let r = put_settings(&hub, region, Some(&admin), settings).await;
        assert_refused(&r, path);
        assert_eq!(region_layer(&hub, &admin).await, saved, "after {path}");
    }
    let r = put_settings(
        &hub,
        region,
        Some(&admin),
        json!({"routing": {"rules": [{"name": "r", "when": {"intents": ["refunds"]},
                                      "assign": {"skill": "x"}}]}}),
    )
    .await;
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown intent \"refunds\""), "{message}");

    // Who may write: an hq_viewer reads but gets 403; no session gets a JSON 401.
    let r = put_settings(
        &hub,
        region,
        Some(&viewer),
        json!({"routing": {"capacity_per_staff": 1}}),
    )
    .await;
    r.expect_error(403, "forbidden");
    let r = put_settings(&hub, region, None, json!({})).await;
    r.expect_error(401, "unauthorized");
    hub.http()
        .get(region, None)
        .await
        .expect_error(401, "unauthorized");
    let r = put_settings(
        &hub,
        "/api/stores/shop-1/settings",
        Some(&viewer),
        json!({}),
    )
    .await;
    r.expect_error(403, "forbidden");
    hub.http()
        .get("/api/stores/shop-1/settings", None)
        .await
        .expect_error(401, "unauthorized");
    assert_eq!(region_layer(&hub, &admin).await, saved);

    // Each accepted edit left one entry for the hub's row and one per store document.
    let audit = hub
        .http()
        .get("/api/audit?limit=500", Some(&admin))
        .await
        .expect(200)["entries"]
        .clone();
    let changes: Vec<(String, Value)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "settings_changed")
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_string(),
                e["details"].clone(),
            )
        })
        .collect();
    let targets: Vec<&str> = changes.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        ["region", "shop-1", "region", "shop-1"],
        "{changes:?}"
    );
    assert_eq!(changes[3].1["scope"], "region");
    assert_eq!(changes[3].1["store_id"], "shop-1");
    assert_eq!(changes[3].1["version"], saved["version"]);
}

#[tokio::test]
async fn a_later_store_gets_the_region_layer_and_its_own_layer_wins() {
    let mut hub = Hub::start("eu-west").await;
    let admin = hub.admin_token().await;
    let region = put_settings(
        &hub,
        "/api/settings/region",
        Some(&admin),
        json!({"routing": {"capacity_per_staff": 6, "fallback": "queue"},
               "bot": {"intents": ["store_info"]}}),
    )
    .await;
    let region = region.expect(200).clone();
    assert_eq!(region["stores"], json!([]), "no store yet: {region}");

    hub.register_store("shop-2").await;
    let path = "/api/stores/shop-2/settings";
    let view = hub.http().get(path, Some(&admin)).await.expect(200).clone();
    assert_eq!(view["store_id"], "shop-2");
    assert_eq!(view["region"], region["layer"], "{view}");
    assert_eq!(view["store"], Value::Null);
    let effective = &view["effective"];
    assert_eq!(effective["settings"]["routing"]["capacity_per_staff"], 6);
    assert_eq!(
        effective["sources"]["routing.capacity_per_staff"],
        "hq_region"
    );
    assert_eq!(effective["sources"]["hours.utc_offset_minutes"], "default");

    // The store's own layer wins where it sets a value.
    let r = put_settings(
        &hub,
        path,
        Some(&admin),
        json!({"routing": {"capacity_per_staff": 3}}),
    )
    .await;
    let view = r.expect(200).clone();
    let store_version = view["store"]["version"].as_u64().expect("a version");
    let effective = &view["effective"];
    assert_eq!(effective["settings"]["routing"]["capacity_per_staff"], 3);
    assert_eq!(
        effective["sources"]["routing.capacity_per_staff"],
        "hq_store"
    );
    assert_eq!(effective["settings"]["routing"]["fallback"], "queue");
    assert_eq!(effective["sources"]["routing.fallback"], "hq_region");
    assert_eq!(effective["sources"]["bot.intents"], "hq_region");
    assert_eq!(hub.http().get(path, Some(&admin)).await.expect(200), &view);

    // A wrong store layer is refused and the saved one stays.
    let r = put_settings(
        &hub,
        path,
        Some(&admin),
        json!({"hours": {"open": [{"days": ["monday"], "from": "09:00", "to": "21:00"}]}}),
    )
    .await;
    assert_refused(&r, "hours.open[0].days");
    assert_eq!(hub.http().get(path, Some(&admin)).await.expect(200), &view);

    // `{}` clears it: the region's value again, with a newer version.
    let cleared = put_settings(&hub, path, Some(&admin), json!({})).await;
    let cleared = cleared.expect(200).clone();
    assert_eq!(cleared["store"]["settings"], json!({}));
    assert!(cleared["store"]["version"].as_u64().unwrap() > store_version);
    assert_eq!(
        cleared["effective"]["settings"]["routing"]["capacity_per_staff"],
        6
    );
    assert_eq!(
        cleared["effective"]["sources"]["routing.capacity_per_staff"],
        "hq_region"
    );

    // A store that is not registered.
    hub.http()
        .get("/api/stores/nope/settings", Some(&admin))
        .await
        .expect_error(404, "not_found");
    put_settings(&hub, "/api/stores/nope/settings", Some(&admin), json!({}))
        .await
        .expect_error(404, "not_found");
}
