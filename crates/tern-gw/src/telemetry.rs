//! A device's telemetry (docs/flespi.md#devices): the latest `{value, ts}` of every parameter its
//! messages carried. A message updates a parameter only when its `timestamp` is at least the
//! parameter's `ts` (a late message never overwrites newer values). `position` is synthetic:
//! the object of the latest `position.*` values without the prefix. At most
//! [`MAX_PARAMS`] parameters; the least recently updated go first.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// Parameters kept per device.
pub const MAX_PARAMS: usize = 1024;

/// The synthetic parameter, and the prefix of the parameters it is made of.
const POSITION: &str = "position";
const POSITION_PREFIX: &str = "position.";

/// One parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub value: Value,
    pub ts: f64,
    /// Update order, for the least-recently-updated rule.
    touched: u64,
}

/// What a message changed: parameters with a new value or ts, and parameters evicted.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    params: HashMap<String, Param>,
    tick: u64,
}

impl Telemetry {
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.params.get(name)
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Parameters by name, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Param)> {
        let mut v: Vec<_> = self.params.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }

    /// Applies messages (with their timestamps) in order: the parameters they left set
    /// (`updated`, each once) and those they left removed.
    pub fn apply_all<'a>(
        &mut self,
        messages: impl IntoIterator<Item = (f64, &'a Map<String, Value>)>,
    ) -> Changes {
        let mut all = Changes::default();
        for (ts, msg) in messages {
            let c = self.apply(msg, ts);
            for k in c.updated {
                all.removed.retain(|r| *r != k);
                if !all.updated.contains(&k) {
                    all.updated.push(k);
                }
            }
            for k in c.removed {
                all.updated.retain(|t| *t != k);
                all.removed.push(k);
            }
        }
        all
    }

    /// Applies one message with timestamp `ts`.
    pub fn apply(&mut self, msg: &Map<String, Value>, ts: f64) -> Changes {
        let mut changes = Changes::default();
        let mut position = false;
        for (k, v) in msg {
            if k == POSITION {
                // A message's own `position` object is not a parameter: the synthetic one is.
                continue;
            }
            if self.set(k, v, ts, &mut changes) && k.starts_with(POSITION_PREFIX) {
                position = true;
            }
        }
        if position {
            let mut obj = Map::new();
            let mut latest = ts;
            for (k, p) in &self.params {
                if let Some(rest) = k.strip_prefix(POSITION_PREFIX) {
                    obj.insert(rest.to_string(), p.value.clone());
                    latest = latest.max(p.ts);
                }
            }
            let value = Value::Object(obj);
            self.set(POSITION, &value, latest, &mut changes);
        }
        self.evict(&mut changes);
        changes
    }

    /// Sets a parameter if `ts` is not older; true if the value or ts changed.
    fn set(&mut self, name: &str, value: &Value, ts: f64, changes: &mut Changes) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.params.get_mut(name) {
            Some(p) if ts < p.ts => false,
            Some(p) => {
                p.touched = tick;
                if p.value == *value && p.ts == ts {
                    return false;
                }
                p.value = value.clone();
                p.ts = ts;
                changes.updated.push(name.to_string());
                true
            }
            None => {
                self.params.insert(
                    name.to_string(),
                    Param {
                        value: value.clone(),
                        ts,
                        touched: tick,
                    },
                );
                changes.updated.push(name.to_string());
                true
            }
        }
    }

    fn evict(&mut self, changes: &mut Changes) {
        while self.params.len() > MAX_PARAMS {
            let Some(oldest) = self
                .params
                .iter()
                .min_by_key(|(_, p)| p.touched)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.params.remove(&oldest);
            changes.updated.retain(|k| *k != oldest);
            changes.removed.push(oldest);
        }
    }

    /// Removes parameters (`None`: all); returns the removed names.
    pub fn remove(&mut self, names: Option<&[String]>) -> Vec<String> {
        match names {
            None => {
                let mut all: Vec<String> = self.params.drain().map(|(k, _)| k).collect();
                all.sort();
                all
            }
            Some(names) => names
                .iter()
                .filter(|n| self.params.remove(n.as_str()).is_some())
                .cloned()
                .collect(),
        }
    }

    /// `{"<param>": {"value", "ts"}}` for the REST API and the store; `names` picks some.
    pub fn to_json(&self, names: Option<&[String]>) -> Value {
        let mut out = Map::new();
        for (k, p) in self.iter() {
            if names.is_none_or(|n| n.iter().any(|x| x == k)) {
                out.insert(k.clone(), json!({"value": p.value, "ts": number(p.ts)}));
            }
        }
        Value::Object(out)
    }

    /// `{"<param>": value}`: what selectors see as `telemetry.<param>`.
    pub fn values(&self) -> Value {
        Value::Object(
            self.params
                .iter()
                .map(|(k, p)| (k.clone(), p.value.clone()))
                .collect(),
        )
    }

    /// Rebuilds telemetry from its stored document (older `ts` counts as less recently
    /// updated).
    pub fn from_json(doc: &Value) -> Telemetry {
        let mut t = Telemetry::default();
        let Some(obj) = doc.as_object() else {
            return t;
        };
        let mut params: Vec<(String, Value, f64)> = obj
            .iter()
            .filter_map(|(k, v)| {
                let ts = v.get("ts")?.as_f64()?;
                Some((k.clone(), v.get("value")?.clone(), ts))
            })
            .collect();
        params.sort_by(|a, b| a.2.total_cmp(&b.2));
        for (k, value, ts) in params {
            t.tick += 1;
            t.params.insert(
                k,
                Param {
                    value,
                    ts,
                    touched: t.tick,
                },
            );
        }
        t
    }
}

/// A time as JSON: whole seconds as an integer, otherwise with the fraction.
pub fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_late_message_never_overwrites_newer_values() {
        let mut t = Telemetry::default();
        t.apply(&msg(json!({"speed": 10, "ident": "a"})), 100.0);
        let late = t.apply(&msg(json!({"speed": 5, "fuel": 3})), 50.0);
        assert_eq!(late.updated, vec!["fuel".to_string()]);
        assert_eq!(t.get("speed").map(|p| p.value.clone()), Some(json!(10)));
        let same = t.apply(&msg(json!({"speed": 10})), 100.0);
        assert!(same.is_empty(), "same value and ts: nothing to publish");
        t.apply(&msg(json!({"speed": 11})), 100.0);
        assert_eq!(t.get("speed").map(|p| p.value.clone()), Some(json!(11)));
    }

    #[test]
    fn position_is_the_object_of_the_latest_position_values() {
        let mut t = Telemetry::default();
        let c = t.apply(
            &msg(json!({"position.latitude": 54.7, "position.longitude": 25.2, "x": 1})),
            10.0,
        );
        assert!(c.updated.contains(&"position".to_string()));
        t.apply(&msg(json!({"position.latitude": 55.0})), 20.0);
        let p = t.get("position").expect("position");
        assert_eq!(p.value, json!({"latitude": 55.0, "longitude": 25.2}));
        assert_eq!(p.ts, 20.0);
        let late = t.apply(&msg(json!({"position.latitude": 1.0})), 5.0);
        assert!(late.is_empty());
    }

    #[test]
    fn at_most_1024_parameters_least_recently_updated_go_first() {
        let mut t = Telemetry::default();
        for i in 0..MAX_PARAMS {
            t.apply(&msg(json!({ format!("p{i}"): i })), 1.0);
        }
        t.apply(&msg(json!({"p0": 1})), 2.0);
        let c = t.apply(&msg(json!({"new": 1})), 3.0);
        assert_eq!(c.removed, vec!["p1".to_string()]);
        assert_eq!(t.len(), MAX_PARAMS);
        assert!(t.get("p0").is_some());
    }

    #[test]
    fn round_trips_through_json() {
        let mut t = Telemetry::default();
        t.apply(&msg(json!({"a": 1, "b": "x"})), 1.5);
        let back = Telemetry::from_json(&t.to_json(None));
        assert_eq!(back.to_json(None), t.to_json(None));
        assert_eq!(
            t.to_json(Some(&["a".to_string()])),
            json!({"a": {"value": 1, "ts": 1.5}})
        );
    }
}
