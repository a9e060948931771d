//! Which close code goes to which leg, and why. Pure; the table in
//! `LIFECYCLE.md` is the same decisions written for operators.

use super::frame::Side;

/// Close codes a peer may put on the wire (RFC 6455 §7.4 and the IANA
/// registry): 1004-1006 and 1015 are reserved for local use, 1016-2999 for
/// future specs, and anything outside 1000-4999 is invalid.
pub fn is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close the gateway itself sends: code and a short reason for the log and the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub code: u16,
    pub reason: &'static str,
}

pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const TOO_BIG: u16 = 1009;

pub const POLICY: u16 = 1008;

/// What the *other* leg hears when `offender` was closed with `code`: the
/// offender itself gets that code (1002/1007/1009 for the protocol, 1008 or a
/// 4xxx for a policy such as a rate limit or an expired token).
pub fn peer_of_violation(offender: Side, code: u16) -> Verdict {
    let policy = code == POLICY || code >= 4000;
    match (offender, policy) {
        (Side::Client, false) => Verdict {
            code: 1001,
            reason: "client closed: protocol violation",
        },
        (Side::Client, true) => Verdict {
            code: 1001,
            reason: "client closed by policy",
        },
        (Side::Upstream, false) => Verdict {
            code: 1011,
            reason: "upstream protocol violation",
        },
        (Side::Upstream, true) => Verdict {
            code: 1011,
            reason: "upstream closed by policy",
        },
    }
}

/// What the other leg hears when `gone` disappeared without a close frame
/// (TCP EOF or reset).
pub fn peer_of_vanished(gone: Side) -> Verdict {
    match gone {
        Side::Client => Verdict {
            code: 1001,
            reason: "client went away",
        },
        Side::Upstream => Verdict {
            code: 1011,
            reason: "upstream went away",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes() {
        for c in [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
            assert!(is_valid(c), "{c}");
        }
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_valid(c), "{c}");
        }
    }

    #[test]
    fn the_client_never_hears_a_code_its_libraries_reject() {
        // tungstenite and older browsers refuse 1014, so upstream failures are 1011.
        assert_eq!(peer_of_vanished(Side::Upstream).code, 1011);
        assert_eq!(peer_of_violation(Side::Upstream, 1002).code, 1011);
        assert_eq!(
            peer_of_violation(Side::Client, 4001).reason,
            "client closed by policy"
        );
        assert_eq!(peer_of_vanished(Side::Client).code, 1001);
    }
}
