//! The demo's browser package (`wasm/pkg/`): whether it is there, and its build when it is not.
//!
//! [`Package::check`] reports `ready`, `building`, `failed` (with the end of the build's output)
//! or `missing` (with the command to run), and starts `wasm/build.sh` once when the package is
//! missing and the caller allows it (open development mode only: a server with a secret never
//! runs a build on a request).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

/// The browser package's build, started at most once per server when the package is missing.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Package(Arc<Mutex<Build>>);

#[derive(Debug, Default)]
enum Build {
    #[default]
    NotStarted,
    Running {
        since: Instant,
    },
    Failed {
        output: String,
    },
    Done,
}

/// Lines of a failed build's output shown on the page.
const FAILED_TAIL_LINES: usize = 12;

impl Package {
    /// What the page should know about the package in `wasm`, starting its build when it is
    /// missing and `may_build`.
    pub fn check(&self, wasm: &Path, may_build: bool) -> Value {
        if wasm.join("pkg").join("index.js").is_file() {
            return json!({"package": "ready"});
        }
        let mut build = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*build, Build::NotStarted) && may_build && wasm.join("build.sh").is_file() {
            *build = Build::Running {
                since: Instant::now(),
            };
            let package = self.clone();
            let wasm = wasm.to_owned();
            tokio::spawn(async move { package.run(&wasm).await });
        }
        match &*build {
            Build::Running { since } => json!({
                "package": "building",
                "message": format!(
                    "the browser package is being built (wasm/build.sh, started {} s ago); \
                     this page reloads when it is ready",
                    since.elapsed().as_secs()
                ),
            }),
            Build::Failed { output } => json!({
                "package": "failed",
                "message": "building the browser package failed: see the output below, \
                            then run wasm/build.sh yourself (bash scripts/setup.sh --apt \
                            --wasm-bindgen installs the toolchain)",
                "output": output,
            }),
            Build::Done => json!({
                "package": "failed",
                "message": "wasm/build.sh finished but wasm/pkg/index.js is missing",
            }),
            Build::NotStarted => json!({
                "package": "missing",
                "message": "the browser package is not built: run wasm/build.sh \
                            (bash scripts/setup.sh --apt --wasm-bindgen installs the toolchain)",
            }),
        }
    }

    async fn run(&self, wasm: &Path) {
        tracing::info!("the browser package is missing: running wasm/build.sh");
        let output = tokio::process::Command::new("bash")
            .arg(wasm.join("build.sh"))
            .current_dir(wasm)
            .kill_on_drop(true)
            .output()
            .await;
        let next = match output {
            Ok(out) if out.status.success() => {
                tracing::info!("the browser package is built");
                Build::Done
            }
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(FAILED_TAIL_LINES)..].join("\n");
                tracing::warn!(output = %tail, "building the browser package failed");
                Build::Failed { output: tail }
            }
            Err(e) => Build::Failed {
                output: format!("could not run bash wasm/build.sh: {e}"),
            },
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }
}
