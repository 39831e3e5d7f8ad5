//! The server side of a SCRAM exchange: the proxy, facing the client,
//! verifies its proof against the role's stored [`Verifier`] (binding to
//! the proxy's own certificate for `SCRAM-SHA-256-PLUS`), and on success
//! recovers the client's ClientKey from the proof (see the parent module
//! for why that key is enough to log into the cluster).

use base64::Engine;

use super::{
    attribute, attribute_at, constant_time_eq, hmac_sha256, random_nonce, sha256, text, xor, Key,
    ScramError, Verifier, BASE64, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT,
};

/// The channel-binding flag a client's first message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Binding {
    /// `n`: the client does not support channel binding.
    None,
    /// `y`: it does, but thinks the server does not.
    ClientOnly,
    /// `p=tls-server-end-point`: bound to the server's certificate.
    EndPoint,
}

/// The server side of one SCRAM exchange with a client.
#[derive(Debug)]
pub struct ServerExchange {
    verifier: Verifier,
    /// `tls-server-end-point` data of the certificate the client's TLS
    /// uses; `None` on plaintext (then PLUS is not offered).
    channel: Option<Vec<u8>>,
    state: ServerState,
}

#[derive(Debug)]
enum ServerState {
    Initial,
    /// After the client-first message: what the client-final must match.
    FirstAnswered {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// A verified client: the server-final message to send and the key the
/// proxy logs into the cluster with.
#[derive(Debug)]
pub struct Verified {
    pub server_final: String,
    pub client_key: Key,
}

impl ServerExchange {
    pub fn new(verifier: Verifier, channel: Option<Vec<u8>>) -> ServerExchange {
        ServerExchange {
            verifier,
            channel,
            state: ServerState::Initial,
        }
    }

    /// The mechanisms to offer, best first: PLUS only where there is a
    /// channel to bind to.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel.is_some() {
            &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            &[SCRAM_SHA_256]
        }
    }

    /// The client's SASLInitialResponse: `mechanism` and its client-first
    /// message. Returns the server-first message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(ScramError::State);
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel.is_some() => true,
            other => return Err(ScramError::Mechanism(other.to_owned())),
        };
        let message = text(message)?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("no channel-binding flag"))?;
        let binding = match flag {
            "n" => Binding::None,
            "y" => Binding::ClientOnly,
            _ => match flag.strip_prefix("p=") {
                Some(TLS_SERVER_END_POINT) => Binding::EndPoint,
                Some(_) => return Err(ScramError::Malformed("unsupported channel-binding type")),
                None => return Err(ScramError::Malformed("bad channel-binding flag")),
            },
        };
        let (authzid, client_first_bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no authorization identity field"))?;
        if !authzid.is_empty() {
            // PostgreSQL does not support an authorization identity.
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        match (&binding, plus) {
            (Binding::EndPoint, true) | (Binding::None, false) => {}
            // Offered PLUS over TLS, yet the client says it could bind but
            // saw no server support: a downgrade, refused as PostgreSQL does.
            (Binding::ClientOnly, false) if self.channel.is_some() => {
                return Err(ScramError::ChannelBindingNegotiation)
            }
            (Binding::ClientOnly, false) => {}
            _ => return Err(ScramError::ChannelBindingNegotiation),
        }
        let client_nonce = attribute(client_first_bare, 1, 'r')?;
        if !attribute_at(client_first_bare, 0, 'n')? {
            return Err(ScramError::Malformed("no user name attribute"));
        }
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let nonce = format!("{client_nonce}{}", random_nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let gs2_len = message.len() - client_first_bare.len();
        self.state = ServerState::FirstAnswered {
            gs2_header: message[..gs2_len].to_owned(),
            client_first_bare: client_first_bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// The client's final message: checks the binding, the nonce and the
    /// proof. On success, the server-final message and the ClientKey.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Verified, ScramError> {
        let ServerState::FirstAnswered {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::State);
        };
        let message = text(message)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let binding = attribute(without_proof, 0, 'c')?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        let mut expected = gs2_header.clone().into_bytes();
        if gs2_header.starts_with("p=") {
            expected.extend_from_slice(self.channel.as_deref().unwrap_or_default());
        }
        if !constant_time_eq(&binding, &expected) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if attribute(without_proof, 1, 'r')? != nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: Key = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(Verified {
            server_final: format!("v={}", BASE64.encode(server_signature)),
            client_key,
        })
    }
}
