//! Templates (`%expr%`) and the functions made for them: `json()`, `strescape()`, `isstring()`.

use std::borrow::Cow;

use proptest::prelude::*;
use serde_json::json;

use crate::{Expr, JsonContext, MessageContext, Template, TemplateError, UserProperties, Value};

fn render(src: &str, doc: &serde_json::Value) -> String {
    Template::parse(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .render(doc, 1_700_000_000.0)
}

fn ev(src: &str, doc: &serde_json::Value) -> Value {
    Expr::parse(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .eval(&JsonContext::new(doc, 0.0))
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn webhook_doc() -> serde_json::Value {
    json!({
        "topic": "sensors/kitchen/temp",
        "topics": ["sensors", "kitchen", "temp"],
        "payload": "{\"temp\":21.5,\"unit\":\"C\",\"tags\":[\"a\",\"b\"],\"a/b\":1,\"m~n\":2,\"text\":\"say \\\"hi\\\"\"}",
        "timestamp": 1_700_000_000.5,
        "cid": 42,
        "user_properties": {"k": "v"}
    })
}

#[test]
fn expressions_render_scalars_and_json() {
    let doc = webhook_doc();
    assert_eq!(render("%topic%", &doc), "sensors/kitchen/temp");
    assert_eq!(render("%topics[1]%", &doc), "kitchen");
    assert_eq!(render("%cid%", &doc), "42");
    assert_eq!(render("%timestamp%", &doc), "1700000000.5");
    assert_eq!(render("%cid > 1%", &doc), "true");
    assert_eq!(render("%user_properties%", &doc), r#"{"k":"v"}"#);
    assert_eq!(render("%topics%", &doc), r#"["sensors","kitchen","temp"]"#);
    assert_eq!(render("%user_properties.k%", &doc), "v");
    assert_eq!(render("%now()%", &doc), "1700000000");
    // Several expressions and text around them.
    assert_eq!(
        render("https://h/x?t=%topic%&c=%cid%#end", &doc),
        "https://h/x?t=sensors/kitchen/temp&c=42#end"
    );
    assert_eq!(render("%cid%%cid%", &doc), "4242");
}

#[test]
fn missing_fields_and_errors_render_null() {
    let doc = webhook_doc();
    assert_eq!(render("[%nothing%]", &doc), "[null]");
    assert_eq!(render("[%$nothing%]", &doc), "[null]");
    assert_eq!(render("[%cid / 0%]", &doc), "[null]");
    assert_eq!(render("[%topics[9]%]", &doc), "[null]");
}

#[test]
fn literal_percent_and_braces() {
    let doc = json!({"speed": 172, "name": "x"});
    assert_eq!(render("100%%", &doc), "100%");
    assert_eq!(render("%%%speed%%%", &doc), "%172%");
    assert_eq!(render("a%%20b", &doc), "a%20b");
    assert_eq!(render("%{speed % 100}%", &doc), "72");
    assert_eq!(render("%{name + \"%\"}%", &doc), "x%");
}

#[test]
fn plain_templates_render_borrowed() {
    let t = Template::parse("no expressions here").unwrap();
    assert!(t.is_constant());
    let doc = json!({});
    assert!(matches!(
        t.render_with(&JsonContext::new(&doc, 0.0)),
        Cow::Borrowed("no expressions here")
    ));
    let t = Template::parse("50%%").unwrap();
    assert!(t.is_constant());
    assert_eq!(t.render(&doc, 0.0), "50%");
    let t = Template::parse("").unwrap();
    assert_eq!(t.render(&doc, 0.0), "");
    assert_eq!(t.expressions().count(), 0);
}

#[test]
fn parse_errors_name_the_position_and_expression() {
    let err = |s: &str| Template::parse(s).expect_err(s);
    assert_eq!(err("abc %def"), TemplateError::Unterminated { offset: 4 });
    assert!(
        err("abc %def")
            .to_string()
            .contains("write %% for a literal %")
    );
    assert_eq!(err("x%{a"), TemplateError::UnterminatedBrace { offset: 1 });
    let e = err("/devices/%device.id +%/x");
    assert_eq!(e.offset(), 9);
    assert!(
        e.to_string()
            .starts_with("template at 9: expression 'device.id +': at "),
        "{e}"
    );
    let e = err("%foo(1)%");
    assert!(e.to_string().contains("expression 'foo(1)'"), "{e}");
    assert!(e.to_string().contains("unknown function 'foo'"), "{e}");
    assert_eq!(err("%{}%").offset(), 0);
    // Percent-encoding must be doubled.
    assert!(Template::parse("http://h/a%20b").is_err());
}

#[test]
fn templates_render_over_message_contexts() {
    let props = [("a", "1")];
    let up = UserProperties(&props);
    let ctx = MessageContext {
        topic: "a/b",
        cid: 9,
        timestamp: 5.0,
        user_properties: &up,
        payload: Some("{\"x\":[1,2]}"),
        now: 0.0,
    };
    let t =
        Template::parse("%topics[0]%-%cid%-%user_properties.a%-%json(payload, \"/x/1\")%").unwrap();
    assert_eq!(t.render_with(&ctx), "a-9-1-2");
    // A context's own composite is not listed.
    assert_eq!(
        Template::parse("%user_properties%")
            .unwrap()
            .render_with(&ctx),
        "null"
    );
}

#[test]
fn json_pointer_into_strings_and_values() {
    let doc = webhook_doc();
    assert_eq!(ev("json(payload, \"/temp\")", &doc), Value::Number(21.5));
    assert_eq!(
        ev("json(payload, \"/unit\")", &doc),
        Value::String("C".into())
    );
    assert_eq!(
        ev("json(payload, \"/tags/1\")", &doc),
        Value::String("b".into())
    );
    assert_eq!(ev("json(payload, \"/a~1b\")", &doc), Value::Number(1.0));
    assert_eq!(ev("json(payload, \"/m~0n\")", &doc), Value::Number(2.0));
    assert_eq!(ev("json(payload, \"/missing\")", &doc), Value::Null);
    assert_eq!(ev("json(payload, \"/tags/01\")", &doc), Value::Null);
    assert_eq!(ev("json(payload, \"temp\")", &doc), Value::Null);
    assert_eq!(ev("json(\"not json\", \"/a\")", &doc), Value::Null);
    assert_eq!(
        ev("json(payload, \"/tags\")[0]", &doc),
        Value::String("a".into())
    );
    assert_eq!(
        ev("json(payload, \"\").unit", &doc),
        Value::String("C".into())
    );
    assert_eq!(ev("json(payload, \"/temp\") > 20", &doc), Value::Bool(true));
    // Over a value the context lends: walked in place, numeric tokens index arrays.
    let doc = json!({"position": {"speed": 7, "list": [{"a": true}]}, "n": 5});
    assert_eq!(ev("json(position, \"/speed\")", &doc), Value::Number(7.0));
    assert_eq!(ev("json(position, \"/list/0/a\")", &doc), Value::Bool(true));
    assert_eq!(ev("json(position, \"/list/x\")", &doc), Value::Null);
    assert_eq!(ev("json(n, \"\")", &doc), Value::Number(5.0));
    assert_eq!(ev("json(n, \"/x\")", &doc), Value::Null);
    // In a template, a composite target renders as JSON.
    assert_eq!(
        render("%json(payload, \"/tags\")%", &webhook_doc()),
        r#"["a","b"]"#
    );
    // A pointer that is not a string is an error.
    assert!(
        Expr::parse("json(payload, 1)")
            .unwrap()
            .eval(&JsonContext::new(&webhook_doc(), 0.0))
            .unwrap_err()
            .to_string()
            .contains("JSON pointer")
    );
    assert!(Expr::parse("json(payload)").is_err());
}

#[test]
fn strescape_and_isstring() {
    let doc = json!({"s": "a\"b\\c\n\u{1}é", "n": 1.5, "o": {"x": 1}, "z": null});
    assert_eq!(
        ev("strescape(s)", &doc),
        Value::String("a\\\"b\\\\c\\n\\u0001é".into())
    );
    assert_eq!(ev("strescape(n)", &doc), Value::String("1.5".into()));
    assert_eq!(ev("strescape(z)", &doc), Value::String(String::new()));
    assert!(
        Expr::parse("strescape(o)")
            .unwrap()
            .eval(&JsonContext::new(&doc, 0.0))
            .is_err()
    );
    assert_eq!(ev("isstring(s)", &doc), Value::Bool(true));
    assert_eq!(ev("isstring(n)", &doc), Value::Bool(false));
    assert_eq!(ev("isstring(strescape(n))", &doc), Value::Bool(true));
    // The usual use: a string spliced into a JSON body stays JSON.
    let body = render(
        "{\"text\":\"%strescape(json(payload, \"/text\"))%\",\"t\":%json(payload, \"/temp\")%}",
        &webhook_doc(),
    );
    let parsed: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(parsed, json!({"text": "say \"hi\"", "t": 21.5}));
}

proptest! {
    /// Any text without `%` is a constant template rendering to itself; doubling every `%` of
    /// any text gives a template rendering to that text.
    #[test]
    fn literal_text_round_trips(text in any::<String>()) {
        let doc = json!({});
        let escaped = text.replace('%', "%%");
        let t = Template::parse(&escaped).unwrap();
        prop_assert!(t.is_constant());
        prop_assert_eq!(t.render(&doc, 0.0), text);
    }

    /// Parsing arbitrary text never panics; when it parses, rendering never panics, and an
    /// error's offset points at a `%` of the text.
    #[test]
    fn arbitrary_templates_never_panic(src in "[a-c%{}()\"+.0-9 /]{0,24}") {
        match Template::parse(&src) {
            Ok(t) => {
                let _ = t.render(&json!({"a": 1, "b": "x", "c": [1]}), 0.0);
            }
            Err(e) => prop_assert_eq!(src.as_bytes().get(e.offset()), Some(&b'%')),
        }
    }

    /// strescape() of any string, put in quotes, parses back as JSON to the same string.
    #[test]
    fn strescape_round_trips_through_json(s in any::<String>()) {
        let doc = json!({"s": s.clone()});
        let Value::String(escaped) = ev("strescape(s)", &doc) else {
            panic!("not a string");
        };
        let back: String = serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
        prop_assert_eq!(back, s);
    }

    /// json(payload, "/k") over a JSON text gives what the JSON value itself gives.
    #[test]
    fn json_over_text_agrees_with_json_over_values(n in any::<i32>(), k in "[a-z~/]{1,4}") {
        let inner = json!({ k.clone(): n, "other": [n] });
        let pointer = format!("/{}", k.replace('~', "~0").replace('/', "~1"));
        let text_doc = json!({"payload": inner.to_string(), "p": pointer});
        let value_doc = json!({"payload": inner, "p": pointer});
        prop_assert_eq!(ev("json(payload, p)", &text_doc), Value::Number(f64::from(n)));
        prop_assert_eq!(ev("json(payload, p)", &value_doc), Value::Number(f64::from(n)));
    }
}
