//! Loading sets and choosing by SNI, over certificates minted here.

use std::path::Path;

use super::*;

/// Writes a self-signed certificate for `names` (DNS SANs) and its key as `stem.pem` and
/// `stem.key`; returns the certificate's DER.
fn mint(dir: &Path, stem: &str, names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), generated.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        generated.signing_key.serialize_pem(),
    )
    .unwrap();
    generated.cert.der().to_vec()
}

fn source(stem: &str, key: &str, names: Option<&[&str]>, default: bool) -> CertSource {
    CertSource {
        key: key.to_owned(),
        label: key.to_owned(),
        certificate: format!("{stem}.pem").into(),
        private_key: format!("{stem}.key").into(),
        names: names.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
        default,
    }
}

/// The DER of the certificate `set` presents for `sni`.
fn chosen(set: &CertSet, sni: Option<&str>) -> Vec<u8> {
    set.choose(sni).cert[0].to_vec()
}

#[test]
fn sni_chooses_exact_then_wildcard_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let default = mint(d, "default", &["relay.example", "*.wild.example"]);
    let a = mint(d, "a", &["a.example", "*.a.example"]);
    let b = mint(d, "b", &["B.example", "exact.wild.example"]);
    let sources = [
        source("default", "tls", None, true),
        source("a", "tls.sni[0]", None, false),
        source("b", "tls.sni[1]", None, false),
    ];
    let loaded = load_entries(&sources, d).unwrap();
    assert_eq!(claims(&loaded[1]), ["a.example", "*.a.example"]);
    let set = CertSet::new(&loaded).unwrap();
    let rows: [(Option<&str>, &[u8]); 12] = [
        (None, &default),
        (Some("relay.example"), &default),
        (Some("unknown.example"), &default),
        (Some("a.example"), &a),
        (Some("A.EXAMPLE."), &a),
        (Some("mail.a.example"), &a),
        // One label only.
        (Some("x.mail.a.example"), &default),
        (Some("b.example"), &b),
        (Some("mail.b.example"), &default),
        // An exact name beats a wildcard, whichever certificate holds them.
        (Some("exact.wild.example"), &b),
        (Some("other.wild.example"), &default),
        (Some("wild.example"), &default),
    ];
    for (sni, want) in rows {
        assert_eq!(chosen(&set, sni), want, "SNI {sni:?}");
    }
}

#[test]
fn explicit_names_replace_the_sans_and_must_be_covered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let default = mint(d, "default", &["relay.example"]);
    let a = mint(d, "a", &["a.example", "*.shared.example"]);
    mint(d, "b", &["b.example", "*.shared.example"]);
    // Both claim *.shared.example: refused, naming both files.
    let both = [
        source("default", "tls", None, true),
        source("a", "tls.sni[0]", None, false),
        source("b", "tls.sni[1]", None, false),
    ];
    let err = load_entries(&both, d).unwrap_err().to_string();
    assert_eq!(
        err,
        "tls.sni[1]: \"b.pem\" claims *.shared.example, as does \"a.pem\" (tls.sni[0]): one \
         name, one certificate per set (list `names` to choose which serves it)"
    );
    // `names` settles it: b serves only b.example and one name under the wildcard.
    let chosen_names = [
        source("default", "tls", None, true),
        source("a", "tls.sni[0]", None, false),
        source(
            "b",
            "tls.sni[1]",
            Some(&["b.example", "mail.shared.example"]),
            false,
        ),
    ];
    let set = CertSet::new(&load_entries(&chosen_names, d).unwrap()).unwrap();
    assert_eq!(chosen(&set, Some("x.shared.example")), a);
    assert_ne!(chosen(&set, Some("mail.shared.example")), a);
    assert_ne!(chosen(&set, Some("mail.shared.example")), default);

    let rows: [(&[&str], &str); 4] = [
        (
            &["c.example"],
            "tls.sni[0].names[0]: \"c.example\" is not covered by the certificate in \"a.pem\" (its DNS names: a.example, *.shared.example)",
        ),
        (
            &["a.example", "*.example"],
            "tls.sni[0].names[1]: \"*.example\": a wildcard needs at least two labels after \"*.\"",
        ),
        (
            &["10.0.0.1"],
            "tls.sni[0].names[0]: \"10.0.0.1\": is an IP address",
        ),
        (&[], "tls.sni[0].names: must list at least one name"),
    ];
    for (names, want) in rows {
        let sources = [
            source("default", "tls", None, true),
            source("a", "tls.sni[0]", Some(names), false),
        ];
        let err = load_entries(&sources, d).unwrap_err().to_string();
        assert!(err.starts_with(want), "{names:?}: {err}");
    }
}

#[test]
fn files_and_pairs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mint(d, "a", &["a.example"]);
    mint(d, "b", &["b.example"]);
    mint(d, "ip", &["127.0.0.1"]);
    let mut mismatched = source("a", "tls.sni[0]", None, false);
    mismatched.private_key = "b.key".into();
    let mut missing = source("a", "tls.sni[0]", None, false);
    missing.certificate = "gone.pem".into();
    let mut key_as_cert = source("a", "tls.sni[0]", None, false);
    key_as_cert.private_key = "a.pem".into();
    let rows = [
        (
            mismatched,
            "tls.sni[0].private_key: \"b.key\" is not the private key of the certificate in \"a.pem\"",
        ),
        (
            missing,
            "tls.sni[0].certificate: cannot read \"gone.pem\": does not exist",
        ),
        (
            key_as_cert,
            "tls.sni[0].private_key: \"a.pem\" holds no PEM PRIVATE KEY",
        ),
        (
            source("ip", "tls.sni[0]", None, false),
            "tls.sni[0].certificate: \"ip.pem\" has no DNS subjectAltName, so no SNI can choose it (`names` must be among them): use a certificate issued for the names it is to serve",
        ),
    ];
    for (bad, want) in rows {
        let sources = [source("b", "tls", None, true), bad];
        let err = load_entries(&sources, d).unwrap_err().to_string();
        assert_eq!(err, want);
    }
    // A default without DNS names is fine: it is chosen when nothing else is.
    let set = [
        source("ip", "tls", None, true),
        source("a", "tls.sni[0]", None, false),
    ];
    assert_eq!(load_entries(&set, d).unwrap().len(), 2);
}

#[test]
fn generates_then_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("tls/cert.pem"), d.join("tls/key.pem"));
    assert!(ensure_self_signed(&cert, &key, "relay.example").unwrap());
    assert!(!ensure_self_signed(&cert, &key, "relay.example").unwrap());
    let mut generated = source("tls/cert", "tls", None, true);
    generated.private_key = "tls/key.pem".into();
    let loaded = load_entries(&[generated], d).unwrap();
    assert_eq!(claims(&loaded[0]), ["localhost", "relay.example"]);
    assert!(loaded[0].not_after > 1_700_000_000);
    server_config(&loaded).unwrap();
}

/// The names a loaded certificate answers to, as written.
fn claims(loaded: &Loaded) -> Vec<String> {
    loaded.claims.iter().map(ToString::to_string).collect()
}
