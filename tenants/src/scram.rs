//! SASL credentials and the server side of the PLAIN and SCRAM exchanges
//! (RFC 4616, RFC 5802, RFC 7677; the SCRAM messages as Kafka's brokers
//! take them, without channel binding). Crypto is aws-lc-rs's.

use std::num::NonZeroU32;
use std::sync::OnceLock;

use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// PBKDF2 iterations of new credentials: RFC 7677's minimum, Kafka's
/// default. A PLAIN login pays it once per key and process (see the cache
/// in `registry.rs`).
pub const ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    /// The mechanisms served, as SaslHandshake lists them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    fn hash(
        self,
    ) -> (
        hmac::Algorithm,
        &'static digest::Algorithm,
        pbkdf2::Algorithm,
    ) {
        match self {
            Mechanism::ScramSha512 => (
                hmac::HMAC_SHA512,
                &digest::SHA512,
                pbkdf2::PBKDF2_HMAC_SHA512,
            ),
            _ => (
                hmac::HMAC_SHA256,
                &digest::SHA256,
                pbkdf2::PBKDF2_HMAC_SHA256,
            ),
        }
    }
}

/// A SCRAM credential: what verifies a password without holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
}

impl Credential {
    /// A credential for `password` under a fresh random salt.
    pub fn new(mech: Mechanism, password: &[u8]) -> Self {
        Self::derive(mech, password, random(16), ITERATIONS)
    }

    pub fn derive(mech: Mechanism, password: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let (mac, hash, kdf) = mech.hash();
        let mut salted = vec![0u8; hash.output_len()];
        let rounds = NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
        pbkdf2::derive(kdf, rounds, &salt, password, &mut salted);
        let key = hmac::Key::new(mac, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        Credential {
            salt,
            iterations,
            stored_key: digest::digest(hash, client_key.as_ref()).as_ref().to_vec(),
            server_key: hmac::sign(&key, b"Server Key").as_ref().to_vec(),
        }
    }

    /// Whether `password` is the one this credential was derived from: one
    /// key derivation.
    pub fn verify(&self, mech: Mechanism, password: &[u8]) -> bool {
        let again = Self::derive(mech, password, self.salt.clone(), self.iterations);
        same_secret(&again.stored_key, &self.stored_key)
    }
}

mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    b
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// PLAIN's one message: `authzid NUL authcid NUL password`. The authzid
/// must be empty or the authcid (no acting for another user).
/// An HTTP basic `Authorization` header's (key, secret) (RFC 7617).
pub fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let (scheme, creds) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = B64.decode(creds.trim()).ok()?;
    let at = raw.iter().position(|&b| b == b':')?;
    let key = String::from_utf8(raw[..at].to_vec()).ok()?;
    Some((key, raw[at + 1..].to_vec()))
}

pub fn parse_plain(msg: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let (Some(authz), Some(user), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("PLAIN: expected authzid NUL user NUL password".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "PLAIN: user is not UTF-8")?;
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err("PLAIN: authorization id differs from the user".into());
    }
    if user.is_empty() || pass.is_empty() {
        return Err("PLAIN: empty user or password".into());
    }
    Ok((user.to_string(), pass.to_vec()))
}

/// The outcome of one SCRAM message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated as this user; send the server's final message.
    Done { user: String, response: Vec<u8> },
    /// Authentication failed (the reason is for logs, not the client).
    Failed(String),
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    mech: Mechanism,
    state: State,
}

enum State {
    First,
    Final(Box<Pending>),
    Over,
}

/// What the server-first message committed the exchange to.
struct Pending {
    user: String,
    /// `None` for an unknown user: the exchange goes on with a made-up
    /// salt and fails at the proof, so users cannot be probed.
    credential: Option<Credential>,
    fake: Credential,
    gs2_header: String,
    nonce: String,
    auth_prefix: String,
}

impl ScramServer {
    pub fn new(mech: Mechanism) -> Self {
        debug_assert!(mech != Mechanism::Plain);
        Self {
            mech,
            state: State::First,
        }
    }

    /// Takes the client's next message; `lookup` finds a user's credential.
    pub fn step(&mut self, msg: &[u8], lookup: impl FnOnce(&str) -> Option<Credential>) -> Step {
        match std::mem::replace(&mut self.state, State::Over) {
            State::First => self.first(msg, lookup),
            State::Final(p) => {
                let Pending {
                    user,
                    credential,
                    fake,
                    gs2_header,
                    nonce,
                    auth_prefix,
                } = *p;
                let known = credential.is_some();
                let cred = credential.unwrap_or(fake);
                match self.last(msg, &cred, &gs2_header, &nonce, &auth_prefix) {
                    Ok(response) if known => Step::Done { user, response },
                    Ok(_) => Step::Failed(format!("unknown user {user:?}")),
                    Err(why) => Step::Failed(why),
                }
            }
            State::Over => Step::Failed("the exchange is over".into()),
        }
    }

    fn first(&mut self, msg: &[u8], lookup: impl FnOnce(&str) -> Option<Credential>) -> Step {
        let Ok(msg) = std::str::from_utf8(msg) else {
            return Step::Failed("client-first is not UTF-8".into());
        };
        let (gs2_header, bare) = match split_gs2(msg) {
            Ok(x) => x,
            Err(why) => return Step::Failed(why),
        };
        let mut attrs = bare.split(',');
        let user = match attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .map(decode_name)
        {
            Some(Ok(u)) if !u.is_empty() => u,
            _ => return Step::Failed("client-first: no user name".into()),
        };
        let client_nonce = match attrs.next().and_then(|a| a.strip_prefix("r=")) {
            Some(r) if !r.is_empty() && r.bytes().all(|b| (0x21..0x7f).contains(&b)) => r,
            _ => return Step::Failed("client-first: no nonce".into()),
        };
        // Extensions: Kafka's `tokenauth` (delegation tokens) is not served.
        if let Some(ext) = attrs.next() {
            return Step::Failed(format!("client-first: extension {ext:?} not supported"));
        }
        let credential = lookup(&user);
        let fake = fake_credential(self.mech, &user);
        let cred = credential.as_ref().unwrap_or(&fake);
        let nonce = format!("{client_nonce}{}", B64.encode(random(18)));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&cred.salt),
            cred.iterations
        );
        let auth_prefix = format!("{bare},{server_first}");
        self.state = State::Final(Box::new(Pending {
            user,
            credential,
            fake,
            gs2_header: gs2_header.to_string(),
            nonce,
            auth_prefix,
        }));
        Step::Continue(server_first.into_bytes())
    }

    fn last(
        &self,
        msg: &[u8],
        cred: &Credential,
        gs2_header: &str,
        nonce: &str,
        auth_prefix: &str,
    ) -> Result<Vec<u8>, String> {
        let msg = std::str::from_utf8(msg).map_err(|_| "client-final is not UTF-8")?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or("client-final: no proof")?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or("client-final: no channel binding")?;
        if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err("client-final: channel binding differs from the gs2 header".into());
        }
        // librdkafka sends its own nonce again before the server's combined
        // one; Kafka's brokers accept any nonce ending in theirs, and so do
        // we (the proof covers the message as sent either way).
        let echoed = attrs.next().and_then(|a| a.strip_prefix("r="));
        if !echoed.is_some_and(|r| r.ends_with(nonce)) {
            return Err("client-final: nonce differs".into());
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| "client-final: proof is not base64")?;
        let (mac, hash, _) = self.mech.hash();
        if proof.len() != hash.output_len() {
            return Err("client-final: proof of the wrong length".into());
        }
        let auth_message = format!("{auth_prefix},{without_proof}");
        let signature = hmac::sign(
            &hmac::Key::new(mac, &cred.stored_key),
            auth_message.as_bytes(),
        );
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = digest::digest(hash, &client_key);
        if !same_secret(stored.as_ref(), &cred.stored_key) {
            return Err("invalid proof".into());
        }
        let server_sig = hmac::sign(
            &hmac::Key::new(mac, &cred.server_key),
            auth_message.as_bytes(),
        );
        Ok(format!("v={}", B64.encode(server_sig.as_ref())).into_bytes())
    }
}

/// Splits `gs2-header` (`n,,` or `y,,`, with an optional `a=` authzid) from
/// the bare message. Channel binding (`p=`) is not offered.
fn split_gs2(msg: &str) -> Result<(&str, &str), String> {
    let mut it = msg.splitn(3, ',');
    let (Some(flag), Some(authz), Some(_)) = (it.next(), it.next(), it.next()) else {
        return Err("client-first: no gs2 header".into());
    };
    if flag != "n" && flag != "y" {
        return Err(format!(
            "client-first: channel binding {flag:?} not supported"
        ));
    }
    if !authz.is_empty() && !authz.starts_with("a=") {
        return Err("client-first: bad authorization id".into());
    }
    let header_len = flag.len() + authz.len() + 2;
    Ok(msg.split_at(header_len))
}

/// RFC 5802's saslname: `=2C` is ',' and `=3D` is '='; any other '=' is bad.
fn decode_name(s: &str) -> Result<String, ()> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(()),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A stable made-up credential for a user that does not exist: the same
/// salt every time it is asked for, from a key of this process.
fn fake_credential(mech: Mechanism, user: &str) -> Credential {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    let secret = SECRET.get_or_init(|| random(32));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let salt = hmac::sign(&key, user.as_bytes()).as_ref()[..16].to_vec();
    let (_, hash, _) = mech.hash();
    Credential {
        salt,
        iterations: ITERATIONS,
        stored_key: random(hash.output_len()),
        server_key: random(hash.output_len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side, as RFC 5802 describes it, to drive the server.
    fn client_final(
        mech: Mechanism,
        password: &[u8],
        client_first_bare: &str,
        server_first: &str,
        echo: &str,
    ) -> (String, Vec<u8>) {
        let attrs: Vec<&str> = server_first.split(',').collect();
        let nonce = attrs[0].strip_prefix("r=").expect("nonce");
        let salt = B64
            .decode(attrs[1].strip_prefix("s=").expect("salt"))
            .expect("b64");
        let iterations: u32 = attrs[2].strip_prefix("i=").expect("i").parse().expect("n");
        let (mac, hash, kdf) = mech.hash();
        let mut salted = vec![0u8; hash.output_len()];
        pbkdf2::derive(
            kdf,
            NonZeroU32::new(iterations).expect("nonzero"),
            &salt,
            password,
            &mut salted,
        );
        let key = hmac::Key::new(mac, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored = digest::digest(hash, client_key.as_ref());
        let without_proof = format!("c=biws,r={echo}{nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac::sign(&hmac::Key::new(mac, stored.as_ref()), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(sig.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&key, b"Server Key");
        let expect = hmac::sign(&hmac::Key::new(mac, server_key.as_ref()), auth.as_bytes());
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(expect.as_ref())).into_bytes(),
        )
    }

    fn exchange(mech: Mechanism, stored: &[u8], tried: &[u8], user: &str) -> Step {
        exchange_echoing(mech, stored, tried, user, "")
    }

    /// `echo` goes before the combined nonce in client-final (librdkafka
    /// sends its own nonce there again).
    fn exchange_echoing(
        mech: Mechanism,
        stored: &[u8],
        tried: &[u8],
        user: &str,
        echo: &str,
    ) -> Step {
        let cred = Credential::new(mech, stored);
        let mut server = ScramServer::new(mech);
        let bare = "n=fk_a=2Cb,r=abcdefgh".to_string();
        let first = server.step(format!("n,,{bare}").as_bytes(), |u| {
            (u == user).then(|| cred.clone())
        });
        let Step::Continue(server_first) = first else {
            panic!("{first:?}");
        };
        let server_first = String::from_utf8(server_first).expect("utf8");
        assert!(server_first.starts_with("r=abcdefgh"));
        let (last, expect) = client_final(mech, tried, &bare, &server_first, echo);
        match server.step(last.as_bytes(), |_| None) {
            Step::Done { user, response } => {
                assert_eq!(response, expect, "the server proves itself");
                Step::Done { user, response }
            }
            other => other,
        }
    }

    #[test]
    fn scram_accepts_the_password_and_nothing_else() {
        for mech in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            match exchange(mech, b"s3cret", b"s3cret", "fk_a,b") {
                Step::Done { user, .. } => assert_eq!(user, "fk_a,b"),
                other => panic!("{mech:?}: {other:?}"),
            }
            assert!(matches!(
                exchange(mech, b"s3cret", b"wrong", "fk_a,b"),
                Step::Failed(_)
            ));
            // librdkafka's final nonce: its own, then the combined one.
            assert!(matches!(
                exchange_echoing(mech, b"s3cret", b"s3cret", "fk_a,b", "abcdefgh"),
                Step::Done { .. }
            ));
            // An unknown user fails only at the proof, like a wrong password.
            assert!(matches!(
                exchange(mech, b"s3cret", b"s3cret", "someone-else"),
                Step::Failed(_)
            ));
        }
    }

    #[test]
    fn malformed_scram_messages_fail() {
        for bad in [
            &b"p=tls-unique,,n=u,r=x"[..],
            b"n,,r=x",
            b"n,,n=u",
            b"n,,n=a=ZZ,r=x",
            b"n,,n=u,r=x,tokenauth=true",
            b"\xff\xfe",
            b"",
        ] {
            let mut s = ScramServer::new(Mechanism::ScramSha256);
            let got = s.step(bad, |_| None);
            assert!(matches!(got, Step::Failed(_)), "{bad:?}: {got:?}");
        }
        let mut s = ScramServer::new(Mechanism::ScramSha256);
        let cred = Credential::new(Mechanism::ScramSha256, b"pw");
        assert!(matches!(
            s.step(b"n,,n=u,r=x", |_| Some(cred)),
            Step::Continue(_)
        ));
        assert!(matches!(
            s.step(b"c=biws,r=other,p=AAAA", |_| None),
            Step::Failed(_)
        ));
        assert!(matches!(s.step(b"again", |_| None), Step::Failed(_)));
    }

    #[test]
    fn basic_headers() {
        let h = format!("Basic {}", B64.encode("fk_a:s3:cret"));
        assert_eq!(parse_basic(&h), Some(("fk_a".into(), b"s3:cret".to_vec())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(
            parse_basic(&format!("Basic {}", B64.encode("nocolon"))),
            None
        );
    }

    #[test]
    fn plain_messages_and_verification() {
        assert_eq!(
            parse_plain(b"\0fk_1\0pw"),
            Ok(("fk_1".to_string(), b"pw".to_vec()))
        );
        assert!(parse_plain(b"fk_1\0fk_1\0pw").is_ok());
        for bad in [&b"other\0fk_1\0pw"[..], b"\0fk_1", b"\0\0pw", b"\0fk_1\0"] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
        let c = Credential::new(Mechanism::ScramSha256, b"pw");
        assert!(c.verify(Mechanism::ScramSha256, b"pw"));
        assert!(!c.verify(Mechanism::ScramSha256, b"pW"));
    }

    #[test]
    fn credentials_match_rfc_7677s_example() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let c = Credential::derive(Mechanism::ScramSha256, b"pencil", salt, 4096);
        let mut server = ScramServer::new(Mechanism::ScramSha256);
        let first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let Step::Continue(_) = server.step(first, |_| Some(c.clone())) else {
            panic!("first");
        };
        // Replace our random server nonce by the RFC's to replay its proof.
        if let State::Final(p) = &mut server.state {
            p.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
            p.auth_prefix = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into();
        }
        let last = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            server.step(last, |_| None),
            Step::Done {
                user: "user".into(),
                response: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
    }
}
