//! `aisle-bench settings`: how long a live settings change HQ pushes takes to be in force at
//! every store of a region, with every connection kept open.
//!
//! A real `aisle-hub` and `--stores` real `aisle-edge` processes enrolled at it, each with a
//! staff tablet and a customer connected over WebSockets. HQ pushes `--pushes` region
//! capacities (`PUT /api/settings/region`); after each, every store's `/metrics` is polled
//! until `aisle_settings_version` is the pushed version. The figure is the time from the push's
//! answer to the version in force at a store (the poll interval, 2 ms, bounds its resolution).
//! At the end every tablet and customer must still answer a ping on its original connection.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::http::metric_value;
use crate::hub::{Hub, wait_connected};
use crate::{Customer, Edge, StaffConn};

/// What to run.
#[derive(Debug, Clone)]
pub struct SettingsBenchOptions {
    pub stores: usize,
    pub pushes: usize,
}

/// How often a store's metrics are read while waiting for a version.
const POLL: Duration = Duration::from_millis(2);
/// A push not in force at a store after this long fails the run.
const APPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the scenario and returns its JSON figures.
pub async fn run(o: &SettingsBenchOptions) -> anyhow::Result<Value> {
    if o.stores == 0 || o.pushes == 0 {
        bail!("--stores and --pushes must be at least 1");
    }
    let mut hub = Hub::start("bench").await;
    let mut stores: Vec<(Edge, StaffConn, Customer)> = Vec::new();
    for i in 0..o.stores {
        let edge = hub.start_store(&format!("store-{i}")).await;
        let admin = edge.http().login_admin().await;
        let staff = edge
            .http()
            .create_and_login_staff(&admin, "staff1", "Staff", 8)
            .await;
        let tablet = StaffConn::connect(&edge, &staff, "tablet").await;
        let mut customer = Customer::connect(&edge, "Shopper").await;
        customer.start_conversation().await;
        wait_connected(&edge, APPLY_DEADLINE).await;
        stores.push((edge, tablet, customer));
    }
    let token = hub.admin_token().await;
    let mut latencies_ms: Vec<f64> = Vec::with_capacity(o.pushes * o.stores);
    for push in 0..o.pushes {
        let capacity = 2 + (push % 10) as u32;
        let put = hub
            .http()
            .request(
                "PUT",
                "/api/settings/region",
                Some(&token),
                Some(&json!({"settings": {"routing": {"capacity_per_staff": capacity}}})),
            )
            .await;
        let version = put.expect(200)["layer"]["version"]
            .as_u64()
            .context("the push answered without a version")?;
        let pushed = Instant::now();
        for (i, (edge, _, _)) in stores.iter().enumerate() {
            loop {
                let metrics = edge.http().metrics().await;
                if metric_value(&metrics, "aisle_settings_version") == version as f64 {
                    latencies_ms.push(pushed.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if pushed.elapsed() > APPLY_DEADLINE {
                    bail!(
                        "push {push} (version {version}) not in force at store {i} after {APPLY_DEADLINE:?}"
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
    // Every connection made before the pushes still answers.
    let mut dropped = 0;
    for (edge, tablet, customer) in &mut stores {
        for ws in [&mut tablet.ws, &mut customer.ws] {
            ws.send(json!({"type": "ping"})).await;
            let pong = ws.recv_type("pong").await;
            if pong["type"] != "pong" {
                dropped += 1;
            }
        }
        let metrics = edge.http().metrics().await;
        if metric_value(&metrics, "aisle_connections{role=\"staff\"}") != 1.0 {
            dropped += 1;
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        latencies_ms[i]
    };
    Ok(json!({
        "scenario": "settings",
        "stores": o.stores,
        "pushes": o.pushes,
        "apply_p50_ms": pct(0.5),
        "apply_p99_ms": pct(0.99),
        "apply_max_ms": latencies_ms.last().copied().unwrap_or(0.0),
        "connections_dropped": dropped,
    }))
}
