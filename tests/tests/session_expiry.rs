//! A staff session ends for open tablets too (api.md "Staff sessions", protocol.md §8): when
//! the token expires, the connection is told `token_expired` and closed, and the token stops
//! working over HTTP.

use aisle_tests::*;

#[tokio::test]
async fn open_staff_connection_is_closed_when_its_session_expires() {
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_SESSION_TTL_SECS", 2)
            .env("AISLE_LIMITS__HEARTBEAT_INTERVAL_SECS", 1)
            .env("AISLE_LIMITS__IDLE_TIMEOUT_SECS", 30),
    )
    .await;
    let admin = edge.http().login_admin().await;
    let mut tablet = StaffConn::connect(&edge, &admin, "tablet").await;

    let close = tablet.ws.wait_close().await;
    let frames = tablet.ws.take_backlog();
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "token_expired"),
        "{}",
        tablet.ws.report(&format!(
            "closed ({close:?}) without a token_expired error: {frames:?}"
        ))
    );
    assert_eq!(
        tablet.ws.close_frame().map(|c| c.0),
        Some(1008),
        "{}",
        tablet.ws.report("close code")
    );
    // The server is fine and a fresh login works.
    edge.http().assert_healthy().await;
    let again = edge.http().login_admin().await;
    let _tablet = StaffConn::connect(&edge, &again, "tablet again").await;
}
