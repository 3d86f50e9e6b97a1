//! `aisle-image verify URL`: after a box boots, asks it who it is and whether it syncs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct Expect {
    pub store: Option<String>,
    pub region: Option<String>,
    /// Also require the box to be enrolled and syncing with its hub.
    pub synced: bool,
}

/// Polls `URL/healthz` until it answers (or `wait` runs out), then checks it against `expect`.
/// Returns the box's `/healthz` document.
pub fn verify(url: &str, expect: &Expect, wait: Duration) -> anyhow::Result<Value> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!("{}/healthz", url.trim_end_matches('/'));
    let deadline = Instant::now() + wait;
    let health: Value = loop {
        let attempt = client
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<Value>());
        match attempt {
            Ok(health) => {
                let synced = health["enrolled"] == true && health["syncing"] == true;
                if !expect.synced || synced || Instant::now() >= deadline {
                    break health;
                }
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("the box does not answer at {url}"));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if health["service"] != "aisle-edge" || health["status"] != "ok" {
        bail!("{url} is not a healthy Aisle box: {health}");
    }
    if let Some(store) = &expect.store
        && health["store_id"] != store.as_str()
    {
        bail!("the box is store {} , not {store}", health["store_id"]);
    }
    if let Some(region) = &expect.region
        && health["region"] != region.as_str()
    {
        bail!("the box is in region {}, not {region}", health["region"]);
    }
    if expect.synced && !(health["enrolled"] == true && health["syncing"] == true) {
        bail!(
            "the box is not syncing with its hub (enrolled: {}, syncing: {}, hub: {})",
            health["enrolled"],
            health["syncing"],
            health["hub"]
        );
    }
    Ok(health)
}
