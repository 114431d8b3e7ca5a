//! The state topics of docs/flespi.md#broker-events that the REST API keeps current:
//! `flespi/state/platform/customer` in every account's own namespace, and
//! `flespi/state/platform/subaccounts/<id>` in the parent's namespace, each a retained JSON item as
//! `GET` serves it. A deleted sub-account's topic gets an empty retained message, which deletes it
//! (its own namespace is purged with it).

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tern_broker::Cid;
use tern_broker::accounts::Account;
use tern_broker::topics::{CUSTOMER_STATE, subaccount_state_topic};
use tern_codec::QoS;

use crate::ApiState;
use crate::items::AccountItem;

/// Publishes every account's state topics (at start: retained messages may not have survived a
/// restart, and accounts may have been changed while tern was down).
pub fn publish_state(api: &ApiState) {
    for account in api.directory.accounts() {
        account_changed(api, &account);
    }
}

/// An account was created or changed.
pub(crate) fn account_changed(api: &ApiState, account: &Account) {
    let json = match serde_json::to_vec(&AccountItem::from(account)) {
        Ok(json) => Bytes::from(json),
        Err(err) => {
            tracing::error!(cid = account.id, %err, "could not serialize an account state");
            return;
        }
    };
    retain(api, account.id, CUSTOMER_STATE.to_string(), json.clone());
    if let Some(parent) = account.parent {
        retain(api, parent, subaccount_state_topic(account.id), json);
    }
}

/// A sub-account was deleted (its own namespace is purged by the caller).
pub(crate) fn account_deleted(api: &ApiState, id: Cid, parent: Option<Cid>) {
    if let Some(parent) = parent {
        retain(api, parent, subaccount_state_topic(id), Bytes::new());
    }
}

fn retain(api: &ApiState, cid: Cid, topic: String, payload: Bytes) {
    let broker = &api.broker;
    let msg = broker.message(
        cid,
        ByteString::from(topic),
        payload,
        QoS::AtLeastOnce,
        true,
    );
    broker.publish(Arc::new(msg));
}
