//! The `tollgate` binary as an operator uses it: help, migrate, create a user (password on
//! stdin), create a management key (printed once), environment overrides.

use std::io::Write as _;
use std::process::{Command, Stdio};

fn tollgate(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("TOLLGATE_LOG_FILTER", "warn");
    command
}

/// `tollgate user create`, with `password` on standard input.
fn create_user(dir: &std::path::Path, email: &str, password: &str) -> std::process::Output {
    let mut child = tollgate(dir)
        .args(["user", "create", "--email", email, "--name", "Someone"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = tollgate(dir.path()).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for command in ["serve", "migrate", "user", "management-key", "audit"] {
        assert!(help.contains(command), "{help}");
    }
    let output = tollgate(dir.path())
        .args(["user", "create", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8(output.stdout).unwrap().contains("standard input"));
}

#[test]
fn operator_bootstraps_a_team() {
    let dir = tempfile::tempdir().unwrap();
    // With no configuration the data goes to ./data/tollgate.db.
    let output = tollgate(dir.path()).arg("migrate").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("data/tollgate.db").exists());

    let output = create_user(dir.path(), "ops@example.com", "a long enough passphrase");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let team_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("team_id: "))
        .unwrap()
        .to_owned();

    let output = tollgate(dir.path())
        .args(["management-key", "create", "--team", &team_id, "--name", "ci"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let key = String::from_utf8(output.stdout).unwrap();
    assert!(key.trim().starts_with("tgm_") && key.trim().len() == 42, "{key}");

    // The first start created the audit chain key, readable by its owner only, and the log
    // verifies with it.
    let key_file = dir.path().join("data/audit-chain.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim().len(), 64);
    let output = tollgate(dir.path()).args(["audit", "verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("team {team_id}: ok, 2 events verified")),
        "{stdout}"
    );
    let output = tollgate(dir.path())
        .args(["audit", "export", "--team", &team_id, "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let actions: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(actions, ["CreateUser", "CreateManagementKey", "ExportAuditEvents"]);
    let output = tollgate(dir.path()).args(["audit", "prune"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("removed 0 audit events older than 365 days"));

    // A short password is refused with a reason, and nothing is created.
    let output = create_user(dir.path(), "weak@example.com", "short");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("15"));

    // The same email twice is refused.
    let output = create_user(dir.path(), "OPS@example.com", "a long enough passphrase");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

#[test]
fn environment_overrides_and_unknown_variables_fail() {
    let dir = tempfile::tempdir().unwrap();
    let output = tollgate(dir.path())
        .args(["serve", "--validate-and-exit"])
        .env("TOLLGATE_MODELS__M__BASE_URL", "http://127.0.0.1:9/v1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 models"));

    let output = tollgate(dir.path())
        .args(["serve", "--validate-and-exit"])
        .env("TOLLGATE_LISTEN_PORT", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen_port"));
}
