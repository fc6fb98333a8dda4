//! The operator console in real headless Chromium (Debian's package,
//! driven by playwright-core from `tests/js/console.mjs`), and the
//! browser's own socket.io-client as a viewer. Every story runs on SQLite
//! and PostgreSQL; the screenshot is kept in `target/test-artifacts/`.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use serde_json::Value;

both_databases!(the_console_shows_findings_live_and_a_browser_viewer_acknowledges);

async fn the_console_shows_findings_live_and_a_browser_viewer_acknowledges(db: Db) {
    // Escalation fires (into the outbox) so the page shows a level.
    let env = TestEnv::with_config(
        db,
        "[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n",
    )
    .await;
    let daemon = env.start().await;

    // The page itself: served from the binary, locked to its own origin.
    let page = Http::default()
        .client()
        .get(format!("{}/console", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers()["cache-control"], "no-store");

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join(format!("console-{db:?}.png").to_lowercase());
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/console.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("BASE", &daemon.url)
        .env("ADMIN_TOKEN", admin_token())
        .env("AUDITOR_TOKEN", token("audrey", &["auditor"], None))
        .env("SERVICE_TOKEN", service_token())
        .env("ALICE_TOKEN", token("alice", &["radiologist"], None))
        .env("BOB_TOKEN", token("bob", &["radiologist"], None))
        .env("SCREENSHOT", &screenshot)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run node tests/js/console.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no result from the browser script: {stdout}"));
    assert!(output.status.success() && result["ok"] == true, "{result}");
    assert!(result["appearedMs"].as_u64().unwrap() <= 1000, "{result}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("console: {result}; screenshot {}", screenshot.display());
}
