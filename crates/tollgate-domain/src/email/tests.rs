use super::*;

#[test]
fn accepts_and_normalises_case() {
    let email = Email::parse("  Ada.Lovelace@Example.COM ").unwrap();
    assert_eq!(email.as_ref(), "ada.lovelace@example.com");
    assert_eq!(email.domain(), "example.com");
}

#[test]
fn rejects_malformed() {
    for raw in [
        "",
        "no-at-sign",
        "@example.com",
        "a@",
        "a@b",
        "a@.com",
        "a@example..com",
        "a b@example.com",
        "a@exa mple.com",
    ] {
        assert!(Email::parse(raw).is_err(), "{raw:?} should be rejected");
    }
    let long = format!("{}@example.com", "a".repeat(300));
    assert!(Email::parse(&long).is_err());
}

#[test]
fn debug_hides_local_part() {
    let email = Email::parse("secret.person@example.com").unwrap();
    assert_eq!(format!("{email:?}"), "Email(…@example.com)");
}
