//! Every policy shipped in `policies/` loads, and admission mistakes in a
//! policy are reported as `file:line: what is wrong` at load.

use std::path::Path;

use framegate::config::Config;

fn load(dir: &Path, config: &str) -> Result<Config, String> {
    std::fs::write(dir.join("framegate.toml"), config).unwrap();
    Config::load(&dir.join("framegate.toml")).map_err(|e| e.to_string())
}

#[test]
fn every_shipped_policy_loads() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut config = format!(
        "policy_dir = {:?}\n[[listener]]\naddr = \"127.0.0.1:0\"\n[upstream.u]\nbuiltin = \"echo\"\n",
        shipped.display().to_string()
    );
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        // A policy whose secret comes from the environment is checked with
        // it set, through the binary, by examples::every_example_and_policy_passes_check.
        let from_env = || {
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("secret_env")
        };
        if path.extension().is_some_and(|e| e == "toml") && !from_env() {
            let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
            config.push_str(&format!(
                "[[route]]\npath = \"/{name}\"\nupstream = \"u\"\npolicy = \"{name}\"\n"
            ));
            names.push(name);
        }
    }
    assert!(names.contains(&"strict-public".to_owned()), "{names:?}");
    let loaded = load(dir.path(), &config).unwrap_or_else(|e| panic!("{e}"));
    let strict = loaded
        .routes
        .iter()
        .find(|r| r.path == "/strict-public")
        .unwrap();
    assert!(strict.policy.admission.auth.is_some());
}

#[test]
fn admission_mistakes_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let policy = |text: &str| std::fs::write(dir.path().join("policies/p.toml"), text).unwrap();
    let config = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\npolicy = \"p\"\n[upstream.u]\nbuiltin = \"echo\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "[auth]\nalgorithms = [\"none\"]\nsecret_env = \"X\"\n",
            "p.toml:2: algorithm `none` is never accepted",
        ),
        (
            "[auth]\nalgorithms = [\"HS256\", \"RS256\"]\nsecret_env = \"X\"\n",
            "p.toml:2: all algorithms must be of one family",
        ),
        (
            "[auth]\nalgorithms = [\"HS256\"]\nsecret = \"hunter2\"\n",
            "p.toml:3: unknown field `secret`",
        ),
        (
            "[auth]\nalgorithms = [\"HS256\"]\nsecret_env = \"FRAMEGATE_TEST_UNSET_VARIABLE\"\n",
            "p.toml:3: environment variable FRAMEGATE_TEST_UNSET_VARIABLE is not set",
        ),
        (
            "[auth]\nalgorithms = [\"RS256\"]\nsecret_file = \"k\"\n",
            "p.toml:2: public-key algorithms need public_key",
        ),
        (
            "[auth]\nalgorithms = [\"RS256\"]\npublic_key = \"k.pem\"\njwks_file = \"j.json\"\n",
            "p.toml:2: [auth] needs exactly one key source",
        ),
        (
            "[auth]\nalgorithms = [\"ES256\"]\njwks_url = \"http://idp/jwks\"\n",
            "p.toml:3: jwks_url `http://idp/jwks` must be https",
        ),
        (
            "[limits]\n\nmax_connections_per_subject = 3\n",
            "p.toml:3: max_connections_per_subject needs [auth]",
        ),
        (
            "[origin]\nallow = [\"https://ok.example\",\n  \"app.example.com\"]\n",
            "p.toml:3: origin `app.example.com` must be scheme://host[:port]",
        ),
        (
            "[rate.client]\naction = \"drop\"\n",
            "p.toml:2: unknown variant `drop`",
        ),
        (
            "[rate.client]\nframe_burst = 5\n",
            "p.toml:2: frame_burst needs frames_per_second",
        ),
    ];
    for (text, expected) in cases {
        policy(text);
        let err = load(dir.path(), config).unwrap_err();
        assert!(
            err.contains(expected),
            "for:\n{text}\nexpected `{expected}` in:\n{err}"
        );
    }
    std::fs::write(dir.path().join("short.key"), "too short\n").unwrap();
    policy("[auth]\nalgorithms = [\"HS256\"]\nsecret_file = \"short.key\"\n");
    let err = load(dir.path(), config).unwrap_err();
    assert!(
        err.contains("p.toml:3: an HMAC secret must be at least 32 bytes"),
        "{err}"
    );
    let err = load(dir.path(), "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]\n[[listener]]\naddr = \"127.0.0.1:0\"\n").unwrap_err();
    assert!(
        err.contains("framegate.toml:2: `nope` is not an IP address or CIDR"),
        "{err}"
    );
}
