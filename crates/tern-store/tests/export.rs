//! Export and import: a snapshot survives export → import → apply exactly, and bad input is
//! refused with its line number.

mod common;

use common::reference;
use proptest::prelude::*;
use tern_store::{Snapshot, StoreError, export, import};

fn round_trip(snapshot: &Snapshot) -> Snapshot {
    let mut out = Vec::new();
    export(snapshot, &mut out).expect("export");
    let text = String::from_utf8(out).expect("exports are UTF-8");
    assert!(text.starts_with("{\"tern_store_export\":1}\n"), "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    reference(&import(text.as_bytes()).expect("import"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn export_import_round_trips(ops in prop::collection::vec(common::arb::op(), 0..60)) {
        let snapshot = reference(&ops);
        prop_assert_eq!(round_trip(&snapshot), snapshot);
    }
}

#[test]
fn empty_snapshot_round_trips() {
    assert_eq!(round_trip(&Snapshot::default()), Snapshot::default());
}

fn import_error(text: &str) -> String {
    match import(text.as_bytes()) {
        Err(e @ StoreError::Record { .. }) => e.to_string(),
        other => panic!("expected a record error, got {other:?}"),
    }
}

#[test]
fn bad_input_is_refused_with_its_line() {
    let header = "{\"tern_store_export\":1}\n";
    let session = r#"{"kind":"session","cid":1,"client_id":"a","expiry_interval":5,"created":0}"#;
    for (text, fragment) in [
        (String::new(), "line 1: empty input"),
        (
            "{\"kind\":\"token\",\"id\":1,\"json\":\"{}\"}\n".to_owned(),
            "line 1: not a tern store export",
        ),
        (
            "{\"tern_store_export\":2}\n".to_owned(),
            "line 1: export format version 2, this tern reads version 1",
        ),
        (
            format!("{header}{{\"kind\":\"widget\"}}\n"),
            "line 2: unknown variant `widget`",
        ),
        (
            format!(
                "{header}{{\"kind\":\"incoming\",\"cid\":1,\"client_id\":\"a\",\"packet_id\":1}}\n"
            ),
            "line 2: session 1/a is not defined",
        ),
        (
            format!(
                "{header}\n{session}\n{{\"kind\":\"account\",\"cid\":1,\"json\":{{\"b64\":\"***\"}}}}\n"
            ),
            "line 4: bad base64",
        ),
        (
            format!(
                "{header}{session}\n{{\"kind\":\"subscription\",\"cid\":1,\"client_id\":\"a\",\"filter\":\"x\",\"qos\":3,\"no_local\":false,\"retain_as_published\":false,\"retain_handling\":0}}\n"
            ),
            "line 3: qos 3",
        ),
        (
            format!("{header}{{\"kind\":\"token\",\"id\":1,\"json\":\"{{}}\",\"extra\":1}}\n"),
            "line 2: unknown field `extra`",
        ),
    ] {
        let err = import_error(&text);
        assert!(
            err.contains(fragment),
            "`{err}` does not contain `{fragment}`"
        );
    }
}
