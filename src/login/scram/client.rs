//! The client side of a SCRAM exchange: the proxy, facing the cluster,
//! logs in as the role with the ClientKey recovered from the client's
//! proof instead of the password, and checks the cluster's signature
//! (only the holder of the verifier can make it).

use base64::Engine;

use super::{
    attribute, constant_time_eq, hmac_sha256, random_nonce, sha256, text, xor, Key, ScramError,
    Verifier, BASE64, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT,
};

/// The client side of one SCRAM exchange with the cluster, answering with
/// a ClientKey recovered from the client's own proof.
#[derive(Debug)]
pub struct ClientExchange {
    client_key: Key,
    server_key: Key,
    gs2_header: String,
    /// Channel-binding data for the cluster's certificate (PLUS only).
    channel: Option<Vec<u8>>,
    state: ClientState,
}

#[derive(Debug)]
enum ClientState {
    First {
        client_first_bare: String,
        nonce: String,
    },
    Final {
        auth_message: String,
    },
    Done,
}

impl ClientExchange {
    /// Starts an exchange; `channel` is the cluster certificate's
    /// `tls-server-end-point` data when binding (`SCRAM-SHA-256-PLUS`).
    /// Returns the exchange and the client-first message.
    pub fn new(verifier: &Verifier, client_key: Key, channel: Option<Vec<u8>>) -> (Self, String) {
        let nonce = random_nonce();
        let gs2_header = match channel {
            Some(_) => format!("p={TLS_SERVER_END_POINT},,"),
            None => "n,,".to_owned(),
        };
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("{gs2_header}{client_first_bare}");
        (
            ClientExchange {
                client_key,
                server_key: verifier.server_key,
                gs2_header,
                channel,
                state: ClientState::First {
                    client_first_bare,
                    nonce,
                },
            },
            first,
        )
    }

    /// The mechanism this exchange uses.
    pub fn mechanism(&self) -> &'static str {
        if self.channel.is_some() {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        }
    }

    /// The cluster's server-first message; returns the client-final one.
    pub fn server_first(&mut self, message: &[u8]) -> Result<String, ScramError> {
        let ClientState::First {
            client_first_bare,
            nonce,
        } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::State);
        };
        let server_first = text(message)?;
        let combined = attribute(server_first, 0, 'r')?;
        if !combined.starts_with(&nonce) || combined.len() == nonce.len() {
            return Err(ScramError::Malformed(
                "the server's nonce does not extend ours",
            ));
        }
        let mut binding = self.gs2_header.clone().into_bytes();
        if let Some(channel) = &self.channel {
            binding.extend_from_slice(channel);
        }
        let without_proof = format!("c={},r={combined}", BASE64.encode(binding));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored_key = sha256(&self.client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof = xor(&self.client_key, &signature);
        self.state = ClientState::Final { auth_message };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    /// The cluster's server-final message: its signature must be the one
    /// only the holder of the verifier can make.
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let ClientState::Final { auth_message } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::State);
        };
        let message = text(message)?;
        if message.starts_with("e=") {
            return Err(ScramError::ServerSignature);
        }
        let signature = BASE64
            .decode(attribute(message, 0, 'v')?)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        let expected = hmac_sha256(&self.server_key, auth_message.as_bytes());
        if constant_time_eq(&signature, &expected) {
            Ok(())
        } else {
            Err(ScramError::ServerSignature)
        }
    }
}
