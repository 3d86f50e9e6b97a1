//! Capacity as a client meets it: the open-file limit caps `max_connections` (HTTP 503 past
//! it, open connections unaffected), running out of descriptors in `accept` neither kills nor
//! wedges the server, and idle connections that stop answering are reaped by the heartbeat.
//!
//! Every server here runs with a hard open-file limit of [`NOFILE`] descriptors (a `ulimit`
//! wrapper around the real binary), so that limits are reached with a few hundred sockets.

use std::sync::Once;

use aisle_tests::http::metric_value;
use aisle_tests::*;
use tokio::net::TcpStream;

/// The hard (and soft) open-file limit the servers of this file start with.
const NOFILE: usize = 256;
/// Descriptors the server keeps back from connections in these tests: leaves 20.
const RESERVED: usize = 236;
const ROOM: usize = NOFILE - RESERVED;

/// Points the harness at a wrapper that lowers the open-file limit, then execs the real
/// `aisle-edge`. Set once, before any server starts, for every test of this binary.
fn use_low_nofile_wrapper() {
    static WRAPPER: Once = Once::new();
    WRAPPER.call_once(|| {
        let real = find_edge_binary().expect("aisle-edge binary");
        let dir = std::env::temp_dir().join(format!("aisle-capacity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("wrapper dir");
        let wrapper = dir.join("aisle-edge");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nulimit -n {NOFILE} || exit 97\nexec '{}' \"$@\"\n",
                real.display()
            ),
        )
        .expect("write wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("chmod wrapper");
        // SAFETY: runs once, before any thread of this test binary reads the environment
        // (every test calls this first; `Once` makes the others wait).
        unsafe { std::env::set_var("AISLE_EDGE_BIN", &wrapper) };
    });
}

fn limit_key(limit: &str) -> String {
    format!("aisle_limit_exceeded_total{{limit=\"{limit}\"}}")
}

async fn assert_ping_pong(ws: &mut Ws) {
    ws.send(json!({"type":"ping"})).await;
    ws.recv_type("pong").await;
}

/// With 256 descriptors and 236 of them reserved, the configured `max_connections` (19,000
/// by default) is lowered to 20: the start-up log and `/metrics` say so, the 21st upgrade gets
/// HTTP 503 `too_many_connections` with a JSON body, and the 20 open connections keep working.
/// Then a flood of raw TCP connections uses up every descriptor: `accept` fails with EMFILE,
/// which is counted and logged, the open chats keep working meanwhile, and once the flood goes
/// away the server answers HTTP and WebSocket again.
#[tokio::test]
async fn descriptor_limit_caps_connections_and_emfile_does_not_stop_the_server() {
    use_low_nofile_wrapper();
    let edge = Edge::start_with(
        EdgeOptions::default().env("AISLE_LIMITS__RESERVED_FILE_DESCRIPTORS", RESERVED),
    )
    .await;
    let metrics = edge.http().metrics().await;
    assert_eq!(
        metric_value(&metrics, "aisle_open_files_limit"),
        NOFILE as f64,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "aisle_max_connections"),
        ROOM as f64,
        "max_connections is not lowered to the descriptors left: {metrics}"
    );
    assert!(
        edge.logs()
            .contains("allows fewer connections than limits.max_connections"),
        "the start-up log does not say that max_connections was lowered:\n{}",
        edge.logs()
    );

    let mut open = Vec::new();
    for i in 0..ROOM {
        let mut c = Customer::connect(&edge, &format!("shopper {i}")).await;
        let conv = c.start_conversation().await;
        open.push((c, conv));
    }
    let (status, body) = Ws::connect_refused(edge.addr(), "one too many").await;
    assert_eq!(status, 503, "upgrade past the limit: {status} {body}");
    assert_eq!(body.at("/error/code"), "too_many_connections", "{body}");
    assert!(body.at("/error/message").is_string(), "{body}");
    for (c, conv) in open.iter_mut() {
        assert_ping_pong(&mut c.ws).await;
        assert_send_still_acked(&mut c.ws, conv).await;
    }
    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, &limit_key("max_connections")) >= 1.0,
        "{metrics}"
    );

    // Use up every descriptor the server has left: plain TCP connections that never send a
    // request (the kernel completes them; the server accepts until EMFILE, then the rest
    // wait in the backlog).
    let mut flood = Vec::new();
    for _ in 0..NOFILE {
        flood.push(
            TcpStream::connect(edge.addr())
                .await
                .expect("loopback connect"),
        );
    }
    eventually(
        "the server logs that accept ran out of descriptors",
        RECV_TIMEOUT,
        async || {
            if edge.logs().contains("out of file descriptors") {
                Ok(())
            } else {
                Err("no such log line yet".to_string())
            }
        },
    )
    .await;
    // Meanwhile the chats already open go on: they need no new descriptor.
    for (c, conv) in open.iter_mut().take(5) {
        assert_ping_pong(&mut c.ws).await;
        assert_send_still_acked(&mut c.ws, conv).await;
    }
    assert!(
        edge.pid()
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "the server died when it ran out of descriptors"
    );

    drop(flood);
    // The server frees the flood's sockets as it sees them close, and serves again.
    let metrics = eventually("GET /metrics answers again", RECV_TIMEOUT, async || {
        match aisle_tests::edge::http_get_raw(edge.addr(), "/metrics").await {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        metric_value(&metrics, &limit_key("nofile")) >= 1.0,
        "EMFILE in accept is not counted as {}:\n{metrics}",
        limit_key("nofile")
    );
    edge.http().assert_healthy().await;
    // A freed WebSocket slot is taken by a new connection.
    let (c, _) = open.pop().expect("connections");
    c.ws.close().await;
    let mut again = eventually(
        "a new connection after one closed",
        RECV_TIMEOUT,
        async || {
            Ws::try_connect(edge.addr(), "after the flood")
                .await
                .map_err(|e| format!("{e:#}"))
        },
    )
    .await;
    again.hello_customer("back again").await;
    assert_ping_pong(&mut again).await;
    for (c, conv) in open.iter_mut() {
        assert_send_still_acked(&mut c.ws, conv).await;
    }
}

/// With a heartbeat every second and a 3 s idle timeout, a client that goes silent without
/// closing (its socket stays open, it reads nothing and answers no ping) is closed by the
/// server (close code 1000 "idle timeout"), and `aisle_connections{role="customer"}` goes back down;
/// a client that sends nothing but reads (its WebSocket library answers the pings) stays.
#[tokio::test]
async fn heartbeat_reaps_a_silent_connection_and_keeps_a_listening_one() {
    use_low_nofile_wrapper();
    let edge = Edge::start_with(
        EdgeOptions::default()
            .env("AISLE_LIMITS__RESERVED_FILE_DESCRIPTORS", RESERVED)
            .env("AISLE_LIMITS__HEARTBEAT_INTERVAL_SECS", 1)
            .env("AISLE_LIMITS__IDLE_TIMEOUT_SECS", 3),
    )
    .await;
    let customers = "aisle_connections{role=\"customer\"}";
    let mut listening = Customer::connect(&edge, "Listening").await;
    let conv = listening.start_conversation().await;
    let mut silent = Customer::connect(&edge, "Silent").await;
    silent.start_conversation().await;
    let metrics = edge.http().metrics().await;
    assert_eq!(metric_value(&metrics, customers), 2.0, "{metrics}");

    // From here `silent` is not read at all: no pong ever leaves it. `listening` reads (and
    // so answers pings) for well past the idle timeout, receiving no frame.
    listening.recv_state(&conv, "queued").await;
    listening.expect_silence(5_000).await;

    eventually(
        "the silent connection is closed and no longer counted",
        RECV_TIMEOUT,
        async || {
            let m = edge.http().metrics().await;
            match metric_value(&m, customers) {
                1.0 => Ok(()),
                n => Err(format!("{customers} = {n}")),
            }
        },
    )
    .await;
    // The server's close frame (1000 "idle timeout") sits behind its pings; a client library
    // that answers those pings on the closed socket may see the broken pipe first.
    let close = silent.wait_close().await;
    assert!(
        close.is_none() || close == Some((1000, "idle timeout".to_string())),
        "{}",
        silent.report("the silent connection's close")
    );
    assert!(silent.is_closed());
    let metrics = edge.http().metrics().await;
    assert!(
        metric_value(&metrics, &limit_key("idle_timeout_secs")) >= 1.0,
        "{metrics}"
    );
    assert_ping_pong(&mut listening.ws).await;
    assert_send_still_acked(&mut listening.ws, &conv).await;
    assert_eq!(
        metric_value(&edge.http().metrics().await, customers),
        1.0,
        "the listening connection must still be counted"
    );
}
