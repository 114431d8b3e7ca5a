//! Unit tests of the directory: bootstrap, every token form, every refusal, ACL rights.

use std::net::IpAddr;
use std::sync::Arc;

use tern_codec::{ProtocolVersion, ReasonCode};
use tern_store::{Snapshot, Store};

use super::*;
use crate::auth::{Authenticator, Credentials};

fn dir(config: DirectoryConfig) -> Arc<Directory> {
    let d = Directory::load(&Snapshot::default(), Store::disabled(), config);
    d.bootstrap(1, None).unwrap();
    d
}

fn creds<'a>(username: Option<&'a str>, password: Option<&'a [u8]>, ip: &str) -> Credentials<'a> {
    Credentials {
        client_id: "c",
        username,
        password,
        peer: ip.parse::<IpAddr>().unwrap(),
        protocol: ProtocolVersion::V5,
    }
}

fn token(d: &Directory, cid: Cid) -> Token {
    d.create_token(Token {
        id: 0,
        key: String::new(),
        info: "t".into(),
        enabled: true,
        expire: 0,
        ttl: 0,
        created: 0,
        accessed: 0,
        ips: String::new(),
        cid,
        metadata: serde_json::json!({}),
        access: Access::default(),
    })
    .unwrap()
}

#[test]
fn bootstrap_creates_top_account_and_master_token_once() {
    let d = Directory::load(
        &Snapshot::default(),
        Store::disabled(),
        DirectoryConfig::default(),
    );
    let master = d.bootstrap(1, None).unwrap().expect("created");
    assert_eq!(master.access.kind, Access::MASTER);
    assert_eq!(master.key.len(), KEY_LEN);
    assert!(master.key.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(d.bootstrap(1, None).unwrap().is_none(), "not twice");
    assert_eq!(d.top(), Some(1));
    let fixed = "A".repeat(64);
    assert!(
        d.bootstrap(1, Some(&fixed)).unwrap().is_some(),
        "a configured key is added"
    );
    assert!(d.bootstrap(1, Some(&fixed)).unwrap().is_none());
    assert!(d.bootstrap(1, Some("short")).is_err());
}

#[test]
fn every_token_form_authenticates() {
    let d = dir(DirectoryConfig::default());
    let t = token(&d, 1);
    let key = t.key.clone();
    let ok = |c: Credentials<'_>| d.authenticate(&c).map(|p| p.cid);
    assert_eq!(ok(creds(Some(&key), None, "10.0.0.1")), Ok(1));
    let flespi = format!("FlespiToken {key}");
    assert_eq!(ok(creds(Some(&flespi), None, "10.0.0.1")), Ok(1));
    assert_eq!(ok(creds(Some(""), Some(key.as_bytes()), "10.0.0.1")), Ok(1));
    assert_eq!(
        ok(creds(Some("anything"), Some(key.as_bytes()), "10.0.0.1")),
        Ok(1)
    );
    let id = t.id.to_string();
    assert_eq!(
        ok(creds(Some(&id), Some(&key.as_bytes()[..16]), "10.0.0.1")),
        Ok(1)
    );
    assert_eq!(
        ok(creds(Some(&id), Some(&key.as_bytes()[..15]), "10.0.0.1")),
        Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    let mut wrong = key.as_bytes()[..16].to_vec();
    wrong[15] = if wrong[15] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        ok(creds(Some(&id), Some(&wrong), "10.0.0.1")),
        Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
}

#[test]
fn refusals_have_their_codes() {
    let d = dir(DirectoryConfig::default());
    let unknown = "B".repeat(64);
    assert_eq!(
        d.authenticate(&creds(Some(&unknown), None, "10.0.0.2"))
            .err(),
        Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    // Expired.
    let mut t = token(&d, 1);
    t.expire = 1;
    let t = d.update_token(t).unwrap();
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2")).err(),
        Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    // Disabled.
    let mut t = token(&d, 1);
    t.enabled = false;
    let t = d.update_token(t).unwrap();
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2")).err(),
        Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
    );
    // Wrong address.
    let mut t = token(&d, 1);
    t.ips = "192.168.*.*, 10.1.?.1".into();
    let t = d.update_token(t).unwrap();
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2")).err(),
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    assert!(
        d.authenticate(&creds(Some(&t.key), None, "192.168.3.4"))
            .is_ok()
    );
    assert!(
        d.authenticate(&creds(Some(&t.key), None, "10.1.7.1"))
            .is_ok()
    );
    // Disabled account: banned.
    let sub = d
        .create_account(1, None, "sub", serde_json::json!({}))
        .unwrap();
    let t = token(&d, sub.id);
    let mut acc = d.account(sub.id).unwrap();
    acc.enabled = false;
    d.update_account(acc).unwrap();
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2")).err(),
        Some(ReasonCode::BANNED)
    );
    // A disabled parent bans its sub-accounts' tokens too; enabling it again lifts the ban.
    let parent = d
        .create_account(1, None, "parent", serde_json::json!({}))
        .unwrap();
    let child = d
        .create_account(parent.id, None, "child", serde_json::json!({}))
        .unwrap();
    let t = token(&d, child.id);
    let mut acc = d.account(parent.id).unwrap();
    acc.enabled = false;
    d.update_account(acc.clone()).unwrap();
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2")).err(),
        Some(ReasonCode::BANNED)
    );
    acc.enabled = true;
    d.update_account(acc).unwrap();
    assert!(
        d.authenticate(&creds(Some(&t.key), None, "10.0.0.2"))
            .is_ok()
    );
}

#[test]
fn anonymous_clients_only_when_configured() {
    let d = dir(DirectoryConfig::default());
    assert_eq!(
        d.authenticate(&creds(None, None, "10.0.0.3")).err(),
        Some(ReasonCode::NOT_AUTHORIZED)
    );
    let d = dir(DirectoryConfig {
        anonymous: Some(7),
        ..Default::default()
    });
    assert_eq!(
        d.authenticate(&creds(None, None, "10.0.0.3"))
            .map(|p| p.cid),
        Ok(7)
    );
}

#[test]
fn failed_logins_are_limited_per_address() {
    let d = dir(DirectoryConfig {
        failed_login_burst: 5,
        failed_login_per_sec: 0.0,
        ..Default::default()
    });
    let t = token(&d, 1);
    let bad = "C".repeat(64);
    for _ in 0..5 {
        assert_eq!(
            d.authenticate(&creds(Some(&bad), None, "10.9.9.9")).err(),
            Some(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
    }
    assert_eq!(
        d.authenticate(&creds(Some(&bad), None, "10.9.9.9")).err(),
        Some(ReasonCode::CONNECTION_RATE_EXCEEDED)
    );
    // Even a good key is refused from that address while it is limited; others are fine.
    assert_eq!(
        d.authenticate(&creds(Some(&t.key), None, "10.9.9.9")).err(),
        Some(ReasonCode::CONNECTION_RATE_EXCEEDED)
    );
    assert!(
        d.authenticate(&creds(Some(&t.key), None, "10.9.9.8"))
            .is_ok()
    );
}

#[test]
fn keys_of_wrong_length_or_alphabet_never_match() {
    let d = dir(DirectoryConfig::default());
    let t = token(&d, 1);
    let long = format!("{}x", t.key);
    let bad_alphabet = format!("{}-", &t.key[..63]);
    for k in [
        long.as_str(),
        bad_alphabet.as_str(),
        &t.key[..63],
        &"x".repeat(65536),
    ] {
        assert!(d.authenticate(&creds(Some(k), None, "10.0.0.4")).is_err());
    }
    assert!(check_key(&bad_alphabet).is_err());
}

#[test]
fn namespaces_nest() {
    let d = dir(DirectoryConfig::default());
    let a1 = d
        .create_account(1, None, "a1", serde_json::json!({}))
        .unwrap();
    let a11 = d
        .create_account(a1.id, None, "a11", serde_json::json!({}))
        .unwrap();
    assert_eq!(
        Directory::ancestors(&d, a11.id).to_vec(),
        vec![a11.id, a1.id, 1]
    );
    assert_eq!(d.descendants(a1.id), vec![a1.id, a11.id]);
    let gone = d.delete_account(a1.id).unwrap();
    assert_eq!(gone, vec![a1.id, a11.id]);
    assert!(d.account(a11.id).is_none());
    assert_eq!(d.delete_account(1), Err(DirectoryError::TopAccount));
}
