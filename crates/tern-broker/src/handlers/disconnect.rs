//! DISCONNECT from the client: the will is discarded unless the reason is 0x04, and a v5
//! client may change its session expiry on the way out.

use tern_codec::{Disconnect, ReasonCode};

use crate::close::CloseReason;
use crate::connection::{Connection, owns};
use crate::violation::Violation;

impl Connection {
    pub(crate) fn handle_disconnect(&mut self, d: Disconnect) -> Result<(), CloseReason> {
        if let (Some(expiry), Some(session)) =
            (d.properties.session_expiry_interval, self.session.clone())
        {
            let mut st = session.lock();
            if owns(&st, self.id) {
                // [MQTT-3.14.2-2]: a session that had expiry 0 cannot be given one now.
                if st.expiry_interval == 0 && expiry != 0 {
                    drop(st);
                    return Err(Violation::SessionExpiryAfterZero.into());
                }
                st.expiry_interval = expiry.min(self.broker.config.max_session_expiry);
            }
        }
        Err(match d.reason {
            ReasonCode::NORMAL_DISCONNECTION => CloseReason::ClientDisconnect,
            ReasonCode::DISCONNECT_WITH_WILL_MESSAGE => CloseReason::ClientDisconnectWithWill,
            code => CloseReason::ClientError(code),
        })
    }
}
