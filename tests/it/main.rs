//! The root package's black-box tests, as one test binary: one module per scenario
//! (formerly one binary per file, each linking the whole server; now the suite links once).
//! `common/` is the harness: it starts the real `chatixia-core` binary on 127.0.0.1 port 0
//! and reads the bound port back (`--port-file`).
//!
//! Run one scenario, or one test, with the test switches the suite uses:
//!
//! ```sh
//! cargo test -p chatixia-core --features test-switches --test it api_hub::
//! cargo test -p chatixia-core --features test-switches --test it -- --exact api_hub::task_lifecycle
//! ```
//!
//! A new scenario is a file here plus a `mod` line below (the test at the end checks
//! both). Only a test that needs process-wide state of its own (an environment variable,
//! a signal disposition, a global allocator that does not count per thread) would need a
//! binary of its own; none does today.

// The counting allocator for `alloc_per_request` (heap allocations per request on the
// sans-IO path). It forwards every call to the system allocator and counts on the calling
// thread only, so installing it for the whole binary costs the other tests a thread-local
// increment per allocation, and the tests running in parallel do not add to each other's
// counts: this is why `alloc_per_request` needs no binary of its own.
#[global_allocator]
static GLOBAL: reactor::alloc_count::Counting = reactor::alloc_count::Counting;

mod common;

mod admin_auth;
mod agent_bindings_durable;
mod alloc_per_request;
mod api_auth;
mod api_clock;
mod api_dashboard;
mod api_hub;
mod api_pairing;
mod api_registry;
mod api_sharding;
mod auth_failures;
mod auth_token_cache;
mod autobahn;
mod bench_cluster;
mod bench_compare;
mod bench_compare_sidecar;
mod bench_http;
mod bench_sidecar;
mod bench_storm;
mod bench_turn;
mod bench_ws_idle;
mod bench_ws_relay;
mod cluster;
mod cluster_agents;
mod cluster_hub;
mod cluster_hub_faults;
mod cluster_pairing;
mod cluster_registry_route;
mod cluster_review;
mod config_file;
mod dashboard_browser;
mod durability_crash;
mod graceful_shutdown;
mod hostile_agent_auth;
mod hostile_agent_identity;
mod hostile_pairing;
mod http_edge_cases;
mod http_fd_exhaustion;
mod http_hostile;
mod http_steering;
mod interop_agent;
mod interop_pair_cli;
mod io_driver_fallback;
mod jwt_ids_silent;
mod limits_depth;
mod limits_fields;
mod limits_paging;
mod limits_quota;
mod limits_share;
mod metrics_and_listeners;
mod openapi_findings;
mod openapi_schemathesis;
mod packaging;
mod pair_budget_flag;
mod readme_two_agents;
mod reference_hub_calls;
mod review20;
mod shutdown_under_load;
mod sidecar_agents;
mod sidecar_aiortc;
mod sidecar_disconnect;
mod sidecar_duplicate_identity;
mod sidecar_ipc;
mod sidecar_mesh;
mod sidecar_reconnect;
mod sidecar_turn;
mod store_disk;
mod store_ops;
mod tls;
mod tls_agents;
mod tls_testssl;
mod turn_interop;
mod turn_server;
mod turn_tls;
mod ws_limits;
mod ws_meshes_and_revocation;
mod ws_refusals;
mod ws_signaling;

/// Every `tests/it/*.rs` is a module of this binary (a file without its `mod` line would
/// never be compiled, and its tests would silently not run), and no `tests/*.rs` makes a
/// binary of its own beside this one.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = include_str!("main.rs");
    let rs_files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".rs"))
            .collect();
        names.sort();
        names
    };
    let undeclared: Vec<String> = rs_files(&tests.join("it"))
        .into_iter()
        .filter(|n| n != "main.rs")
        .filter(|n| !main.contains(&format!("\nmod {};\n", n.trim_end_matches(".rs"))))
        .collect();
    assert!(
        undeclared.is_empty(),
        "tests/it/{undeclared:?} not declared with `mod NAME;` in tests/it/main.rs: their tests do not run"
    );
    let own_binaries = rs_files(&tests);
    assert!(
        own_binaries.is_empty(),
        "tests/{own_binaries:?} would each link the whole server into a binary of its own: \
         move them to tests/it/ as modules of this binary"
    );
}
