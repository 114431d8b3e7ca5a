//! Group operations: create, change, delete, and device membership (kept on the device).

use bytes::Bytes;
use serde_json::{Value, json};
use tern_broker::Cid;
use tern_store::Op;

use crate::{Device, Gateway, Group, GroupChanges, GroupInput, GwError};

impl Gateway {
    fn put_group(&self, g: &Group) {
        if let Ok(json) = serde_json::to_vec(g) {
            self.write(Op::PutGroup {
                id: g.id,
                json: Bytes::from(json),
            });
        }
    }

    pub fn create_group(&self, input: GroupInput, cid: Cid) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let g = Group {
            id: self.take_id(&mut st, crate::GwKind::Group)?,
            cid,
            name: input.name.unwrap_or_default(),
            metadata: input.metadata.unwrap_or_default(),
        };
        self.put_group(&g);
        let item = g.item();
        st.groups.insert(g.id, g);
        Ok(item)
    }

    /// The groups of the accounts in `scope`.
    pub fn groups(&self, scope: &[Cid]) -> Vec<Value> {
        let st = self.state.lock();
        st.groups
            .values()
            .filter(|g| scope.contains(&g.cid))
            .map(Group::item)
            .collect()
    }

    pub fn update_group(
        &self,
        id: u64,
        changes: &GroupChanges,
        merge: bool,
    ) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let g = st
            .groups
            .get(&id)
            .ok_or(GwError::NotFound { what: "group", id })?;
        let new = changes.apply(g, merge);
        self.put_group(&new);
        let item = new.item();
        st.groups.insert(id, new);
        Ok(item)
    }

    /// Deletes group `id`; its devices leave it.
    pub fn delete_group(&self, id: u64) -> Result<Value, GwError> {
        let mut st = self.state.lock();
        let g = st
            .groups
            .remove(&id)
            .ok_or(GwError::NotFound { what: "group", id })?;
        self.write(Op::DelGroup { id });
        let members: Vec<Device> = st
            .devices
            .values()
            .filter(|d| d.groups.contains(&id))
            .cloned()
            .collect();
        for mut d in members {
            d.groups.retain(|x| *x != id);
            self.put_device(&d);
            st.insert_device(d);
        }
        Ok(g.item())
    }

    /// Adds (or with `remove`, takes out) devices to group `group`; returns the devices
    /// changed, as `{"id"}` items.
    pub fn assign(&self, group: u64, devices: &[u64], remove: bool) -> Result<Vec<Value>, GwError> {
        let mut st = self.state.lock();
        if !st.groups.contains_key(&group) {
            return Err(GwError::NotFound {
                what: "group",
                id: group,
            });
        }
        let mut done = Vec::new();
        for id in devices {
            let Some(mut d) = st.devices.get(id).cloned() else {
                continue;
            };
            let member = d.groups.contains(&group);
            if remove && member {
                d.groups.retain(|g| *g != group);
            } else if !remove && !member {
                d.groups.push(group);
            } else {
                continue;
            }
            self.put_device(&d);
            done.push(json!({"id": d.id}));
            st.insert_device(d);
        }
        Ok(done)
    }
}
