//! API tokens: `phxkv_<id>_<secret>`.
//!
//! The id (16 hex digits) is public: it names the token in listings, logs
//! and revocations, and finds its record. The secret (64 hex digits, 256
//! random bits from the operating system) is shown once, when the token is
//! created; the store keeps only its SHA-256. A fast hash is right here: the
//! secret is random, not a password, so there is nothing to brute-force
//! faster than the 2^256 guesses themselves. Comparisons of hashes run in
//! constant time.

use rand::TryRngCore;

use super::{Refusal, RefusalKind};

const PREFIX: &str = "phxkv_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 64;

/// A token as a caller presents it, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a token id: 16 hex digits.
pub fn check_id(id: &str) -> Result<(), Refusal> {
    if is_hex(id, ID_HEX) {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalKind::Invalid,
            format!(
                "token id {}: must be {ID_HEX} hex digits",
                crate::text::quoted(id)
            ),
        ))
    }
}

/// Splits a bearer token in our format; `None` for anything else.
pub fn parse(bearer: &str) -> Option<Presented<'_>> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (is_hex(id, ID_HEX) && is_hex(secret, SECRET_HEX)).then_some(Presented { id, secret })
}

/// SHA-256 of `secret`, as lowercase hex.
pub fn hash(secret: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    hex(digest.as_ref())
}

/// Whether `secret` hashes to `expected_sha256`, in time independent of
/// where they differ.
pub fn verify(secret: &str, expected_sha256: &str) -> bool {
    constant_time_eq(hash(secret).as_bytes(), expected_sha256.as_bytes())
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right; both sides are
/// hashed first, so it does not tell the length either.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let sha = |x: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x);
    aws_lc_rs::constant_time::verify_slices_are_equal(sha(a).as_ref(), sha(b).as_ref()).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token: its id, the full text to hand out, and the secret's hash.
#[derive(Clone, Debug)]
pub struct Minted {
    pub id: String,
    pub text: String,
    pub secret_sha256: String,
}

/// Draws a new token from the operating system's random source.
pub fn mint() -> Result<Minted, String> {
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    let mut rng = rand::rngs::OsRng;
    rng.try_fill_bytes(&mut id)
        .and_then(|()| rng.try_fill_bytes(&mut secret))
        .map_err(|e| format!("no randomness for a token: {e}"))?;
    let (id, secret) = (hex(&id), hex(&secret));
    Ok(Minted {
        text: format!("{PREFIX}{id}_{secret}"),
        secret_sha256: hash(&secret),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_and_verifies_against_its_hash_only() {
        let t = mint().expect("mint");
        let p = parse(&t.text).expect("parses");
        assert_eq!(p.id, t.id);
        assert!(verify(p.secret, &t.secret_sha256));
        let other = mint().expect("mint");
        assert!(!verify(p.secret, &other.secret_sha256));
        assert_eq!(check_id(&t.id), Ok(()));
    }

    #[test]
    fn other_shapes_are_not_tokens() {
        for text in [
            "",
            "phxkv_",
            "phxkv_0123456789abcdef",
            "phxkv_0123456789abcdef_short",
            "phxkv_0123456789abcdeg_0000000000000000000000000000000000000000000000000000000000000000",
            "a-cluster-token-of-some-length",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn constant_time_eq_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn the_hash_is_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
