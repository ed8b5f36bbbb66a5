//! Configuration loading: defaults, file, validation, and errors that name the bad key.

use std::io::Write as _;

use tollgate_server::Config;

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn defaults_serve_on_loopback_with_sqlite() {
    let config = Config::load(std::path::Path::new("/nonexistent/tollgate.toml"), false).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.database_url, "sqlite://data/tollgate.db");
    assert!(config.models.is_empty());
}

#[test]
fn an_explicit_missing_file_is_an_error() {
    let error = Config::load(std::path::Path::new("/nonexistent/tollgate.toml"), true).unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
}

#[test]
fn file_values_apply() {
    let file = write_config(
        r#"
        listen = "127.0.0.1:9999"
        [models.grok-mini]
        base_url = "http://127.0.0.1:8000/v1"
        aliases = ["mini"]
        prompt_price = 2000
        completion_price = 5000
        "#,
    );
    let config = Config::load(file.path(), true).unwrap();
    assert_eq!(config.listen.port(), 9999);
    assert_eq!(config.models["grok-mini"].aliases, ["mini"]);
}

#[test]
fn unknown_keys_are_named() {
    let file = write_config("listen = \"127.0.0.1:1\"\nlisten_port = 9\n");
    let error = Config::load(file.path(), true).unwrap_err().to_string();
    assert!(error.contains("listen_port"), "{error}");
    let file = write_config("[models.m]\nbase_url = \"http://x/v1\"\nprice = 1\n");
    let error = Config::load(file.path(), true).unwrap_err().to_string();
    assert!(error.contains("price"), "{error}");
}

#[test]
fn invalid_values_are_refused() {
    for (text, expected) in [
        ("api_key_prefix = \"BAD\"", "api_key_prefix"),
        ("database_url = \"mysql://x\"", "database_url"),
        ("[models.m]\nbase_url = \"ftp://x\"", "base_url"),
        ("[models.m]\nbase_url = \"http://x\"\nprompt_price = -1", "negative"),
        ("listen = \"not an address\"", "listen"),
    ] {
        let file = write_config(text);
        let error = format!("{:#}", Config::load(file.path(), true).unwrap_err());
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tollgate.example.toml");
    Config::load(&path, true).unwrap();
}
