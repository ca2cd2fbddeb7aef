//! API conformance: schemathesis (from PyPI) checks the running server against its own
//! `/openapi.json`: no 5xx, and every status, content type, header and body matches the spec.
//! The event streams are left out (endless responses); `tests/http_api.rs` and
//! `tests/notifications.rs` cover them.

use tandem_tests::{temp_dir, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() -> anyhow::Result<()> {
    let server = Server::start(&temp_dir("openapi"), &[]).await?;
    let seed = "20261122";
    println!("schemathesis seed {seed}");
    let output = tokio::process::Command::new("schemathesis")
        .args([
            "run",
            &format!("{}/openapi.json", server.http_base()),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            seed,
            "--exclude-path",
            "/docs/{doc}/events",
            "--exclude-path",
            "/me/notifications/events",
            "--request-timeout",
            "20",
            "--workers",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!("schemathesis is not installed (pip install schemathesis): {e}")
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = stdout.lines().rev().take(20).collect();
    println!(
        "{}",
        summary.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
    Ok(())
}
