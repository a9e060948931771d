//! `[admin]` checked: its address (never a public listener's) and its token.

use std::net::SocketAddr;

use toml::Spanned;

use super::{file::AdminSection, Checker, ListenerConfig};
use crate::log::Secret;

/// The admin listener's settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// The bearer token read from `token_env` at load; `None`: no token.
    pub token: Option<Secret<String>>,
}

impl Checker<'_> {
    pub(super) fn admin(
        &mut self,
        a: &Spanned<AdminSection>,
        listeners: &[ListenerConfig],
    ) -> Option<AdminConfig> {
        let a = a.get_ref();
        let Ok(addr) = a.addr.get_ref().parse::<SocketAddr>() else {
            self.err(
                &a.addr,
                format!(
                    "`{}` is not IP:port (e.g. \"127.0.0.1:9090\")",
                    a.addr.get_ref()
                ),
            );
            return None;
        };
        // Served on a public listener's address it would be public: the
        // two could not both bind anyway, but this says why at load.
        if addr.port() != 0 && listeners.iter().any(|l| l.addr == addr) {
            self.err(
                &a.addr,
                format!("admin addr {addr} is a [[listener]]'s; give the admin listener its own"),
            );
            return None;
        }
        let token = match &a.token_env {
            None => None,
            Some(var) => match std::env::var(var.get_ref()) {
                Ok(t) if !t.is_empty() => Some(Secret::new(t)),
                _ => {
                    self.err(
                        var,
                        format!(
                            "token_env: environment variable {} is unset or empty",
                            var.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(AdminConfig { addr, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_never_printed() {
        let config = AdminConfig {
            addr: "127.0.0.1:9090".parse().unwrap(),
            token: Some(Secret::new("s3cret-admin-token".into())),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
