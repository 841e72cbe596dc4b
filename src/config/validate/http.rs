//! Rules over the HTTP endpoint (`http:`).

use crate::config::schema::{HttpConfig, ListenerConfig};

use super::{Checked, Checker, binds_clash};

impl Checker<'_> {
    /// The HTTP endpoint must not take a listener's port.
    pub(super) fn http(&self, http: Option<&HttpConfig>, listeners: &[ListenerConfig]) -> Checked {
        let Some(http) = http else {
            return Ok(());
        };
        if http.generate_admin_token && http.admin_token_file.is_none() {
            return self.fail(
                "http.generate_admin_token",
                "needs http.admin_token_file: the file to write the token to",
            );
        }
        match listeners
            .iter()
            .enumerate()
            .find(|(_, l)| binds_clash(l.address, http.address))
        {
            Some((i, l)) => self.fail(
                "http.address",
                format!(
                    "{} clashes with {} of listeners[{i}] ({:?}): both cannot be bound",
                    http.address, l.address, l.name
                ),
            ),
            None => Ok(()),
        }
    }
}
