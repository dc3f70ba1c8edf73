//! Secrets the mesh shares: sealed (encrypted and authenticated) values,
//! sessions and CSRF tokens.
//!
//! Every peer derives the same [`Keys`] from the mesh secret it is given, so
//! a session cookie made on one peer is accepted by every other, and a token
//! sealed into replicated state by one peer can be opened by the builder,
//! whichever peer that is. Without the mesh secret a sealed value is opaque:
//! XChaCha20-Poly1305 with a random 192-bit nonce, the purpose as associated
//! data (so a sealed GitHub token can never pass for a session).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

const NONCE: usize = 24;
/// Prefix of every sealed value, so the format can change later.
const VERSION: &str = "s1.";

/// Whether `value` has the form of a sealed value (rather than, say, a
/// plain one stored by an older version).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(VERSION)
}

/// What a sealed value is for; bound into the ciphertext.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Session,
    /// A GitHub token kept in replicated state for cloning private repos.
    RepoToken,
    /// A project's webhook secret kept in replicated state.
    WebhookSecret,
    /// A project's secret environment variable kept in replicated state.
    EnvSecret,
    /// A pending device-flow sign-in, held by the browser.
    Device,
    /// The `state` of a web-flow sign-in, held by the browser.
    OAuthState,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Session => b"session",
            Self::RepoToken => b"repo-token",
            Self::WebhookSecret => b"webhook-secret",
            Self::EnvSecret => b"env-secret",
            Self::Device => b"device",
            Self::OAuthState => b"oauth-state",
        }
    }
}

/// Keys derived from the mesh secret.
pub struct Keys {
    aead: XChaCha20Poly1305,
    mac: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// HMAC-SHA256 of the concatenated `parts`.
#[allow(clippy::expect_used)]
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 as a key-derivation function (HKDF's expand step with a
/// single block): one independent key per label.
fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    hmac(secret, &[b"shoal v1 ", label])
}

impl Keys {
    /// Derives the keys from the mesh secret (the same on every peer).
    pub fn derive(secret: &[u8]) -> Self {
        let aead = XChaCha20Poly1305::new(&derive(secret, b"seal").into());
        Self {
            aead,
            mac: derive(secret, b"mac"),
        }
    }

    /// Encrypts and authenticates `plain` for `purpose`.
    #[allow(clippy::expect_used)]
    pub fn seal(&self, purpose: Purpose, plain: &[u8]) -> String {
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: purpose.label(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut out = String::with_capacity(VERSION.len() + 2 * (NONCE + sealed.len()));
        out.push_str(VERSION);
        out.push_str(&hex::encode(nonce));
        out.push_str(&hex::encode(sealed));
        out
    }

    /// The plaintext of a value sealed for `purpose` with these keys, or
    /// `None` if it was sealed with other keys, for another purpose, or
    /// altered.
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Option<Vec<u8>> {
        let bytes = hex::decode(sealed.strip_prefix(VERSION)?).ok()?;
        if bytes.len() < NONCE {
            return None;
        }
        let (nonce, msg) = bytes.split_at(NONCE);
        self.aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg,
                    aad: purpose.label(),
                },
            )
            .ok()
    }

    /// Seals a value as JSON.
    #[allow(clippy::expect_used)]
    pub fn seal_json<T: Serialize>(&self, purpose: Purpose, value: &T) -> String {
        let json = serde_json::to_vec(value).expect("plain structs serialize");
        self.seal(purpose, &json)
    }

    /// Opens a value sealed with [`Keys::seal_json`].
    pub fn open_json<T: for<'de> Deserialize<'de>>(
        &self,
        purpose: Purpose,
        sealed: &str,
    ) -> Option<T> {
        serde_json::from_slice(&self.open(purpose, sealed)?).ok()
    }

    /// The CSRF token that goes with a session: forms and scripts send it
    /// back with every write made with the session cookie.
    pub fn csrf(&self, session_id: &str) -> String {
        hex::encode(&hmac(&self.mac, &[b"csrf ", session_id.as_bytes()])[..16])
    }
}

/// A signed-in GitHub user. Lives sealed in the session cookie (or, for
/// the CLI, in a bearer token), so every peer can read it and none stores it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Random; logging out revokes it mesh-wide.
    pub id: String,
    pub login: String,
    /// Unix seconds.
    pub expires: u64,
    /// The user's GitHub token, for listing and cloning their repositories.
    pub token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("login", &self.login)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(login: String, token: String, ttl_secs: u64) -> Self {
        Self {
            id: hex::encode(rand::random::<[u8; 16]>()),
            login,
            expires: now_secs().saturating_add(ttl_secs),
            token,
        }
    }

    pub fn expired(&self) -> bool {
        now_secs() >= self.expires
    }
}

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_keys_and_purpose() {
        let (a, b) = (Keys::derive(b"mesh secret"), Keys::derive(b"other secret"));
        let sealed = a.seal(Purpose::RepoToken, b"ghp_secret");
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(
            a.open(Purpose::RepoToken, &sealed).as_deref(),
            Some(&b"ghp_secret"[..])
        );
        // The same keys derived on another peer open it too.
        let again = Keys::derive(b"mesh secret");
        assert!(again.open(Purpose::RepoToken, &sealed).is_some());
        assert!(b.open(Purpose::RepoToken, &sealed).is_none());
        assert!(a.open(Purpose::Session, &sealed).is_none());
        // Two seals of the same value differ (random nonces).
        assert_ne!(sealed, a.seal(Purpose::RepoToken, b"ghp_secret"));
    }

    #[test]
    fn tampered_or_garbage_values_do_not_open() {
        let keys = Keys::derive(b"k");
        let sealed = keys.seal(Purpose::Session, b"hello");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(keys.open(Purpose::Session, &tampered).is_none());
        for junk in [
            "",
            "s1.",
            "s1.zz",
            "s1.00",
            "v9.00ff",
            &sealed[..sealed.len() - 3],
        ] {
            assert!(keys.open(Purpose::Session, junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn sessions_round_trip_and_hide_their_token() {
        let keys = Keys::derive(b"k");
        let s = Session::new("octocat".into(), "gho_abc".into(), 60);
        let sealed = keys.seal_json(Purpose::Session, &s);
        assert_eq!(
            keys.open_json::<Session>(Purpose::Session, &sealed),
            Some(s.clone())
        );
        assert!(!format!("{s:?}").contains("gho_abc"));
        assert!(!s.expired());
        assert_eq!(keys.csrf(&s.id), keys.csrf(&s.id));
        assert_ne!(keys.csrf(&s.id), keys.csrf("other"));
    }
}
