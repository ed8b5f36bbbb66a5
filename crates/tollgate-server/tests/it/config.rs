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
        (
            "[models.m]\nbase_url = \"http://x\"\nprompt_price = -1\ncompletion_price = 1",
            "negative",
        ),
        ("[models.m]\nbase_url = \"http://x\"\nprompt_price = 1", "together"),
        (
            "[models.m]\nbase_url = \"http://x\"\nprompt_price = 1\ncompletion_price = 1\ncached_prompt_price = 2",
            "must not be above",
        ),
        (
            "[models.m]\nbase_url = \"http://x\"\nmax_output_tokens = 0",
            "max_output_tokens",
        ),
        ("listen = \"not an address\"", "listen"),
        ("[models.m]\nprompt_price = 1", "set either base_url or upstreams"),
        (
            "[models.m]\nbase_url = \"http://x\"\nupstreams = [{ base_url = \"http://y\" }]",
            "set either base_url or upstreams",
        ),
        (
            "[models.m]\nupstreams = [{ base_url = \"http://y\", weight = 0 }]",
            "at least one upstream must have a weight above 0",
        ),
        (
            "[models.m]\nupstreams = [{ base_url = \"ftp://y\" }]",
            "base_url must be an http",
        ),
        (
            "[models.m]\nbase_url = \"http://x\"\nmax_concurrency = 0",
            "max_concurrency must be at least 1",
        ),
        ("upstream_eject_seconds = 0", "upstream_eject_seconds"),
        (
            "[models.m]\nbase_url = \"http://x\"\ntokenizer = \"gpt2\"",
            "neither one of",
        ),
        (
            "[models.m]\nbase_url = \"http://x\"\ntokenizer = \"/nonexistent/tokenizer.json\"",
            "no file at /nonexistent/tokenizer.json",
        ),
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

#[test]
fn sign_in_providers_are_checked() {
    let good = write_config(
        r#"
        [oidc.corp]
        issuer = "https://id.example.com"
        client_id = "tollgate"
        client_secret = "s"
        [oauth2.x]
        preset = "x"
        client_id = "tollgate"
        client_secret = "s"
        "#,
    );
    let config = Config::load(good.path(), true).unwrap();
    assert_eq!(tollgate_server::check_sign_in_providers(&config).unwrap(), 2);
    // Checked when the file is read: names, each name once, https.
    for (text, expected) in [
        (
            "[oauth2.Bad_Name]\npreset = \"x\"\nclient_id = \"c\"\nclient_secret = \"s\"",
            "appear in URLs",
        ),
        (
            "[oidc.corp]\nissuer = \"http://id.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"",
            "https",
        ),
        (
            "[oidc.x]\nissuer = \"https://x.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [oauth2.x]\npreset = \"x\"\nclient_id = \"c\"\nclient_secret = \"s\"",
            "configured twice",
        ),
    ] {
        let file = write_config(text);
        let error = format!("{:#}", Config::load(file.path(), true).unwrap_err());
        assert!(error.contains(expected), "{text}: {error}");
    }
    // Checked when the providers are built (at start, and by `serve --validate-and-exit`).
    for (text, expected) in [
        (
            "[oauth2.gh]\nclient_id = \"c\"\nclient_secret = \"s\"",
            "needs authorization_url",
        ),
        (
            "[oauth2.x]\npreset = \"x\"\ntoken_url = \"http://tokens.example\"\nclient_id = \"c\"\n\
             client_secret = \"s\"",
            "token_url must be an https:// URL",
        ),
    ] {
        let file = write_config(text);
        let config = Config::load(file.path(), true).unwrap();
        let error = format!("{:#}", tollgate_server::check_sign_in_providers(&config).unwrap_err());
        assert!(error.contains(expected), "{text}: {error}");
    }
    // An unknown preset is refused when the file is read.
    let file = write_config("[oauth2.y]\npreset = \"myspace\"\nclient_id = \"c\"\nclient_secret = \"s\"");
    let error = format!("{:#}", Config::load(file.path(), true).unwrap_err());
    assert!(error.contains("myspace"), "{error}");
}
