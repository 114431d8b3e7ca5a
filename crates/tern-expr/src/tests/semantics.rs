//! Operators, coercions, names, indexing, wildcards and functions.

use serde_json::json;

use super::{NOW, boolean, ev, eval_on, fails, num, parse, passes, string};
use crate::{EvalErrorKind as K, JsonContext, MAX_STRING, TypeName, Value};

#[test]
fn literals() {
    assert_eq!(ev("null"), Value::Null);
    assert_eq!(ev("true"), Value::Bool(true));
    assert_eq!(ev("false"), Value::Bool(false));
    assert_eq!(num("42"), 42.0);
    assert_eq!(num("1.25"), 1.25);
    assert_eq!(num(".5"), 0.5);
    assert_eq!(num("1e3"), 1000.0);
    assert_eq!(num("2.5E-1"), 0.25);
    assert_eq!(string(r#""plain""#), "plain");
}

#[test]
fn hex_literals() {
    assert_eq!(num("0x1F"), 31.0);
    assert_eq!(num("0XfF"), 255.0);
    assert_eq!(num("0x10 + 1"), 17.0);
    assert!(boolean("0x1F == 31"));
    assert_eq!(num("0xFFFFFFFFFFFFFFFF"), u64::MAX as f64);
}

#[test]
fn string_escapes() {
    assert_eq!(string(r#""a\"b""#), "a\"b");
    assert_eq!(string(r#""back\\slash""#), "back\\slash");
    assert_eq!(string(r#""l1\nl2\tx\r""#), "l1\nl2\tx\r");
    assert_eq!(string(r#""\u00e9\u20ac\ud83d\ude00""#), "é€😀");
    assert!(boolean(r#"quoted == "a\"b\\c\n""#));
}

#[test]
fn arithmetic() {
    assert_eq!(num("1 + 2"), 3.0);
    assert_eq!(num("5 - 7"), -2.0);
    assert_eq!(num("6 * 7"), 42.0);
    assert_eq!(num("7 / 2"), 3.5);
    assert_eq!(num("7 % 3"), 1.0);
    assert_eq!(num("-7 % 3"), -1.0);
    assert_eq!(num("7.5 % 2"), 1.5);
    assert_eq!(num("-n"), -10.0);
    assert_eq!(num("- -n"), 10.0);
}

#[test]
fn division_by_zero_is_an_error() {
    assert_eq!(fails("1 / 0"), K::DivisionByZero);
    assert_eq!(fails("0 / 0"), K::DivisionByZero);
    assert_eq!(fails("1 % 0"), K::DivisionByZero);
    assert_eq!(fails("n / (n - 10)"), K::DivisionByZero);
    assert_eq!(fails("1 / null"), K::DivisionByZero);
    assert!(!passes("1 / 0"));
    assert!(!passes("1 / 0 == 0 || true"));
}

#[test]
fn plus_concatenates_two_strings_only() {
    assert_eq!(string(r#""ab" + "cd""#), "abcd");
    assert_eq!(string("word + s"), "abc12");
    assert_eq!(num(r#""5" + 1"#), 6.0);
    assert_eq!(num("s + 1"), 13.0);
    assert_eq!(num("null + 1"), 1.0);
    assert_eq!(num("true + true"), 2.0);
    assert_eq!(fails(r#""a" + 1"#), K::NotANumber);
    assert_eq!(fails(r#""a" - "b""#), K::NotANumber);
    assert_eq!(fails("word * 2"), K::NotANumber);
}

#[test]
fn concatenation_is_capped() {
    let big = "x".repeat(MAX_STRING / 2 + 1);
    let d = json!({ "big": big, "half": "y".repeat(MAX_STRING / 2) });
    let e = eval_on("big + big", &d).expect_err("too long");
    assert_eq!(e.kind, K::StringTooLong);
    assert_eq!(e.to_string(), "at 0: string longer than 65536 bytes");
    let ok = eval_on("half + half", &d).expect("exactly the cap");
    assert_eq!(ok, Value::String("y".repeat(MAX_STRING)));
    // Doubling cannot run away: the second doubling already fails.
    assert_eq!(
        eval_on("(half + half) + (half + half)", &d)
            .expect_err("cap")
            .kind,
        K::StringTooLong
    );
}

#[test]
fn bitwise_operators_work_on_integers() {
    assert_eq!(num("6 & 3"), 2.0);
    assert_eq!(num("6 | 3"), 7.0);
    assert_eq!(num("6 ^ 3"), 5.0);
    assert_eq!(num("~0"), -1.0);
    assert_eq!(num("~~5"), 5.0);
    assert_eq!(num("5.9 & 7"), 5.0);
    assert_eq!(num("-5.9 | 0"), -5.0);
    assert_eq!(num("-1 & 0xFF"), 255.0);
    assert_eq!(num("s & 4"), 4.0);
    assert_eq!(num("hex | 1"), 17.0);
    assert_eq!(num("true | 2"), 3.0);
    assert_eq!(num("null ^ 1"), 1.0);
    assert_eq!(fails("1e19 & 1"), K::IntegerRange);
    assert_eq!(fails("~1e300"), K::IntegerRange);
    assert_eq!(fails("word | 1"), K::NotANumber);
}

#[test]
fn comparisons_of_numbers_and_strings() {
    assert!(boolean("1 < 2"));
    assert!(boolean("2 <= 2"));
    assert!(boolean("3 > 2"));
    assert!(boolean("2 >= 2"));
    assert!(!boolean("2 > 2"));
    assert!(boolean("1 == 1.0"));
    assert!(boolean("1 != 2"));
    // Two strings compare as strings, by code point.
    assert!(boolean(r#""abc" < "abd""#));
    assert!(boolean(r#""10" < "9""#));
    assert!(boolean(r#""B" < "a""#));
    assert!(boolean(r#""é" > "z""#));
    assert!(boolean(r#""1.0" != "1""#));
    assert!(boolean(r#"name == "Andrew Smith""#));
}

#[test]
fn mixed_comparisons_convert_to_numbers() {
    assert!(boolean(r#""10" > 9"#));
    assert!(boolean("s == 12"));
    assert!(boolean(r#""1.0" == 1"#));
    assert!(boolean(r#"" 7 " == 7"#));
    assert!(boolean("hex == 16"));
    assert!(boolean("null == 0"));
    assert!(boolean("false == 0"));
    assert!(boolean("true == 1"));
    assert!(boolean(r#""1" == true"#));
    assert!(boolean("null == false"));
    assert!(boolean("null < 1"));
    assert!(boolean("true > false"));
    assert!(boolean("null == null"));
}

#[test]
fn non_numeric_strings_against_numbers() {
    // Equality is decidable: a non-numeric string is simply unequal to a number.
    assert!(!boolean("word == 1"));
    assert!(boolean("word != 1"));
    assert!(!boolean(r#"null == """#));
    assert!(!boolean(r#"true == "true""#));
    // Ordering is not: it is an evaluation error, so the predicate fails.
    assert_eq!(fails("word > 1"), K::NotANumber);
    assert_eq!(fails("1 <= word"), K::NotANumber);
    assert_eq!(fails(r#""" < 1"#), K::NotANumber);
    assert!(!passes("word > 1"));
    assert!(!passes("!(word > 1)"));
}

#[test]
fn nan_compares_false() {
    let nan = "(1e308 * 10 - 1e308 * 10)";
    assert!(!boolean(&format!("{nan} == {nan}")));
    assert!(boolean(&format!("{nan} != {nan}")));
    assert!(!boolean(&format!("{nan} < 1")));
    assert!(!boolean(&format!("{nan} >= 1")));
    assert!(!passes(nan));
}

#[test]
fn composites_are_not_values() {
    assert_eq!(fails("position"), K::NotAValue(TypeName::Object));
    assert_eq!(fails("arr"), K::NotAValue(TypeName::Array));
    assert_eq!(fails("position == 1"), K::NotAValue(TypeName::Object));
    assert_eq!(fails("arr + 1"), K::NotAValue(TypeName::Array));
    assert_eq!(fails("!position"), K::NotAValue(TypeName::Object));
    assert_eq!(fails("position && true"), K::NotAValue(TypeName::Object));
    assert!(!passes("position"));
    assert!(!passes("arr"));
}

#[test]
fn logical_operators_short_circuit_and_yield_booleans() {
    assert_eq!(ev("1 && 2"), Value::Bool(true));
    assert_eq!(ev(r#"1 && "x""#), Value::Bool(true));
    assert_eq!(ev("1 && 0"), Value::Bool(false));
    assert_eq!(ev("0 || 0"), Value::Bool(false));
    assert_eq!(ev(r#"0 || "x""#), Value::Bool(true));
    assert_eq!(ev("null || 3"), Value::Bool(true));
    assert_eq!(ev("true || missing"), Value::Bool(true));
    assert_eq!(ev("false && missing"), Value::Bool(false));
    assert_eq!(ev("0 || 0 || 1 || missing"), Value::Bool(true));
    assert_eq!(fails("missing || true"), K::MissingField);
    assert_eq!(fails("true && missing"), K::MissingField);
    assert!(!passes("missing || true"));
}

#[test]
fn unary_operators() {
    assert_eq!(ev("!0"), Value::Bool(true));
    assert_eq!(ev("!1"), Value::Bool(false));
    assert_eq!(ev(r#"!"""#), Value::Bool(true));
    assert_eq!(ev(r#"!"false""#), Value::Bool(true));
    assert_eq!(ev("!null"), Value::Bool(true));
    assert_eq!(ev("!!word"), Value::Bool(true));
    assert_eq!(num("-s"), -12.0);
    assert_eq!(num("-true"), -1.0);
    assert_eq!(fails("-word"), K::NotANumber);
    assert_eq!(num("~7"), -8.0);
}

#[test]
fn ternary_and_if_are_lazy() {
    assert_eq!(num("n > 5 ? 1 : 2"), 1.0);
    assert_eq!(num("n > 50 ? 1 : 2"), 2.0);
    assert_eq!(string(r#"true ? "a" : missing"#), "a");
    assert_eq!(string(r#"false ? missing : "b""#), "b");
    assert_eq!(string(r#"if(1, "a", missing)"#), "a");
    assert_eq!(string(r#"if(0, missing, "b")"#), "b");
    assert_eq!(string(r#"if(word, "yes", "no")"#), "yes");
    assert_eq!(fails("missing ? 1 : 2"), K::MissingField);
    assert_eq!(fails("position ? 1 : 2"), K::NotAValue(TypeName::Object));
}

#[test]
fn predicate_rule() {
    assert!(passes("true"));
    assert!(passes("1"));
    assert!(passes("-0.5"));
    assert!(passes(r#""abc""#));
    assert!(passes(r#""true""#));
    assert!(passes(r#""1""#));
    assert!(!passes("false"));
    assert!(!passes("0"));
    assert!(!passes("null"));
    assert!(!passes(r#""""#));
    assert!(!passes(r#""0""#));
    assert!(!passes(r#""false""#));
    assert!(!passes("missing"));
    assert!(passes("$missing == null"));
}

#[test]
fn dotted_names_flat_key_wins() {
    let both = json!({"position.speed": 5, "position": {"speed": 72}});
    assert_eq!(eval_on("position.speed", &both), Ok(Value::Number(5.0)));
    let nested = json!({"position": {"speed": 72}});
    assert_eq!(eval_on("position.speed", &nested), Ok(Value::Number(72.0)));
    let flat = json!({"position.speed": 5});
    assert_eq!(eval_on("position.speed", &flat), Ok(Value::Number(5.0)));
    // At each nested level the rest of the name as one key is tried first, too.
    assert_eq!(num("telemetry.position.latitude"), 54.72);
    assert_eq!(num("telemetry.can.vehicle.mileage"), 1000.0);
    assert_eq!(string("nested.deep.er"), "yes");
    let mixed = json!({"a": {"b.c": {"d": 1}, "b": {"c.d": 2}}});
    assert_eq!(eval_on("a.b.c.d", &mixed), Ok(Value::Number(2.0)));
    // Names may have digit-led segments (`ain.1`).
    let ain = json!({"ain": {"1": 3.5}});
    assert_eq!(eval_on("ain.1", &ain), Ok(Value::Number(3.5)));
}

#[test]
fn missing_fields_fail_and_dollar_names_are_null() {
    assert_eq!(fails("missing"), K::MissingField);
    assert_eq!(fails("position.altitude"), K::MissingField);
    assert_eq!(fails("n.x"), K::MissingField);
    assert_eq!(fails("missing == null"), K::MissingField);
    assert!(!passes("position.altitude > 0"));
    assert!(!passes("position.altitude < 0"));
    assert_eq!(ev("$missing"), Value::Null);
    assert_eq!(ev("$position.altitude"), Value::Null);
    assert_eq!(ev("$n.x"), Value::Null);
    assert_eq!(num("$position.speed"), 72.0);
    assert!(boolean("$position.altitude == null"));
    assert!(!boolean("$position.altitude > 5"));
    assert!(boolean("isnull($nothing)"));
    // A present null is a value, not a missing field.
    assert_eq!(ev("z"), Value::Null);
    let e = eval_on("1 + missing", &super::doc()).expect_err("missing");
    assert_eq!(e.to_string(), "at 4: field not found");
    assert_eq!((e.span.start, e.span.end), (4, 11));
}

#[test]
fn indexing_arrays_and_objects() {
    assert_eq!(num("arr[0]"), 1.0);
    assert_eq!(string("arr[1]"), "two");
    assert_eq!(num("arr[2].x"), 3.0);
    assert_eq!(num("arr[2][\"x\"]"), 3.0);
    assert_eq!(num("arr[1 + 1].x"), 3.0);
    assert_eq!(num("arr[n - 10]"), 1.0);
    assert_eq!(num("position[\"speed\"]"), 72.0);
    assert_eq!(num("position[\"sp\" + \"eed\"]"), 72.0);
    assert_eq!(num("telemetry[\"can.vehicle.mileage\"]"), 1000.0);
    assert_eq!(string("nested[\"deep\"].er"), "yes");
    assert_eq!(fails("arr[3]"), K::MissingElement);
    assert_eq!(fails("arr[-1]"), K::MissingElement);
    assert_eq!(fails("arr[1.5]"), K::BadIndex(TypeName::Number));
    assert_eq!(fails("arr[\"0\"]"), K::BadIndex(TypeName::String));
    let e = eval_on("arr[\"0\"]", &super::doc()).expect_err("bad index");
    assert_eq!(e.to_string(), "at 0: cannot index with a string");
    let e = eval_on("1 + n[0]", &super::doc()).expect_err("not indexable");
    assert_eq!(e.to_string(), "at 4: cannot index a number");
    assert_eq!(fails("arr[null]"), K::BadIndex(TypeName::Null));
    assert_eq!(fails("position[\"altitude\"]"), K::MissingElement);
    assert_eq!(fails("position[true]"), K::BadIndex(TypeName::Boolean));
    assert_eq!(fails("n[0]"), K::NotIndexable(TypeName::Number));
    assert_eq!(fails("word[0]"), K::NotIndexable(TypeName::String));
    assert_eq!(fails("arr[0].x"), K::NotIndexable(TypeName::Number));
    assert_eq!(fails("arr[2].y"), K::MissingField);
    assert_eq!(fails("arr[missing]"), K::MissingField);
    let numbered = json!({"m": {"1": "one", "1.5": "x"}});
    assert_eq!(eval_on("m[1]", &numbered), Ok(Value::String("one".into())));
    assert_eq!(eval_on("m[1.5]", &numbered), Ok(Value::String("x".into())));
}

#[test]
fn dollar_chains_are_null_safe() {
    assert_eq!(ev("$arr[5]"), Value::Null);
    assert_eq!(ev("$arr[1.5]"), Value::Null);
    assert_eq!(ev("$missing[0]"), Value::Null);
    assert_eq!(ev("$missing[0].x"), Value::Null);
    assert_eq!(ev("$n[0]"), Value::Null);
    assert_eq!(ev("$arr[2].y"), Value::Null);
    assert_eq!(num("$arr[2].x"), 3.0);
    // Errors inside the index expression are not hidden.
    assert_eq!(fails("$arr[missing]"), K::MissingField);
    // Only the chain that starts with `$` is safe.
    assert_eq!(fails("(arr)[5]"), K::MissingElement);
}

#[test]
fn wildcard_comparisons() {
    assert!(boolean(r#"name == "Andrew*""#));
    assert!(boolean(r#"name = "Andrew*""#));
    assert!(!boolean(r#"name != "Andrew*""#));
    assert!(boolean(r#""Andrew*" == name"#));
    assert!(boolean(r#"name == "*Smith""#));
    assert!(boolean(r#"name == "*rew*""#));
    assert!(boolean(r#"name == "A?drew ?mith""#));
    assert!(!boolean(r#"name == "A?drew""#));
    assert!(boolean(r#"name != "Bob*""#));
    // Without wildcards it is plain equality.
    assert!(!boolean(r#"name == "Andrew""#));
    // Only literals are patterns: a field holding `*` compares plainly.
    assert!(!boolean("name == pattern"));
    assert!(boolean(r#"pattern == "Andrew*""#));
    // Numbers and booleans match by their `tostring` form, null as "".
    assert!(boolean(r#"n == "1?""#));
    assert!(boolean(r#"position.latitude == "54.*""#));
    assert!(boolean(r#"t == "tr*""#));
    assert!(boolean(r#"$missing == "*""#));
    assert!(!boolean(r#"$missing == "?*""#));
    assert_eq!(fails(r#"position == "*""#), K::NotAValue(TypeName::Object));
    // `?` is one character, not one byte.
    let d = json!({"w": "é"});
    assert_eq!(eval_on(r#"w == "?""#, &d), Ok(Value::Bool(true)));
}

#[test]
fn pathological_wildcards_fail_instead_of_stalling() {
    let d = json!({"long": "a".repeat(20_000)});
    // Every start position rescans 500 characters before the final mismatch.
    let src = format!("long == \"*{}?b\"", "a".repeat(500));
    assert_eq!(
        eval_on(&src, &d).expect_err("budget").kind,
        K::MatchTooCostly
    );
    // The budget is per evaluation: many affordable matches add up.
    let d = json!({"long": "a".repeat(2_000)});
    let one = format!("long == \"*{}?b\"", "a".repeat(200));
    assert_eq!(eval_on(&one, &d), Ok(Value::Bool(false)));
    let many = [one.as_str(); 4].join(" || ");
    assert_eq!(
        eval_on(&many, &d).expect_err("budget").kind,
        K::MatchTooCostly
    );
}

#[test]
fn function_not_and_toboolean() {
    assert_eq!(ev("not(0)"), Value::Bool(true));
    assert_eq!(ev("not(1)"), Value::Bool(false));
    assert_eq!(ev(r#"not("")"#), Value::Bool(true));
    assert_eq!(ev("not(n > 5)"), ev("!(n > 5)"));
    assert_eq!(ev(r#"toboolean("false")"#), Value::Bool(false));
    assert_eq!(ev(r#"toboolean("true")"#), Value::Bool(true));
    assert_eq!(ev(r#"toboolean("0")"#), Value::Bool(false));
    assert_eq!(ev(r#"toboolean("yes")"#), Value::Bool(true));
    assert_eq!(ev("toboolean(0)"), Value::Bool(false));
    assert_eq!(ev("toboolean(2)"), Value::Bool(true));
    assert_eq!(ev("toboolean(null)"), Value::Bool(false));
    assert_eq!(fails("toboolean(arr)"), K::NotAValue(TypeName::Array));
}

#[test]
fn function_tonumber() {
    assert_eq!(num(r#"tonumber("12")"#), 12.0);
    assert_eq!(num(r#"tonumber(" 0x10 ")"#), 16.0);
    assert_eq!(num(r#"tonumber("-1.5e2")"#), -150.0);
    assert_eq!(num("tonumber(s)"), 12.0);
    assert_eq!(num("tonumber(n)"), 10.0);
    assert_eq!(num("tonumber(true)"), 1.0);
    assert_eq!(num("tonumber(null)"), 0.0);
    assert_eq!(fails(r#"tonumber("abc")"#), K::NotANumber);
    assert_eq!(fails(r#"tonumber("")"#), K::NotANumber);
    assert_eq!(fails(r#"tonumber("inf")"#), K::NotANumber);
    assert_eq!(fails("tonumber(position)"), K::NotAValue(TypeName::Object));
    let e = eval_on(r#"1 + tonumber("x")"#, &super::doc()).expect_err("nan");
    assert_eq!(e.to_string(), "at 13: string is not a number");
}

#[test]
fn function_tostring() {
    assert_eq!(string("tostring(12)"), "12");
    assert_eq!(string("tostring(-1.5)"), "-1.5");
    assert_eq!(string("tostring(0.1 + 0.2)"), "0.30000000000000004");
    assert_eq!(string("tostring(1e20)"), "1e20");
    assert_eq!(string("tostring(true)"), "true");
    assert_eq!(string("tostring(false)"), "false");
    assert_eq!(string("tostring(null)"), "");
    assert_eq!(string("tostring(word)"), "abc");
    assert_eq!(string("tostring(1) + tostring(2)"), "12");
    assert_eq!(fails("tostring(arr)"), K::NotAValue(TypeName::Array));
}

#[test]
fn type_tests() {
    assert_eq!(ev("isnull(null)"), Value::Bool(true));
    assert_eq!(ev("isnull(z)"), Value::Bool(true));
    assert_eq!(ev("isnull($missing)"), Value::Bool(true));
    assert_eq!(ev("isnull(0)"), Value::Bool(false));
    assert_eq!(ev("isnull(position)"), Value::Bool(false));
    assert_eq!(fails("isnull(missing)"), K::MissingField);
    assert_eq!(ev("isnumber(1)"), Value::Bool(true));
    assert_eq!(ev("isnumber(s)"), Value::Bool(false));
    assert_eq!(ev("isnumber(arr)"), Value::Bool(false));
    assert_eq!(ev("isstring(s)"), Value::Bool(true));
    assert_eq!(ev("isstring(n)"), Value::Bool(false));
    assert_eq!(ev("isstring(tostring(n))"), Value::Bool(true));
    assert_eq!(ev("isboolean(f)"), Value::Bool(true));
    assert_eq!(ev("isboolean(n > 1)"), Value::Bool(true));
    assert_eq!(ev("isboolean(1)"), Value::Bool(false));
}

#[test]
fn function_exists() {
    assert_eq!(ev(r#"exists("position.speed")"#), Value::Bool(true));
    assert_eq!(ev(r#"exists("position")"#), Value::Bool(true));
    assert_eq!(
        ev(r#"exists("telemetry.can.vehicle.mileage")"#),
        Value::Bool(true)
    );
    assert_eq!(ev(r#"exists("position.altitude")"#), Value::Bool(false));
    assert_eq!(ev(r#"exists("missing")"#), Value::Bool(false));
    assert_eq!(ev(r#"exists("z")"#), Value::Bool(true));
    assert_eq!(ev(r#"exists("")"#), Value::Bool(false));
    assert_eq!(ev(r#"exists("a..b")"#), Value::Bool(false));
    let flat = json!({"a.b": 1});
    assert_eq!(eval_on(r#"exists("a.b")"#, &flat), Ok(Value::Bool(true)));
}

#[test]
fn function_strlen() {
    assert_eq!(num("strlen(word)"), 3.0);
    assert_eq!(num(r#"strlen("héllo")"#), 5.0);
    assert_eq!(num(r#"strlen("")"#), 0.0);
    assert_eq!(num("strlen(123)"), 3.0);
    assert_eq!(num("strlen(1.5)"), 3.0);
    assert_eq!(num("strlen(true)"), 4.0);
    assert_eq!(num("strlen(null)"), 0.0);
    assert_eq!(fails("strlen(arr)"), K::NotAValue(TypeName::Array));
}

#[test]
fn function_now_comes_from_the_context() {
    assert_eq!(num("now()"), NOW);
    let d = json!({});
    let e = parse("now() - 10");
    assert_eq!(
        e.eval(&JsonContext::new(&d, 100.0)),
        Ok(Value::Number(90.0))
    );
}

#[test]
fn function_distance() {
    assert_eq!(num("distance(54.72, 25.26, 54.72, 25.26)"), 0.0);
    let one_degree = num("distance(0, 0, 0, 1)");
    assert!((one_degree - 111.194_926).abs() < 1e-3, "{one_degree}");
    let pole_to_pole = num("distance(90, 0, -90, 0)");
    assert!(
        (pole_to_pole - 20_015.086_796).abs() < 1e-3,
        "{pole_to_pole}"
    );
    // Vilnius to Kaunas, roughly 92 km.
    let vk = num("distance(54.6872, 25.2797, 54.8985, 23.9036)");
    assert!((vk - 91.8).abs() < 1.0, "{vk}");
    assert_eq!(num(r#"distance("0", 0, 0, "1")"#), one_degree);
    assert_eq!(fails("distance(word, 0, 0, 0)"), K::NotANumber);
}

#[test]
fn numeric_functions() {
    assert_eq!(num("abs(-3)"), 3.0);
    assert_eq!(num("abs(s)"), 12.0);
    assert_eq!(num("min(3, 1, 2)"), 1.0);
    assert_eq!(num("max(3, \"7\", 2)"), 7.0);
    assert_eq!(num("min(n, 4)"), 4.0);
    assert_eq!(num("max(-1, null)"), 0.0);
    assert_eq!(num("round(2.5)"), 3.0);
    assert_eq!(num("round(-2.5)"), -3.0);
    assert_eq!(num("round(2.4)"), 2.0);
    assert_eq!(num("floor(-1.5)"), -2.0);
    assert_eq!(num("floor(1.9)"), 1.0);
    assert_eq!(num("ceil(1.2)"), 2.0);
    assert_eq!(num("ceil(-1.2)"), -1.0);
    assert_eq!(fails("abs(word)"), K::NotANumber);
    assert_eq!(fails("min(1, word)"), K::NotANumber);
    assert_eq!(fails("round(arr)"), K::NotAValue(TypeName::Array));
}

#[test]
fn eval_and_matches_agree() {
    for src in [
        "n > 5",
        "word",
        "missing",
        "position",
        "\"0\"",
        "1 / 0",
        "name == \"A*\"",
        "tostring(n)",
    ] {
        let e = parse(src);
        let d = super::doc();
        let ctx = JsonContext::new(&d, NOW);
        let by_value = e.eval(&ctx).map(|v| v.is_truthy()).unwrap_or(false);
        assert_eq!(e.matches(&ctx), by_value, "{src}");
    }
}
