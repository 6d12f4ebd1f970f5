//! SASL on the Kafka listener (KIP-43, KIP-152): SaslHandshake picks a
//! mechanism, SaslAuthenticate v0-2 carries its messages (after a v0
//! handshake, they come as bare size-prefixed tokens, as old clients send); PLAIN and
//! SCRAM-SHA-256/512 with an API key as the user name and its secret as the
//! password. A connection that logs in is its key's tenant's from then on.
//!
//! As Kafka's brokers do, a failed login is answered (UNSUPPORTED_SASL_MECHANISM,
//! ILLEGAL_SASL_STATE or SASL_AUTHENTICATION_FAILED) and the connection is
//! then closed; so is one that sends anything else mid-exchange. A valid
//! login past the tenant's `connections` quota on this gateway fails the
//! same way, saying so.

use std::sync::Arc;

use floe_common::TenantId;
use floe_tenants::scram::{self, ScramServer, Step};
use floe_tenants::{Mechanism, Registry};
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError as E;

use super::slots::Slot;

/// Bytes a frame may have before its connection has logged in, when login
/// is required (Kafka's `sasl.server.max.receive.size`).
pub const MAX_UNAUTHENTICATED_BYTES: u32 = 512 * 1024;

/// A connection's login.
#[derive(Default)]
pub struct Session {
    /// The tenant and key it logged in as.
    pub login: Option<(TenantId, String)>,
    state: State,
    /// The handshake was v0: tokens come unframed.
    bare: bool,
    /// The login's place in its tenant's connections, held until the
    /// connection closes.
    slot: Option<Arc<Slot>>,
}

#[derive(Default)]
enum State {
    #[default]
    Start,
    Handshaken(Mechanism),
    Scram(Box<ScramServer>),
    Done,
}

/// A response, and whether the connection closes once it is written.
pub struct Answer<T> {
    pub body: T,
    pub close: bool,
}

impl Session {
    /// Between a handshake and the end of its exchange: nothing but
    /// SaslAuthenticate may come.
    pub fn in_exchange(&self) -> bool {
        matches!(self.state, State::Handshaken(_) | State::Scram(_))
    }

    /// The login's place among its tenant's connections.
    pub fn slot(&self) -> Option<&Arc<Slot>> {
        self.slot.as_ref()
    }

    /// The next frame is a bare SASL token (after a v0 handshake).
    pub fn expects_bare_token(&self) -> bool {
        self.bare && self.in_exchange()
    }

    pub fn handshake(
        &mut self,
        req: &SaslHandshakeRequest,
        version: i16,
    ) -> Answer<SaslHandshakeResponse> {
        let names = Mechanism::ALL
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let body = SaslHandshakeResponse::default().with_mechanisms(names);
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return fail(body.with_error_code(E::IllegalSaslState.code()));
        }
        match Mechanism::parse(&req.mechanism) {
            Some(m) => {
                self.state = State::Handshaken(m);
                self.bare = version == 0;
                Answer { body, close: false }
            }
            None => fail(body.with_error_code(E::UnsupportedSaslMechanism.code())),
        }
    }

    /// Takes a SaslAuthenticate; a login that succeeds must also get a
    /// place from `admit` (its tenant's connection quota), else it fails
    /// with `admit`'s reason.
    pub fn authenticate(
        &mut self,
        registry: &Registry,
        req: &SaslAuthenticateRequest,
        admit: &dyn Fn(&TenantId) -> Result<Slot, String>,
    ) -> Answer<SaslAuthenticateResponse> {
        let body = SaslAuthenticateResponse::default();
        let refused = |why: String| {
            tracing::info!(why, "sasl login refused");
            fail(
                SaslAuthenticateResponse::default()
                    .with_error_code(E::SaslAuthenticationFailed.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "Authentication failed: invalid key or secret",
                    ))),
            )
        };
        match std::mem::replace(&mut self.state, State::Done) {
            State::Handshaken(Mechanism::Plain) => {
                let (key, secret) = match scram::parse_plain(&req.auth_bytes) {
                    Ok(x) => x,
                    Err(why) => return refused(why),
                };
                match registry.verify_secret(&key, &secret) {
                    Some(tenant) => match self.log_in(tenant, key, admit) {
                        Ok(()) => Answer { body, close: false },
                        Err(why) => over_quota(why),
                    },
                    None => refused(format!("PLAIN login as {key:?}")),
                }
            }
            State::Handshaken(m) => {
                let mut server = Box::new(ScramServer::new(m));
                match server.step(&req.auth_bytes, |user| registry.credential(user, m)) {
                    Step::Continue(first) => {
                        self.state = State::Scram(server);
                        Answer {
                            body: body.with_auth_bytes(first.into()),
                            close: false,
                        }
                    }
                    Step::Done { .. } => refused("SCRAM ended early".into()),
                    Step::Failed(why) => refused(why),
                }
            }
            State::Scram(mut server) => match server.step(&req.auth_bytes, |_| None) {
                Step::Done { user, response } => match registry.tenant_of(&user) {
                    Some(tenant) => match self.log_in(tenant, user, admit) {
                        Ok(()) => Answer {
                            body: body.with_auth_bytes(response.into()),
                            close: false,
                        },
                        Err(why) => over_quota(why),
                    },
                    None => refused(format!("key {user:?} went during its login")),
                },
                Step::Continue(_) => refused("SCRAM went on too long".into()),
                Step::Failed(why) => refused(why),
            },
            State::Start | State::Done => fail(
                body.with_error_code(E::IllegalSaslState.code())
                    .with_error_message(Some(StrBytes::from_static_str(
                        "SaslAuthenticate without a SaslHandshake",
                    ))),
            ),
        }
    }

    fn log_in(
        &mut self,
        tenant: TenantId,
        key: String,
        admit: &dyn Fn(&TenantId) -> Result<Slot, String>,
    ) -> Result<(), String> {
        self.slot = Some(Arc::new(admit(&tenant)?));
        self.login = Some((tenant, key));
        Ok(())
    }
}

/// A valid login refused by its tenant's quota: the client is told why.
fn over_quota(why: String) -> Answer<SaslAuthenticateResponse> {
    tracing::info!(why, "sasl login refused");
    fail(
        SaslAuthenticateResponse::default()
            .with_error_code(E::SaslAuthenticationFailed.code())
            .with_error_message(Some(StrBytes::from_string(why))),
    )
}

fn fail<T>(body: T) -> Answer<T> {
    Answer { body, close: true }
}
