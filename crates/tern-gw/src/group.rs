//! Device groups (`/gw/groups`): named sets of devices, so a selector can say `groups.id=N`.
//! Membership is kept on the device (`Device::groups`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: u64,
    pub cid: u64,
    pub name: String,
    pub metadata: Map<String, Value>,
}

impl Group {
    pub fn item(&self) -> Value {
        json!({"id": self.id, "cid": self.cid, "name": self.name, "metadata": self.metadata})
    }
}

/// A new group (POST /gw/groups).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub name: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub cid: Option<u64>,
}

/// Changes of PUT/PATCH /gw/groups/{sel}.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChanges {
    pub name: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

impl GroupChanges {
    pub fn apply(&self, g: &Group, merge: bool) -> Group {
        let mut g = g.clone();
        if let Some(n) = &self.name {
            g.name = n.clone();
        }
        if let Some(m) = &self.metadata {
            if merge {
                let mut v = Value::Object(g.metadata.clone());
                crate::device::merge_patch(&mut v, Value::Object(m.clone()));
                g.metadata = match v {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
            } else {
                g.metadata = m.clone();
            }
        }
        g
    }
}
