//! Checking the admission settings: `[server]` trust and limits, and a
//! policy's `[auth]`, `[origin]`, `[limits]` and `[rate]`. Keys and secrets
//! are loaded here, once, so a missing file or variable is a `file:line`
//! error at start and never a failure on a live request.

use std::{net::IpAddr, num::NonZeroU32, ops::Range, path::Path, str::FromStr};

use http::HeaderName;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use toml::Spanned;

use super::{
    file::{AuthPolicy, LimitsPolicy, OriginPolicy, PolicyFile, RateSection, ServerSection},
    Checker, ConfigError, Source,
};
use crate::{
    admission::{
        client_ip::TrustedProxies,
        jwks::{KeySet, Keys, RemoteJwks},
        jwt::{Auth, TokenSource},
        limits::{quota, Limits},
        origin::Origins,
        Rules, ServerRules,
    },
    relay::gate::{RateSpec, Rates},
    tls,
};

/// Headers the gateway sets itself or that describe the hop; a claim may not be sent as one.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// HMAC secrets shorter than SHA-256's output are refused (RFC 7518 §3.2).
const MIN_SECRET: usize = 32;

impl Checker<'_> {
    /// `[server]`'s admission settings.
    pub(super) fn server_rules(&mut self, s: &ServerSection) -> ServerRules {
        let mut nets = Vec::new();
        for t in &s.trusted_proxies {
            let text = t.get_ref().trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.err(
                    t,
                    format!("`{text}` is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        let prefix = *s.client_ipv6_prefix.get_ref();
        if prefix > 128 {
            self.err(&s.client_ipv6_prefix, "client_ipv6_prefix must be 0-128");
        }
        if s.max_connections == Some(0) {
            self.errors.push(
                self.source
                    .error(0..0, "[server] max_connections must be at least 1"),
            );
        }
        for (value, name) in [
            (&s.max_pending_connections, "max_pending_connections"),
            (&s.max_pending_per_ip, "max_pending_per_ip"),
        ] {
            if *value.get_ref() == 0 {
                self.err(value, format!("{name} must be at least 1"));
            }
        }
        ServerRules {
            max_connections: s.max_connections,
            max_pending_connections: (*s.max_pending_connections.get_ref()).max(1),
            max_pending_per_ip: (*s.max_pending_per_ip.get_ref()).max(1),
            trusted_proxies: TrustedProxies::new(nets),
            client_ipv6_prefix: prefix.min(128),
            max_tracked_clients: s.max_tracked_clients,
        }
    }
}

/// Collects problems in one policy file.
struct PolicyCheck<'a> {
    src: &'a Source,
    /// Paths in policies are relative to the config file, like every other path.
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl PolicyCheck<'_> {
    fn err(&mut self, at: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.src.error(at, message));
    }

    fn positive(&mut self, v: &Option<Spanned<u32>>, what: &str) -> Option<NonZeroU32> {
        let v = v.as_ref()?;
        let n = NonZeroU32::new(*v.get_ref());
        if n.is_none() {
            self.err(v.span(), format!("{what} must be at least 1"));
        }
        n
    }
}

/// Checks a policy's admission sections and loads their keys.
pub(super) fn rules(src: &Source, p: &PolicyFile, base: &Path) -> Result<Rules, Vec<ConfigError>> {
    let mut c = PolicyCheck {
        src,
        base,
        errors: Vec::new(),
    };
    let auth = p.auth.as_ref().and_then(|a| auth(&mut c, a));
    let origin = p.origin.as_ref().and_then(|o| origin(&mut c, o));
    let limits = limits(&mut c, &p.limits, p.auth.is_some());
    let rate = Rates {
        client: p
            .rate
            .client
            .as_ref()
            .and_then(|r| rate(&mut c, r, "client")),
        upstream: p
            .rate
            .upstream
            .as_ref()
            .and_then(|r| rate(&mut c, r, "upstream")),
    };
    if c.errors.is_empty() {
        Ok(Rules {
            auth,
            origin,
            limits,
            rate,
        })
    } else {
        Err(c.errors)
    }
}

fn origin(c: &mut PolicyCheck<'_>, o: &OriginPolicy) -> Option<Origins> {
    match Origins::new(
        o.allow.iter().map(|a| a.get_ref().as_str()),
        o.allow_missing,
    ) {
        Ok(origins) => Some(origins),
        Err((i, message)) => {
            c.err(o.allow[i].span(), message);
            None
        }
    }
}

fn limits(c: &mut PolicyCheck<'_>, l: &LimitsPolicy, has_auth: bool) -> Limits {
    let zero = |v: Option<u32>| v == Some(0);
    if zero(l.max_connections) || zero(l.max_connections_per_ip) {
        c.err(0..0, "[limits] connection limits must be at least 1");
    }
    let per_subject = c.positive(
        &l.max_connections_per_subject,
        "max_connections_per_subject",
    );
    if let (Some(at), false) = (&l.max_connections_per_subject, has_auth) {
        c.err(
            at.span(),
            "max_connections_per_subject needs [auth]: the subject is the token's `sub`",
        );
    }
    let rate = c.positive(&l.handshakes_per_second, "handshakes_per_second");
    let burst = c.positive(&l.handshake_burst, "handshake_burst");
    if let (Some(at), None) = (&l.handshake_burst, &l.handshakes_per_second) {
        c.err(at.span(), "handshake_burst needs handshakes_per_second");
    }
    Limits {
        max_connections: l.max_connections,
        max_connections_per_ip: l.max_connections_per_ip,
        max_connections_per_subject: per_subject.map(NonZeroU32::get),
        handshakes: rate.map(|r| quota(r, burst)),
        retry_after: l.retry_after.0,
    }
}

fn rate(c: &mut PolicyCheck<'_>, r: &RateSection, side: &str) -> Option<RateSpec> {
    let bytes = |c: &mut PolicyCheck<'_>, v: &Option<Spanned<crate::config::units::ByteSize>>| {
        let v = v.as_ref()?;
        match u32::try_from(v.get_ref().0).ok().and_then(NonZeroU32::new) {
            Some(n) => Some(n),
            None => {
                c.err(v.span(), "must be at least 1 byte and below 4GiB");
                None
            }
        }
    };
    let fps = c.positive(&r.frames_per_second, "frames_per_second");
    let fburst = c.positive(&r.frame_burst, "frame_burst");
    let bps = bytes(c, &r.bytes_per_second);
    let bburst = bytes(c, &r.byte_burst);
    if let (Some(at), None) = (&r.frame_burst, &r.frames_per_second) {
        c.err(at.span(), "frame_burst needs frames_per_second");
    }
    if let (Some(at), None) = (&r.byte_burst, &r.bytes_per_second) {
        c.err(at.span(), "byte_burst needs bytes_per_second");
    }
    if r.frames_per_second.is_none() && r.bytes_per_second.is_none() {
        c.err(
            0..0,
            format!("[rate.{side}] needs frames_per_second or bytes_per_second"),
        );
    }
    Some(RateSpec {
        frames: fps.map(|r| quota(r, fburst)),
        bytes: bps.map(|r| quota(r, bburst)),
        action: r.action,
    })
}

fn auth(c: &mut PolicyCheck<'_>, a: &AuthPolicy) -> Option<Auth> {
    let at = a.algorithms.span();
    let mut algorithms = Vec::new();
    for name in a.algorithms.get_ref() {
        if name.eq_ignore_ascii_case("none") {
            c.err(at.clone(), "algorithm `none` is never accepted");
            continue;
        }
        match Algorithm::from_str(name) {
            Ok(alg) => algorithms.push(alg),
            Err(_) => c.err(
                at.clone(),
                format!(
                    "unknown algorithm `{name}` (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                ),
            ),
        }
    }
    let Some(family) = algorithms.first().map(|a| a.family()) else {
        c.err(
            at,
            "list at least one algorithm, e.g. algorithms = [\"RS256\"]",
        );
        return None;
    };
    if algorithms.iter().any(|a| a.family() != family) {
        c.err(
            at.clone(),
            "all algorithms must be of one family (HS*, RS*/PS*, ES* or EdDSA): mixing them invites algorithm confusion",
        );
        return None;
    }
    let keys = keys(c, a, family, at.clone())?;

    let mut sources = Vec::new();
    for s in a.token_from.get_ref() {
        match TokenSource::parse(s) {
            Some(src) => sources.push(src),
            None => c.err(
                a.token_from.span(),
                format!("unknown token source `{s}` (header, query, cookie, subprotocol)"),
            ),
        }
    }
    if sources.is_empty() {
        c.err(a.token_from.span(), "token_from needs at least one source");
    }
    let mut forward_claims = Vec::new();
    for (claim, name) in &a.forward_claims {
        match HeaderName::from_bytes(name.get_ref().as_bytes()) {
            Ok(h)
                if RESERVED_HEADERS.contains(&h.as_str())
                    || h.as_str().starts_with("sec-websocket-") =>
            {
                c.err(
                    name.span(),
                    format!(
                        "`{}` is set by the gateway; pick another header for claim `{claim}`",
                        name.get_ref()
                    ),
                )
            }
            Ok(h) => forward_claims.push((claim.clone(), h)),
            Err(_) => c.err(
                name.span(),
                format!("`{}` is not a valid header name", name.get_ref()),
            ),
        }
    }

    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = a.leeway.0.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if a.issuer.is_empty() {
        validation.iss = None;
    } else {
        validation.set_issuer(&a.issuer);
        required.push("iss");
    }
    if a.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&a.audience);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);

    Some(Auth {
        sources,
        query_param: a.query_param.clone(),
        cookie: a.cookie.clone(),
        subprotocol_prefix: a.subprotocol_prefix.clone(),
        validation,
        keys,
        required_claims: a.required_claims.clone(),
        required_scopes: a.required_scopes.clone(),
        forward_claims,
        forward_token: a.forward_token,
        close_on_expiry: a.close_on_expiry,
        leeway: a.leeway.0,
    })
}

/// Loads the one key source `[auth]` names.
fn keys(
    c: &mut PolicyCheck<'_>,
    a: &AuthPolicy,
    family: AlgorithmFamily,
    at: Range<usize>,
) -> Option<Keys> {
    let given: Vec<&str> = [
        ("secret_file", a.secret_file.is_some()),
        ("secret_env", a.secret_env.is_some()),
        ("public_key", a.public_key.is_some()),
        ("jwks_file", a.jwks_file.is_some()),
        ("jwks_url", a.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        c.err(
            at,
            format!(
                "[auth] needs exactly one key source (secret_file, secret_env, public_key, jwks_file or jwks_url); found {}",
                if given.is_empty() { "none".to_owned() } else { given.join(", ") }
            ),
        );
        return None;
    }
    if let (Some(ca), None) = (&a.jwks_ca, &a.jwks_url) {
        c.err(ca.span(), "jwks_ca is only used with jwks_url");
    }
    let hmac = family == AlgorithmFamily::Hmac;
    let secret = matches!(given[0], "secret_file" | "secret_env");
    if hmac != secret {
        c.err(
            at,
            if hmac {
                "HS* algorithms need a shared secret: secret_file or secret_env"
            } else {
                "public-key algorithms need public_key, jwks_file or jwks_url (a secret would let anyone holding it sign)"
            },
        );
        return None;
    }
    let read = |c: &mut PolicyCheck<'_>, p: &Spanned<String>| {
        let path = c.base.join(p.get_ref());
        std::fs::read(&path)
            .map_err(|e| c.err(p.span(), format!("cannot read {}: {e}", path.display())))
            .ok()
    };
    let check_secret = |c: &mut PolicyCheck<'_>, span: Range<usize>, mut s: Vec<u8>| {
        while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            s.pop();
        }
        if s.len() < MIN_SECRET {
            c.err(
                span,
                format!("an HMAC secret must be at least {MIN_SECRET} bytes (RFC 7518 §3.2)"),
            );
            return None;
        }
        Some(Keys::One(DecodingKey::from_secret(&s)))
    };
    if let Some(p) = &a.secret_file {
        let s = read(c, p)?;
        return check_secret(c, p.span(), s);
    }
    if let Some(var) = &a.secret_env {
        return match std::env::var_os(var.get_ref()) {
            Some(v) => check_secret(c, var.span(), v.into_encoded_bytes()),
            None => {
                c.err(
                    var.span(),
                    format!("environment variable {} is not set", var.get_ref()),
                );
                None
            }
        };
    }
    if let Some(p) = &a.public_key {
        let pem = read(c, p)?;
        let key = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(&pem),
            AlgorithmFamily::Hmac => unreachable!("checked above"),
        };
        return match key {
            Ok(k) => Some(Keys::One(k)),
            Err(e) => {
                c.err(
                    p.span(),
                    format!("{} is not a {family:?} public key in PEM: {e}", p.get_ref()),
                );
                None
            }
        };
    }
    if let Some(p) = &a.jwks_file {
        let json = read(c, p)?;
        return match KeySet::parse(&json, family) {
            Ok(set) => Some(Keys::Set(set)),
            Err(e) => {
                c.err(p.span(), format!("{}: {e}", p.get_ref()));
                None
            }
        };
    }
    let url = a.jwks_url.as_ref().expect("one source is set");
    let roots = match &a.jwks_ca {
        None => None,
        Some(ca) => match tls::load_ca(&c.base.join(ca.get_ref())) {
            Ok(roots) => Some(roots),
            Err(msg) => {
                c.err(ca.span(), msg);
                return None;
            }
        },
    };
    match RemoteJwks::new(
        url.get_ref(),
        tls::client_config(roots),
        family,
        a.jwks_refresh.0,
        a.jwks_min_refetch.0,
    ) {
        Ok(r) => Some(Keys::Remote(Box::new(r))),
        Err(msg) => {
            c.err(url.span(), msg);
            None
        }
    }
}
