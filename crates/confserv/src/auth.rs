//! Session tokens. A login checks the password (argon2, off the async threads) and returns a
//! token `PERSON.EXPIRES_MS.MAC`, where MAC is a keyed BLAKE2b of the rest under the session key
//! both servers read from the database (`cfg/meta/session-key`). A token is thus valid on either
//! server of the pair, and survives a takeover, without any session state; each request still
//! checks that the person exists and is enabled, so disabling a person ends their sessions.

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use blake2::Blake2bMac;
use rand::RngCore;

/// Bytes of a session key.
pub const SESSION_KEY_BYTES: usize = 32;

type TokenMac = Blake2bMac<U32>;

/// A new random session key.
pub fn new_session_key() -> Vec<u8> {
    let mut key = vec![0u8; SESSION_KEY_BYTES];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

fn mac(key: &[u8], person: u64, expires_ms: u64) -> Option<TokenMac> {
    let mut mac = <TokenMac as Mac>::new_from_slice(key).ok()?;
    mac.update(format!("tandem-cfg-session:v1:{person}:{expires_ms}").as_bytes());
    Some(mac)
}

/// A token for `person` valid until `expires_ms`.
pub fn issue(key: &[u8], person: u64, expires_ms: u64) -> Option<String> {
    let mac = mac(key, person, expires_ms)?.finalize().into_bytes();
    Some(format!("{person}.{expires_ms}.{}", hex::encode(mac)))
}

/// The person a token was issued to, if its MAC is right and it has not expired at `now_ms`.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Result<u64, &'static str> {
    let mut parts = token.trim().splitn(3, '.');
    let (Some(person), Some(expires), Some(given)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed session token");
    };
    let (Ok(person), Ok(expires_ms), Ok(given)) = (person.parse::<u64>(), expires.parse::<u64>(), hex::decode(given))
    else {
        return Err("malformed session token");
    };
    // The MAC's own check compares in constant time, so timing tells nothing about the MAC.
    mac(key, person, expires_ms)
        .ok_or("no session key")?
        .verify_slice(&given)
        .map_err(|_| "invalid session token")?;
    if now_ms >= expires_ms {
        return Err("session expired: log in again");
    }
    Ok(person)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_before_expiry() {
        let key = new_session_key();
        let token = issue(&key, 7, 1_000).unwrap();
        assert_eq!(verify(&key, &token, 999), Ok(7));
        assert!(verify(&key, &token, 1_000).is_err(), "expired");
        assert!(verify(&new_session_key(), &token, 0).is_err(), "other key");
        let forged = token.replacen("7.", "1.", 1);
        assert!(verify(&key, &forged, 0).is_err(), "other person");
        assert!(verify(&key, "garbage", 0).is_err());
        let mut flipped = token.clone();
        let last = if flipped.ends_with('0') { "1" } else { "0" };
        flipped.replace_range(flipped.len() - 1.., last);
        assert_eq!(verify(&key, &flipped, 0), Err("invalid session token"));
        assert_eq!(verify(&key, &format!("{token}zz"), 0), Err("malformed session token"));
    }
}
