//! Crash safety under load, short: the `aisle-bench crash` scenario for a few cycles against
//! each target (the full 100-cycle figures are in docs/benchmarks.md, "Crash safety"). Every
//! message acked before a SIGKILL is there exactly once after the restart, and every
//! conversation document loads.

use aisle_tests::crashbench::{self, CrashBenchOptions, CrashTarget};

async fn crash_cycles(target: CrashTarget) {
    let o = CrashBenchOptions {
        cycles: 4,
        target,
        // Kill moments spread over the first second of each cycle, after some load.
        min_delay_ms: 100,
        max_delay_ms: 800,
        ..Default::default()
    };
    let r = crashbench::run(&o)
        .await
        .unwrap_or_else(|e| panic!("crash run failed: {e:#}"));
    // A run that acked nothing would pass without having checked anything.
    assert!(r.acked > 0, "nothing was acked: {}", r.to_json());
    assert!(
        r.documents_checked > 0,
        "no document checked: {}",
        r.to_json()
    );
    assert!(
        r.passed(),
        "acked messages lost or duplicated across SIGKILLs of the {}: {}",
        target.as_str(),
        r.to_json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigkill_under_load_loses_and_duplicates_nothing() {
    crash_cycles(CrashTarget::Edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_sigkill_under_sync_loses_and_duplicates_nothing() {
    crash_cycles(CrashTarget::Hub).await;
}
