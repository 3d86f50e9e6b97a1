//! Images in a chat: uploaded over HTTP, named in a `send`, delivered with the message, kept
//! across a restart; anything that is not an image, too large, or somebody else's upload is
//! refused with a clear error. Also the QR code of a hand-off link and the pages' own-origin
//! policy, which the browser tests (tests/browser) rely on.

use aisle_tests::*;

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0xDA, 0x63, 0x64, 0xF8, 0xCF, 0x50,
    0x0F, 0x00, 0x03, 0x86, 0x01, 0x80, 0x5A, 0x34, 0x7D, 0x6B, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

async fn upload(edge: &Edge, token: &str, bytes: Vec<u8>, content_type: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/attachments", edge.base_url()))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload");
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends the upload `id` as a message with no text; returns its client_msg_id.
async fn send_image(ws: &mut Ws, conversation: &str, id: &str) -> String {
    let cm = cmid();
    ws.send(
        json!({"type":"send","conversation_id":conversation,"client_msg_id":cm,"body":"",
                   "attachment_id":id}),
    )
    .await;
    cm
}

async fn fetch(edge: &Edge, path: &str) -> (u16, String, Vec<u8>) {
    let res = reqwest::get(format!("{}{}", edge.base_url(), path))
        .await
        .expect("get");
    let status = res.status().as_u16();
    let ty = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ty, res.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn an_image_sent_by_the_customer_reaches_staff_and_survives_a_restart() {
    let (mut edge, _admin, staff) = edge_with_staff(1, 8).await;
    let mut wang = StaffConn::connect(&edge, &staff[0], "staff1").await;
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start("r1").await.str_("conversation_id").to_string();
    lin.recv_state(&conv, "assigned").await;

    let (status, body) = upload(&edge, &lin.resume_token, PNG.to_vec(), "image/png").await;
    assert_eq!(status, 201, "{body}");
    let attachment = body["attachment"].clone();
    let id = attachment.str_("id").to_string();
    assert_eq!(attachment["mime"], "image/png", "{body}");
    assert_eq!(attachment["bytes"], PNG.len(), "{body}");
    assert_eq!(
        attachment["url"],
        format!("/api/attachments/{id}"),
        "{body}"
    );

    // An image alone: the body may be empty.
    let cm = send_image(&mut lin.ws, &conv, &id).await;
    let ack = lin.ws.recv_reply("ack", |v| v["client_msg_id"] == cm).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = wang.recv_message(&conv).await;
    assert_eq!(m["attachment"], attachment, "{m}");
    assert_eq!(m["body"], "", "{m}");

    let (status, ty, bytes) = fetch(&edge, attachment.str_("url")).await;
    assert_eq!((status, ty.as_str()), (200, "image/png"));
    assert_eq!(bytes, PNG, "the stored image is the uploaded one");

    edge.restart().await;
    let history = edge.http().messages(&staff[0].token, &conv).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["attachment"], attachment, "{history:?}");
    let (status, _, bytes) = fetch(&edge, attachment.str_("url")).await;
    assert_eq!((status, bytes.as_slice()), (200, PNG));
}

#[tokio::test]
async fn uploads_that_are_not_images_too_large_or_not_yours_are_refused() {
    let edge =
        Edge::start_with(EdgeOptions::default().env("AISLE_LIMITS__MAX_ATTACHMENT_BYTES", 1024))
            .await;
    let admin = edge.http().login_admin().await;
    let mut lin = Customer::connect(&edge, "Lin").await;
    let conv = lin.start("r1").await.str_("conversation_id").to_string();

    // Told by the bytes, not the declared type: an SVG (scripts!) or HTML calling itself PNG.
    let (status, body) = upload(
        &edge,
        &lin.resume_token,
        b"<svg onload=alert(1)/>".to_vec(),
        "image/png",
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type")),
        "{body}"
    );
    let mut big = PNG.to_vec();
    big.resize(2048, 0);
    let (status, body) = upload(&edge, &lin.resume_token, big, "image/png").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    assert!(
        body.str_("/error/message").contains("max_attachment_bytes"),
        "{body}"
    );
    let (status, body) = upload(&edge, "not-a-token", PNG.to_vec(), "image/png").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );

    // The admin's upload can not be attached by the customer, nor can an unknown id.
    let (status, body) = upload(&edge, &admin.token, PNG.to_vec(), "image/png").await;
    assert_eq!(status, 201, "{body}");
    for id in [body["attachment"].str_("id").to_string(), ulid_like()] {
        let cm = send_image(&mut lin.ws, &conv, &id).await;
        let err = lin.ws.recv_error("not_found").await;
        assert_eq!(err["client_msg_id"], cm.as_str(), "{err}");
    }
    // Nothing was stored, and the connection still works.
    assert_send_still_acked(&mut lin.ws, &conv).await;
    assert_eq!(edge.http().messages(&admin.token, &conv).await.len(), 1);
    let (status, _, _) = fetch(&edge, &format!("/api/attachments/{}", ulid_like())).await;
    assert_eq!(status, 404);
}

fn ulid_like() -> String {
    "01JDXW8A0PZ3X6C9V2B5N8M1Q4".into()
}

#[tokio::test]
async fn hand_off_links_get_a_qr_code_drawn_by_the_appliance() {
    let edge = Edge::start().await;
    let link = format!("{}/h/K7Q4M2XP", edge.base_url());
    let (status, ty, svg) = fetch(&edge, &format!("/api/qr.svg?text={}", urlencode(&link))).await;
    assert_eq!((status, ty.as_str()), (200, "image/svg+xml"));
    let svg = String::from_utf8(svg).expect("utf-8");
    assert!(svg.contains("<svg") && svg.contains("<path"), "{svg}");
    let (status, _, _) = fetch(&edge, &format!("/api/qr.svg?text={}", "x".repeat(600))).await;
    assert_eq!(status, 400, "past max_qr_text_bytes");
    let (status, _, _) = fetch(&edge, "/api/qr.svg").await;
    assert_eq!(status, 400, "no text");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The console, the chat and the hand-off link are served by the appliance with a policy that
/// forbids every other origin; only the chat may be framed (the store's own site embeds it).
#[tokio::test]
async fn pages_are_served_from_the_binary_with_an_own_origin_policy() {
    let edge = Edge::start().await;
    for (path, frameable) in [("/", false), ("/chat", true), ("/h/K7Q4M2XP", true)] {
        let res = reqwest::get(format!("{}{}", edge.base_url(), path))
            .await
            .expect("get");
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let h = res.headers();
        assert_eq!(h["content-type"], "text/html", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap().to_owned();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(
            csp.contains("frame-ancestors *"),
            frameable,
            "{path}: {csp}"
        );
        let tag = h["etag"].to_str().unwrap().to_owned();
        let again = reqwest::Client::new()
            .get(format!("{}{}", edge.base_url(), path))
            .header("if-none-match", &tag)
            .send()
            .await
            .expect("get");
        assert_eq!(again.status().as_u16(), 304, "{path}: revalidation");
        assert!(res.text().await.unwrap().contains("<html"), "{path}");
    }
    for path in [
        "/common/i18n.js",
        "/chat/../Cargo.toml",
        "/console/.hidden",
        "/nope/x.js",
    ] {
        let (status, ty, _) = fetch(&edge, path).await;
        match path {
            "/common/i18n.js" => assert_eq!((status, ty.as_str()), (200, "text/javascript")),
            _ => assert_eq!(status, 404, "{path}"),
        }
    }
}
