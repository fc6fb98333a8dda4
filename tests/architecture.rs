//! The layering guardrail: dependencies point one way (edges → services →
//! store → domain → primitives), no import cycles, and no service, store or
//! domain file reaches the handlers' `AppState`. The rules and the layer of
//! each file are in `scripts/deps.py`, which anyone can run to see the graph
//! (`python3 scripts/deps.py --edges`); this test fails with its findings.

use std::path::Path;
use std::process::Command;

#[test]
fn dependencies_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(root.join("scripts/deps.py"))
        .arg(root.join("src"))
        .arg("--check")
        .output()
        .expect("run python3 scripts/deps.py");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the module graph breaks the layering rules:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains(" 0 cycles, 0 problems"), "{report}");
}

/// The checker itself must catch what it is for: a copy of `src/` with a
/// service that reaches `AppState` and a config that imports the domain
/// (prepended: the checker ignores a file's trailing `#[cfg(test)]` module).
#[test]
fn the_checker_catches_a_service_reaching_up_and_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = tempfile::tempdir().unwrap();
    let src = copy.path().join("src");
    copy_dir(&root.join("src"), &src);
    let service = src.join("sessions/service.rs");
    let text = std::fs::read_to_string(&service).unwrap();
    std::fs::write(
        &service,
        format!("fn reach(_: &crate::state::AppState) {{}}\n{text}"),
    )
    .unwrap();
    let config = src.join("config.rs");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("fn reach(_: crate::notifications::State) {{}}\n{text}"),
    )
    .unwrap();
    let output = Command::new("python3")
        .arg(root.join("scripts/deps.py"))
        .arg(&src)
        .arg("--check")
        .output()
        .expect("run python3 scripts/deps.py");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{report}");
    assert!(
        report.contains("sessions/service.rs (service) mentions AppState"),
        "{report}"
    );
    assert!(
        report.contains("sessions/service.rs (service) -> state.rs (edge): points up"),
        "{report}"
    );
    assert!(
        report.contains("config.rs -> notifications/mod.rs"),
        "{report}"
    );
    assert!(report.contains("cycle of"), "{report}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
