//! UNSUBSCRIBE: remove each subscription by its full filter string, answer UNSUBACK.

use tern_codec::{AckProperties, Packet, ReasonCode, UnsubAck, Unsubscribe};

use crate::close::CloseReason;
use crate::connection::{Connection, owns};

impl Connection {
    pub(crate) fn handle_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), CloseReason> {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        {
            let mut st = session.lock();
            if !owns(&st, self.id) {
                return Err(CloseReason::SessionTakenOver);
            }
            for filter in &u.filters {
                match st.subscriptions.remove(filter) {
                    Some(sub) => {
                        removed.push(sub);
                        reasons.push(ReasonCode::SUCCESS);
                    }
                    None => reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
                }
            }
        }
        self.broker.unindex(&session, &removed);
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: AckProperties::default(),
            reasons,
        }));
        Ok(())
    }
}
