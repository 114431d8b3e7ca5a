//! A webhook (docs/flespi.md#webhooks, spec flespi-gw §6): the stored record, the checks of
//! what a client sends, and the compiled form the trigger tap and the delivery task use.
//!
//! Item: `id`, `cid`, `name`, `enabled`, `triggers` (1 to 3, ORed: `{topic, filter: {cid,
//! payload}}`), `configuration` (one step object, or an array of steps run in order):
//! `{type: "custom-server", method, uri, headers: [{name, value}], body, ca, timeout, validate:
//! {expression, action: break|skip|retry}}` or `{type: "flespi-platform", method, uri, body,
//! cid}`. `uri`, header values and `body` are `%expr%` templates (`tern_expr::Template`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tern_broker::Cid;
use tern_expr::{Expr, Template};

use crate::error::GwError;

/// Most triggers of one webhook.
pub const MAX_TRIGGERS: usize = 3;
/// Most steps of one chain.
pub const MAX_STEPS: usize = 10;
/// `timeout` (seconds) of a custom-server step when not given.
pub const DEFAULT_TIMEOUT: u64 = 30;

/// Fields a client cannot set.
pub const READ_ONLY: &[&str] = &["id", "cid"];

/// A webhook as stored (the JSON document of `Op::PutWebhook`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: u64,
    pub cid: Cid,
    pub name: String,
    pub enabled: bool,
    pub triggers: Vec<Value>,
    /// One step object or an array of them, as given.
    pub configuration: Value,
}

impl Webhook {
    /// The item.
    pub fn item(&self) -> Value {
        json!({
            "id": self.id,
            "cid": self.cid,
            "name": self.name,
            "enabled": self.enabled,
            "triggers": self.triggers,
            "configuration": self.configuration,
        })
    }

    /// A webhook from a client's document (`id` and `cid` are the caller's to set), checked
    /// and compiled.
    pub fn from_input(doc: &Map<String, Value>, id: u64, cid: Cid) -> Result<Webhook, GwError> {
        for key in doc.keys() {
            if !matches!(
                key.as_str(),
                "name" | "enabled" | "triggers" | "configuration"
            ) && !READ_ONLY.contains(&key.as_str())
            {
                return Err(invalid(format!("unknown field `{key}`")));
            }
        }
        let name = match doc.get("name") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            None => return Err(invalid("`name` is required")),
            _ => return Err(invalid("`name` must be a string of 1 to 255 characters")),
        };
        let enabled = match doc.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("`enabled` must be a boolean")),
        };
        let triggers = match doc.get("triggers") {
            Some(Value::Array(t)) => t.clone(),
            None => return Err(invalid("`triggers` is required")),
            Some(_) => return Err(invalid("`triggers` must be an array")),
        };
        let configuration = doc
            .get("configuration")
            .cloned()
            .ok_or_else(|| invalid("`configuration` is required"))?;
        let w = Webhook {
            id,
            cid,
            name,
            enabled,
            triggers,
            configuration,
        };
        w.compile()?;
        Ok(w)
    }

    /// The compiled triggers and steps; an error names what is wrong.
    pub fn compile(&self) -> Result<Compiled, GwError> {
        if self.triggers.is_empty() || self.triggers.len() > MAX_TRIGGERS {
            return Err(invalid(format!(
                "`triggers` takes 1 to {MAX_TRIGGERS} triggers, found {}",
                self.triggers.len()
            )));
        }
        let triggers = self
            .triggers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Trigger::compile(t, self.cid).map_err(|e| prefix(&format!("triggers[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let steps: Vec<&Value> = match &self.configuration {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(invalid(format!(
                "`configuration` takes 1 to {MAX_STEPS} steps, found {}",
                steps.len()
            )));
        }
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| Step::compile(s).map_err(|e| prefix(&format!("configuration[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Compiled { triggers, steps })
    }
}

fn invalid(msg: impl Into<String>) -> GwError {
    GwError::Invalid(msg.into())
}

fn prefix(at: &str, e: GwError) -> GwError {
    match e {
        GwError::Invalid(m) => GwError::Invalid(format!("{at}: {m}")),
        other => other,
    }
}

/// What a webhook runs, compiled once.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub triggers: Vec<Trigger>,
    pub steps: Vec<Step>,
}

/// One trigger: a topic filter on the account's bus, an optional publisher account and an
/// optional expression over the payload.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub topic: String,
    /// The publisher's account; `None`: the webhook's own.
    pub cid: Option<Cid>,
    pub payload: Option<Expr>,
}

impl Trigger {
    fn compile(v: &Value, own: Cid) -> Result<Trigger, GwError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("a trigger is an object"))?;
        let topic = obj
            .get("topic")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("`topic` (a topic filter) is required"))?;
        tern_topic::validate_topic_filter(topic)
            .map_err(|e| invalid(format!("`topic` `{topic}` is not a valid filter: {e}")))?;
        let (mut cid, mut payload) = (None, None);
        match obj.get("filter") {
            None | Some(Value::Null) => {}
            Some(Value::Object(f)) => {
                for key in f.keys() {
                    if key != "cid" && key != "payload" {
                        return Err(invalid(format!("unknown filter field `{key}`")));
                    }
                }
                match f.get("cid") {
                    None | Some(Value::Null) => {}
                    Some(c) => {
                        let c = c
                            .as_u64()
                            .ok_or_else(|| invalid("`filter.cid` must be an account id"))?;
                        cid = Some(c);
                    }
                }
                match f.get("payload") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(src)) => {
                        payload = Some(Expr::parse(src).map_err(|e| {
                            invalid(format!("`filter.payload` `{src}` does not parse: {e}"))
                        })?);
                    }
                    Some(_) => {
                        return Err(invalid("`filter.payload` must be an expression string"));
                    }
                }
            }
            Some(_) => return Err(invalid("`filter` must be an object")),
        }
        let _ = own;
        Ok(Trigger {
            topic: topic.to_string(),
            cid,
            payload,
        })
    }
}

/// What a custom-server step does when its `validate.expression` fails on the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop the chain; the call is done (logged).
    Break,
    /// Go on with the next step (logged).
    Skip,
    /// Try the step again, as after a 5xx.
    Retry,
}

/// One step of the chain.
#[derive(Debug, Clone)]
pub enum Step {
    CustomServer {
        method: hyper::Method,
        uri: Template,
        headers: Vec<(hyper::header::HeaderName, Template)>,
        body: Template,
        ca: Option<String>,
        timeout: Duration,
        validate: Option<(Expr, Action)>,
    },
    Platform {
        method: hyper::Method,
        uri: Template,
        body: Template,
        cid: Option<Cid>,
    },
}

fn template(obj: &Map<String, Value>, key: &str, default: &str) -> Result<Template, GwError> {
    let src = match obj.get(key) {
        None | Some(Value::Null) => default,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid(format!("`{key}` must be a string"))),
    };
    Template::parse(src).map_err(|e| invalid(format!("`{key}`: {e}")))
}

fn method(obj: &Map<String, Value>) -> Result<hyper::Method, GwError> {
    let m = match obj.get("method") {
        None | Some(Value::Null) => "POST",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(invalid("`method` must be a string")),
    };
    match m.to_ascii_uppercase().as_str() {
        "GET" => Ok(hyper::Method::GET),
        "POST" => Ok(hyper::Method::POST),
        "PUT" => Ok(hyper::Method::PUT),
        "PATCH" => Ok(hyper::Method::PATCH),
        "DELETE" => Ok(hyper::Method::DELETE),
        other => Err(invalid(format!(
            "`method` `{other}`: use GET, POST, PUT, PATCH or DELETE"
        ))),
    }
}

impl Step {
    fn compile(v: &Value) -> Result<Step, GwError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("a step is an object"))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("custom-server") => Step::custom_server(obj),
            Some("flespi-platform") => Step::platform(obj),
            _ => Err(invalid(
                "`type` must be \"custom-server\" or \"flespi-platform\"",
            )),
        }
    }

    fn custom_server(obj: &Map<String, Value>) -> Result<Step, GwError> {
        let uri = template(obj, "uri", "")?;
        // With every expression as `null`, the URI must be an absolute http(s) URI.
        let probe = uri.render(&Value::Null, 0.0);
        check_http_uri(&probe).map_err(|e| invalid(format!("`uri` `{}`: {e}", uri.source())))?;
        let mut headers = Vec::new();
        match obj.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for h in list {
                    let name = h
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid("a header is {\"name\", \"value\"}"))?;
                    let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| invalid(format!("header name `{name}` is not valid")))?;
                    let value = h
                        .as_object()
                        .map(|o| template(o, "value", ""))
                        .transpose()?
                        .ok_or_else(|| invalid("a header is {\"name\", \"value\"}"))?;
                    headers.push((name, value));
                }
            }
            Some(_) => return Err(invalid("`headers` must be an array of {name, value}")),
        }
        let ca = match obj.get("ca") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("`ca` must be a PEM string")),
        };
        let timeout = match obj.get("timeout") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(v) => v
                .as_u64()
                .filter(|t| (1..=600).contains(t))
                .ok_or_else(|| invalid("`timeout` must be 1 to 600 seconds"))?,
        };
        let validate = match obj.get("validate") {
            None | Some(Value::Null) => None,
            Some(Value::Object(v)) => {
                let src = v
                    .get("expression")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("`validate.expression` is required"))?;
                let expr = Expr::parse(src).map_err(|e| {
                    invalid(format!("`validate.expression` `{src}` does not parse: {e}"))
                })?;
                let action = match v.get("action").and_then(Value::as_str) {
                    None | Some("break") => Action::Break,
                    Some("skip") => Action::Skip,
                    Some("retry") => Action::Retry,
                    Some(other) => {
                        return Err(invalid(format!(
                            "`validate.action` `{other}`: use break, skip or retry"
                        )));
                    }
                };
                Some((expr, action))
            }
            Some(_) => return Err(invalid("`validate` must be an object")),
        };
        Ok(Step::CustomServer {
            method: method(obj)?,
            uri,
            headers,
            body: template(obj, "body", "")?,
            ca,
            timeout: Duration::from_secs(timeout),
            validate,
        })
    }

    fn platform(obj: &Map<String, Value>) -> Result<Step, GwError> {
        let uri = template(obj, "uri", "")?;
        if uri.source().is_empty() {
            return Err(invalid(
                "`uri` (a REST path such as /gw/devices/all) is required",
            ));
        }
        let cid = match obj.get("cid") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| invalid("`cid` must be an account id"))?,
            ),
        };
        Ok(Step::Platform {
            method: method(obj)?,
            uri,
            body: template(obj, "body", "")?,
            cid,
        })
    }
}

/// Checks that `uri` is an absolute `http://` or `https://` URI with a host.
pub fn check_http_uri(uri: &str) -> Result<hyper::Uri, String> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| format!("not a valid URI ({e})"))?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the scheme must be http or https".into()),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err("the URI has no host".into());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn err(v: Value) -> String {
        match Webhook::from_input(&doc(v), 1, 1) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn a_chain_compiles() {
        let w = Webhook::from_input(
            &doc(json!({
                "name": "w",
                "triggers": [{"topic": "a/+", "filter": {"cid": 5, "payload": "x > 1"}}],
                "configuration": [
                    {"type": "custom-server", "method": "post", "uri": "http://h:1/%topics[1]%",
                     "headers": [{"name": "X-A", "value": "%cid%"}], "body": "%payload%",
                     "validate": {"expression": "code == 200", "action": "retry"}},
                    {"type": "flespi-platform", "method": "GET", "uri": "/gw/devices/all"}
                ]
            })),
            3,
            7,
        );
        let w = w.map_err(|e| e.to_string());
        assert!(w.is_ok(), "{w:?}");
        let c = w.map(|w| w.compile().map(|c| c.steps.len()).ok());
        assert_eq!(c, Ok(Some(2)));
    }

    #[test]
    fn bad_input_is_named() {
        let t = json!([{"topic": "a"}]);
        let step = json!({"type": "custom-server", "uri": "http://h/"});
        assert!(err(json!({"name": "w", "triggers": t, "configuration": {"type": "custom-server", "uri": "http://h/%a +%"}})).contains("configuration[0]: `uri`: template at 9"));
        assert!(err(json!({"name": "w", "triggers": t, "configuration": {"type": "custom-server", "uri": "ftp://h/"}})).contains("scheme"));
        assert!(err(json!({"name": "w", "triggers": t, "configuration": {"type": "custom-server", "uri": "not a uri"}})).contains("`uri`"));
        assert!(err(json!({"name": "w", "triggers": [{"topic":"a"},{"topic":"b"},{"topic":"c"},{"topic":"d"}], "configuration": step})).contains("1 to 3 triggers, found 4"));
        assert!(
            err(json!({"name": "w", "triggers": [], "configuration": step})).contains("found 0")
        );
        assert!(
            err(json!({"name": "w", "triggers": [{"topic": "a/#/b"}], "configuration": step}))
                .contains("triggers[0]")
        );
        assert!(err(json!({"name": "w", "triggers": [{"topic": "a", "filter": {"payload": "x >"}}], "configuration": step})).contains("filter.payload"));
        assert!(
            err(json!({"name": "w", "triggers": t, "configuration": {"type": "other"}}))
                .contains("`type`")
        );
        assert!(err(json!({"triggers": t, "configuration": step})).contains("`name`"));
    }
}
