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
    // Configured but the anonymous account not made yet: refused, never the top account.
    let d = dir(DirectoryConfig {
        anonymous: true,
        ..Default::default()
    });
    assert_eq!(
        d.authenticate(&creds(None, None, "10.0.0.3")).err(),
        Some(ReasonCode::NOT_AUTHORIZED)
    );
}

#[test]
fn anonymous_clients_land_in_their_own_account() {
    let d = dir(DirectoryConfig {
        anonymous: true,
        ..Default::default()
    });
    assert_eq!(
        d.anonymous_account(Some(1)),
        Err(DirectoryError::AnonymousTop)
    );
    let anon = d.anonymous_account(None).unwrap();
    assert_eq!(anon.name, ANONYMOUS);
    assert_eq!(anon.parent, Some(1));
    assert_ne!(anon.id, 1);
    assert_eq!(
        d.authenticate(&creds(None, None, "10.0.0.3"))
            .map(|p| p.cid),
        Ok(anon.id)
    );
    // Found again by name (a later start), not created twice.
    assert_eq!(d.anonymous_account(None).unwrap().id, anon.id);
    assert_eq!(
        d.accounts().iter().filter(|a| a.name == ANONYMOUS).count(),
        1
    );
    // The operator can shut anonymous access off by disabling the account.
    let mut a = anon.clone();
    a.enabled = false;
    d.update_account(a).unwrap();
    assert_eq!(
        d.authenticate(&creds(None, None, "10.0.0.3")).err(),
        Some(ReasonCode::BANNED)
    );
    // A pinned id: created with that id if missing.
    let pinned = d.anonymous_account(Some(500)).unwrap();
    assert_eq!((pinned.id, pinned.parent), (500, Some(1)));
    assert_eq!(d.anonymous(), Some(500));
}

fn limited(
    d: &Directory,
    parent: Cid,
    name: &str,
    limits: Limits,
) -> Result<Account, DirectoryError> {
    d.add_account(NewAccount {
        parent,
        id: None,
        name: name.into(),
        metadata: serde_json::json!({}),
        enabled: true,
        limits,
    })
}

#[test]
fn subaccounts_and_tokens_count_against_every_ancestor() {
    let d = dir(DirectoryConfig::default());
    let p = limited(
        &d,
        1,
        "p",
        Limits {
            subaccounts: Some(2),
            tokens: Some(2),
            ..Limits::default()
        },
    )
    .unwrap();
    let c = d
        .create_account(p.id, None, "c", serde_json::json!({}))
        .unwrap();
    // A grandchild counts against p too.
    let g = d
        .create_account(c.id, None, "g", serde_json::json!({}))
        .unwrap();
    assert_eq!(d.usage(p.id), (2, 0));
    assert_eq!(
        d.create_account(p.id, None, "c2", serde_json::json!({})),
        Err(DirectoryError::QuotaExceeded {
            cid: p.id,
            quota: "subaccounts",
            limit: 2
        })
    );
    assert_eq!(
        d.create_account(g.id, None, "gg", serde_json::json!({})),
        Err(DirectoryError::QuotaExceeded {
            cid: p.id,
            quota: "subaccounts",
            limit: 2
        })
    );
    // Tokens of the grandchild and of p itself share p's quota.
    token(&d, g.id);
    let t = token(&d, p.id);
    let refused = d.create_token(Token {
        key: String::new(),
        ..t.clone()
    });
    assert_eq!(
        refused,
        Err(DirectoryError::QuotaExceeded {
            cid: p.id,
            quota: "tokens",
            limit: 2
        })
    );
    // Deleting frees room; deleting a sub-account frees its tokens and accounts.
    d.delete_token(t.id).unwrap();
    assert_eq!(d.usage(p.id), (2, 1));
    d.delete_account(c.id).unwrap();
    assert_eq!(d.usage(p.id), (0, 0));
    // The top account: p, and the master token.
    assert_eq!(d.usage(1), (1, 1));
    d.create_account(p.id, None, "c3", serde_json::json!({}))
        .unwrap();
    token(&d, p.id);
    // The top account's own quota bounds everything below it.
    let d = dir(DirectoryConfig {
        quotas: QuotaDefaults {
            subaccounts: 3,
            ..QuotaDefaults::default()
        },
        ..Default::default()
    });
    let a = d
        .create_account(1, None, "a", serde_json::json!({}))
        .unwrap();
    let b = d
        .create_account(a.id, None, "b", serde_json::json!({}))
        .unwrap();
    d.create_account(b.id, None, "c", serde_json::json!({}))
        .unwrap();
    assert_eq!(
        d.create_account(b.id, None, "d", serde_json::json!({})),
        Err(DirectoryError::QuotaExceeded {
            cid: 1,
            quota: "subaccounts",
            limit: 3
        })
    );
}

#[test]
fn limits_are_never_set_above_the_parents() {
    let d = dir(DirectoryConfig::default());
    let p = limited(
        &d,
        1,
        "p",
        Limits {
            mqtt_sessions: Some(10),
            ..Limits::default()
        },
    )
    .unwrap();
    // Above the parent's own limit, or above a default the parent has (the top's).
    let over = Limits {
        mqtt_sessions: Some(1_000_000_000_000_000),
        ..Limits::default()
    };
    assert_eq!(
        limited(&d, p.id, "c", over.clone()),
        Err(DirectoryError::AboveParent {
            quota: "mqtt_sessions",
            value: 1_000_000_000_000_000,
            cap: 10
        })
    );
    assert!(
        d.accounts().iter().all(|a| a.name != "c"),
        "nothing created"
    );
    let over_default = Limits {
        retained_bytes: Some(QuotaDefaults::default().retained_bytes + 1),
        ..Limits::default()
    };
    assert!(matches!(
        limited(&d, 1, "c", over_default),
        Err(DirectoryError::AboveParent {
            quota: "retained_bytes",
            ..
        })
    ));
    let mut c = limited(
        &d,
        p.id,
        "c",
        Limits {
            mqtt_sessions: Some(10),
            ..Limits::default()
        },
    )
    .unwrap();
    c.limits = over;
    assert!(matches!(
        d.update_account(c.clone()),
        Err(DirectoryError::AboveParent { cap: 10, .. })
    ));
    // A grandchild is capped by the lowest quota above it, not only its parent's.
    let mut p2 = d.account(p.id).unwrap();
    p2.limits.mqtt_sessions = Some(5);
    d.update_account(p2).unwrap();
    let mut g = d
        .create_account(c.id, None, "g", serde_json::json!({}))
        .unwrap();
    g.limits.mqtt_sessions = Some(7);
    assert!(matches!(
        d.update_account(g),
        Err(DirectoryError::AboveParent { cap: 5, .. })
    ));
    // c's limit (10) is now above p's (5): changing something else of c is still fine.
    let mut c = d.account(c.id).unwrap();
    c.name = "renamed".into();
    d.update_account(c).unwrap();
    // The chain of quotas, nearest first.
    let chain = d.quota_chain(c_id(&d, "renamed"));
    assert_eq!(
        chain
            .iter()
            .map(|(cid, q)| (*cid, q.mqtt_sessions))
            .collect::<Vec<_>>(),
        vec![
            (c_id(&d, "renamed"), 10),
            (p.id, 5),
            (1, QuotaDefaults::default().mqtt_sessions)
        ]
    );
}

fn c_id(d: &Directory, name: &str) -> Cid {
    d.accounts()
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.id)
        .unwrap()
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

/// A replica that records what it is handed and gives ids from 1000 on (none when `dry`).
#[derive(Debug, Default)]
struct Recorder {
    changes: parking_lot::Mutex<Vec<DirectoryChange>>,
    next: std::sync::atomic::AtomicU64,
    dry: std::sync::atomic::AtomicBool,
}

impl DirectoryReplica for Recorder {
    fn changed(&self, change: DirectoryChange) {
        self.changes.lock().push(change);
    }

    fn new_id(&self, _: IdKind) -> Option<u64> {
        if self.dry.load(Ordering::Relaxed) {
            return None;
        }
        Some(1000 + self.next.fetch_add(1, Ordering::Relaxed))
    }
}

fn replicated() -> (Arc<Directory>, Arc<Recorder>) {
    let d = dir(DirectoryConfig::default());
    let r = Arc::new(Recorder::default());
    assert!(d.set_replica(r.clone()));
    assert!(!d.set_replica(r.clone()), "set once");
    (d, r)
}

fn taken(r: &Recorder) -> Vec<DirectoryChange> {
    std::mem::take(&mut *r.changes.lock())
}

/// The document of a change, for another directory to apply.
fn doc<T: serde::Serialize>(t: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(t).unwrap())
}

#[test]
fn every_change_is_handed_to_the_replica_with_its_ids() {
    let (d, r) = replicated();
    let sub = d
        .create_account(1, None, "sub", serde_json::json!({}))
        .unwrap();
    assert_eq!(sub.id, 1000, "the replica's id");
    let t = token(&d, sub.id);
    assert_eq!(t.id, 1001);
    assert_eq!(
        taken(&r),
        vec![
            DirectoryChange::Account {
                cid: sub.id,
                json: doc(&sub)
            },
            DirectoryChange::Token {
                id: t.id,
                json: doc(&t)
            },
        ]
    );
    // A use of a token without a ttl stays here; with one, the other nodes need it.
    d.authenticate(&creds(Some(&t.key), None, "10.0.0.1"))
        .unwrap();
    assert!(taken(&r).is_empty());
    let mut with_ttl = t.clone();
    with_ttl.ttl = 3600;
    with_ttl.accessed = 0;
    d.update_token(with_ttl).unwrap();
    assert_eq!(taken(&r).len(), 1);
    d.authenticate(&creds(Some(&t.key), None, "10.0.0.1"))
        .unwrap();
    assert!(
        matches!(&taken(&r)[..], [DirectoryChange::Token { id, .. }] if *id == t.id),
        "the use of a token with a ttl"
    );
    // Deleting the account deletes its token: both handed out.
    d.delete_account(sub.id).unwrap();
    assert_eq!(
        taken(&r),
        vec![
            DirectoryChange::DelAccount(sub.id),
            DirectoryChange::DelToken(t.id)
        ]
    );
    // No id to be had: refused.
    r.dry.store(true, Ordering::Relaxed);
    assert_eq!(
        d.create_token(Token {
            cid: 1,
            key: String::new(),
            ..t.clone()
        })
        .map(|_| ())
        .unwrap_err(),
        DirectoryError::NoId("token")
    );
}

#[test]
fn remote_changes_apply_without_coming_back() {
    let (here, r) = replicated();
    // "There": another node's directory.
    let there = dir(DirectoryConfig::default());
    let sub = there
        .create_account(1, Some(50), "sub", serde_json::json!({}))
        .unwrap();
    let mut t = token(&there, 50);
    t.id = 60;
    // The token first: it may come before its account.
    let put_t = DirectoryChange::Token {
        id: 60,
        json: doc(&t),
    };
    let e = here.apply_remote(put_t.clone()).unwrap();
    assert!(e.changed);
    assert!(e.revoke_tokens.is_empty());
    let e = here
        .apply_remote(DirectoryChange::Account {
            cid: 50,
            json: doc(&sub),
        })
        .unwrap();
    assert!(e.changed);
    assert_eq!(
        here.usage(1),
        (1, 2),
        "counted: one sub-account, two tokens"
    );
    assert_eq!(
        here.authenticate(&creds(Some(&t.key), None, "10.0.0.1"))
            .map(|p| p.cid),
        Ok(50)
    );
    assert!(taken(&r).is_empty(), "nothing handed back out");
    // The same document again (a node's own write coming back): nothing to do.
    assert_eq!(here.apply_remote(put_t).unwrap(), RemoteEffect::default());

    // Narrowed: its connections end.
    let mut narrowed = here.token(60).unwrap();
    narrowed.access = Access {
        kind: Access::ACL,
        acl: vec![],
    };
    let e = here
        .apply_remote(DirectoryChange::Token {
            id: 60,
            json: doc(&narrowed),
        })
        .unwrap();
    assert_eq!(e.revoke_tokens, vec![60]);
    // An older `accessed` from another node does not move this node's back.
    let mine = here.token(60).unwrap().accessed;
    assert!(mine > 0);
    let mut stale = here.token(60).unwrap();
    stale.accessed = 0;
    stale.info = "renamed".into();
    here.apply_remote(DirectoryChange::Token {
        id: 60,
        json: doc(&stale),
    })
    .unwrap();
    let now = here.token(60).unwrap();
    assert_eq!((now.accessed, now.info.as_str()), (mine, "renamed"));

    // Account disabled: its connections end.
    let mut off = sub.clone();
    off.enabled = false;
    let e = here
        .apply_remote(DirectoryChange::Account {
            cid: 50,
            json: doc(&off),
        })
        .unwrap();
    assert_eq!(e.revoke_accounts, vec![50]);

    // Deleted token: refused, its connections end.
    let e = here.apply_remote(DirectoryChange::DelToken(60)).unwrap();
    assert_eq!(e.revoke_tokens, vec![60]);
    assert!(
        here.authenticate(&creds(Some(&t.key), None, "10.0.0.1"))
            .is_err()
    );
    // Deleted account: it and everything in it.
    let e = here.apply_remote(DirectoryChange::DelAccount(50)).unwrap();
    assert_eq!(e.deleted_accounts, vec![50]);
    assert!(here.account(50).is_none());
    assert_eq!(here.usage(1), (0, 1));
    // Twice: nothing.
    assert_eq!(
        here.apply_remote(DirectoryChange::DelAccount(50)).unwrap(),
        RemoteEffect::default()
    );
    // The top account is never deleted from elsewhere; a document under another id is refused.
    assert!(here.apply_remote(DirectoryChange::DelAccount(1)).is_err());
    assert!(
        here.apply_remote(DirectoryChange::Account {
            cid: 51,
            json: doc(&sub)
        })
        .is_err()
    );
    assert!(taken(&r).is_empty(), "nothing handed back out");
}

/// A sub-account, its own sub-account and their tokens arriving in any order are counted
/// against every account above them as if they had been made here.
#[test]
fn remote_accounts_in_any_order_are_counted() {
    let there = dir(DirectoryConfig::default());
    let mid = there
        .create_account(1, Some(10), "mid", serde_json::json!({}))
        .unwrap();
    let leaf = there
        .create_account(10, Some(11), "leaf", serde_json::json!({}))
        .unwrap();
    let mut t1 = token(&there, 11);
    t1.id = 20;
    let mut t2 = token(&there, 10);
    t2.id = 21;
    let changes = [
        DirectoryChange::Token {
            id: 20,
            json: doc(&t1),
        },
        DirectoryChange::Account {
            cid: 11,
            json: doc(&leaf),
        },
        DirectoryChange::Token {
            id: 21,
            json: doc(&t2),
        },
        DirectoryChange::Account {
            cid: 10,
            json: doc(&mid),
        },
    ];
    // Every order of the four.
    let n = changes.len();
    let orders = (0..n.pow(n as u32)).filter_map(|k| {
        let order: Vec<usize> = (0..n).map(|d| k / n.pow(d as u32) % n).collect();
        let mut seen = order.clone();
        seen.sort_unstable();
        seen.dedup();
        (seen.len() == n).then_some(order)
    });
    let mut tried = 0;
    for order in orders {
        let here = dir(DirectoryConfig::default());
        for &i in &order {
            here.apply_remote(changes[i].clone()).unwrap();
        }
        assert_eq!(here.usage(1), (2, 3), "order {order:?}");
        assert_eq!(here.usage(10), (1, 2), "order {order:?}");
        assert_eq!(here.usage(11), (0, 1), "order {order:?}");
        tried += 1;
    }
    assert_eq!(tried, 24);
}

#[test]
fn the_same_key_on_two_tokens_opens_the_older() {
    let here = dir(DirectoryConfig::default());
    let there = dir(DirectoryConfig::default());
    let mut t = token(&there, 1);
    for id in [80, 70] {
        t.id = id;
        here.apply_remote(DirectoryChange::Token { id, json: doc(&t) })
            .unwrap();
    }
    assert_eq!(here.token_by_key(&t.key).map(|t| t.id), Some(70));
}
