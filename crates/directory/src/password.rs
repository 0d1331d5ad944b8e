//! Password hashing and verification.
//!
//! New passwords are always hashed with argon2id. For migration from
//! Dovecot we additionally *verify* (never create) SHA-512-crypt and
//! SHA-256-crypt hashes, with or without Dovecot's `{SCHEME}` prefix, and
//! Dovecot's `{ARGON2ID}`/`{ARGON2I}` prefixed PHC strings.
//!
//! Every hash accepted into the directory is checked by [`validate_hash`]
//! first, including upper bounds on its cost parameters: a hash with
//! `rounds=999999999` or a 4 GiB argon2 memory cost would otherwise let
//! anyone who knows the user name make the server burn CPU or memory with
//! each login attempt.

use std::sync::OnceLock;

use argon2::password_hash::SaltString;
use argon2::{Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::rngs::OsRng;

use crate::error::{Error, Result};

/// Highest SHA-crypt `rounds=` accepted. passlib's default (656 000) fits;
/// more than this makes one verification take over a second.
pub const MAX_SHA_CRYPT_ROUNDS: usize = 1_000_000;
/// Highest argon2 memory cost accepted, in KiB (1 GiB).
pub const MAX_ARGON2_M_COST: u32 = 1024 * 1024;
/// Highest argon2 time cost accepted.
pub const MAX_ARGON2_T_COST: u32 = 64;
/// Highest argon2 parallelism accepted.
pub const MAX_ARGON2_P_COST: u32 = 16;

/// Argon2id hash of an unguessable string with the crate's default
/// parameters, used by [`dummy_verify`] only if computing a fresh one at
/// run time fails (which would need a broken RNG). Its password does not
/// matter: the dummy verification's result is always discarded.
const FALLBACK_DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$\
    cG9zdG9mZmljZWR1bW15$9VPDtcfQFc/3goJOJ4rfAbJwNEutMNIHM2/95Dcghv0";

/// Hashes `password` as an argon2id PHC string with the argon2 crate's
/// default parameters (m=19456 KiB, t=2, p=1, the OWASP recommendation)
/// and a fresh random salt from the operating system.
pub fn hash_password(password: &[u8]) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

/// Returns whether `password` matches `stored`.
///
/// Any hash that [`validate_hash`] would refuse, including unknown schemes
/// and corrupt strings, simply yields `false`: a login must never succeed
/// because a hash could not be parsed. Byte comparisons are constant-time.
pub fn verify_password(stored: &str, password: &[u8]) -> bool {
    match parse(stored) {
        Ok(Parsed::Argon2(hash)) => Argon2::default().verify_password(password, &hash).is_ok(),
        Ok(Parsed::ShaCrypt {
            kind,
            rounds,
            salt,
            hash,
        }) => {
            let computed = match kind {
                ShaKind::Sha512 => sha_crypt::Sha512Params::new(rounds)
                    .ok()
                    .and_then(|p| sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &p).ok()),
                ShaKind::Sha256 => sha_crypt::Sha256Params::new(rounds)
                    .ok()
                    .and_then(|p| sha_crypt::sha256_crypt_b64(password, salt.as_bytes(), &p).ok()),
            };
            computed.is_some_and(|c| ct_eq(c.as_bytes(), hash.as_bytes()))
        }
        Err(_) => false,
    }
}

/// Checks that `stored` is a hash this server can verify, with sane cost
/// parameters, so that mistakes (a plaintext password pasted into the file,
/// a bcrypt hash) are caught when the user is added rather than at login.
pub fn validate_hash(stored: &str) -> Result<()> {
    parse(stored)
        .map(|_| ())
        .map_err(|reason| Error::UnsupportedHash { reason })
}

/// Spends about as long as verifying a real argon2id hash, then discards
/// the result.
///
/// Called for unknown users so that "no such user" and "wrong password"
/// take the same time and an attacker cannot enumerate accounts by timing.
/// The reference hash is computed on first use with the current default
/// parameters; call [`prepare_dummy_hash`] at start-up so the first
/// unknown-user login is not slower than the rest.
pub fn dummy_verify(password: &[u8]) {
    let ok = verify_password(dummy_hash(), password);
    std::hint::black_box(ok);
}

/// Computes the reference hash used by [`dummy_verify`] now instead of on
/// the first failed login.
pub fn prepare_dummy_hash() {
    dummy_hash();
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut OsRng, &mut secret);
        hash_password(&secret).unwrap_or_else(|_| FALLBACK_DUMMY_HASH.to_owned())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShaKind {
    Sha512,
    Sha256,
}

enum Parsed<'a> {
    Argon2(PasswordHash<'a>),
    ShaCrypt {
        kind: ShaKind,
        rounds: usize,
        salt: &'a str,
        hash: &'a str,
    },
}

/// Parses a stored hash; the error is a human-readable reason.
fn parse(stored: &str) -> std::result::Result<Parsed<'_>, String> {
    let (scheme, body) = match stored.strip_prefix('{') {
        Some(rest) => {
            let Some((scheme, body)) = rest.split_once('}') else {
                return Err("'{' without a closing '}'".into());
            };
            (Some(scheme.to_ascii_uppercase()), body)
        }
        None => (None, stored),
    };
    let is_sha512 = body.starts_with("$6$");
    let is_sha256 = body.starts_with("$5$");
    let is_argon2 = body.starts_with("$argon2");
    match scheme.as_deref() {
        None | Some("CRYPT") if is_sha512 => parse_sha_crypt(ShaKind::Sha512, body),
        None | Some("CRYPT") if is_sha256 => parse_sha_crypt(ShaKind::Sha256, body),
        None if is_argon2 => parse_argon2(body),
        Some("SHA512-CRYPT") if is_sha512 => parse_sha_crypt(ShaKind::Sha512, body),
        Some("SHA256-CRYPT") if is_sha256 => parse_sha_crypt(ShaKind::Sha256, body),
        Some("ARGON2ID") if body.starts_with("$argon2id$") => parse_argon2(body),
        Some("ARGON2I") if body.starts_with("$argon2i$") => parse_argon2(body),
        Some(s @ ("SHA512-CRYPT" | "SHA256-CRYPT" | "ARGON2ID" | "ARGON2I" | "CRYPT")) => Err(
            format!("the {{{s}}} value is not in a format this server can verify"),
        ),
        Some(s) => Err(format!(
            "scheme {{{}}} cannot be verified by this server",
            s.escape_debug()
        )),
        None if stored.is_empty() => Err("it is empty".into()),
        None => Err("it is not a recognised hash (plaintext passwords are not accepted)".into()),
    }
}

/// Parses `$6$[rounds=N$]salt$hash` / `$5$...` as produced by crypt(3).
fn parse_sha_crypt(kind: ShaKind, body: &str) -> std::result::Result<Parsed<'_>, String> {
    let (name, hash_len) = match kind {
        ShaKind::Sha512 => ("SHA512-CRYPT", 86),
        ShaKind::Sha256 => ("SHA256-CRYPT", 43),
    };
    // "$6$" / "$5$" prefix was checked by the caller.
    let rest = &body[3..];
    let mut fields: Vec<&str> = rest.split('$').collect();
    let mut rounds = sha_crypt::ROUNDS_DEFAULT;
    if fields.first().is_some_and(|f| f.starts_with("rounds=")) {
        let spec = fields.remove(0);
        let digits = &spec["rounds=".len()..];
        rounds = digits
            .parse::<usize>()
            .ok()
            .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("{name} rounds= value {digits:?} is not a number"))?;
        if rounds < sha_crypt::ROUNDS_MIN {
            return Err(format!(
                "{name} rounds={rounds} is below the minimum of 1000"
            ));
        }
        if rounds > MAX_SHA_CRYPT_ROUNDS {
            return Err(format!(
                "{name} rounds={rounds} is above {MAX_SHA_CRYPT_ROUNDS}, which would make every \
                 login attempt very expensive"
            ));
        }
    }
    let [salt, hash] = fields[..] else {
        return Err(format!(
            "{name} value must look like $N$[rounds=R$]salt$hash"
        ));
    };
    if salt.len() > 16 || !salt.bytes().all(is_crypt_char) {
        return Err(format!(
            "{name} salt must be at most 16 characters from [./0-9A-Za-z]"
        ));
    }
    if hash.len() != hash_len || !hash.bytes().all(is_crypt_char) {
        return Err(format!(
            "{name} hash part must be {hash_len} characters from [./0-9A-Za-z]"
        ));
    }
    Ok(Parsed::ShaCrypt {
        kind,
        rounds,
        salt,
        hash,
    })
}

fn is_crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

fn parse_argon2(body: &str) -> std::result::Result<Parsed<'_>, String> {
    let hash = PasswordHash::new(body).map_err(|e| format!("malformed argon2 PHC string: {e}"))?;
    if !matches!(hash.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("unknown algorithm {}", hash.algorithm));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("argon2 PHC string lacks a salt or hash".into());
    }
    let params = Params::try_from(&hash).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_ARGON2_M_COST
        || params.t_cost() > MAX_ARGON2_T_COST
        || params.p_cost() > MAX_ARGON2_P_COST
    {
        return Err(format!(
            "argon2 cost m={},t={},p={} exceeds the limits m={MAX_ARGON2_M_COST},\
             t={MAX_ARGON2_T_COST},p={MAX_ARGON2_P_COST}, which would make every login \
             attempt very expensive",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(Parsed::Argon2(hash))
}

/// Compares two byte strings without an early exit, so the time taken does
/// not reveal how long a matching prefix was. Lengths are public (they are
/// fixed by the hash format).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Computed with both `openssl passwd -6 -salt saltsalt` and the
    /// sha-crypt crate (see `sha512_vectors_agree_with_the_crate`).
    const DOVECOT_SHA512: &str = "{SHA512-CRYPT}$6$rounds=5000$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/";
    const DOVECOT_PASSWORD: &str = "correct horse battery staple";
    /// The published test vector from Drepper's SHA-crypt specification.
    const DREPPER_SHA512: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
    /// `openssl passwd -5 -salt saltsalt 'correct horse battery staple'`.
    const SHA256: &str = "$5$saltsalt$3hGFMknrJ4ZpFPe7XZe397oIMEp7sbvqrcsX/ONJ3i.";

    #[test]
    fn argon2id_hash_and_verify() {
        let h = hash_password(b"hunter2").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, b"hunter2"));
        assert!(!verify_password(&h, b"hunter3"));
        // Dovecot-style prefix is accepted too.
        assert!(verify_password(&format!("{{ARGON2ID}}{h}"), b"hunter2"));
        // Fresh salt each time.
        assert_ne!(h, hash_password(b"hunter2").unwrap());
        validate_hash(&h).unwrap();
    }

    #[test]
    fn argon2i_and_argon2d_verify() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let params = Params::new(64, 1, 1, None).unwrap();
        for alg in [argon2::Algorithm::Argon2i, argon2::Algorithm::Argon2d] {
            let h = Argon2::new(alg, argon2::Version::V0x13, params.clone())
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password(&h, b"pw"), "{h}");
            assert!(!verify_password(&h, b"px"), "{h}");
        }
    }

    #[test]
    fn sha512_crypt_fixed_vectors() {
        assert!(verify_password(DOVECOT_SHA512, DOVECOT_PASSWORD.as_bytes()));
        assert!(!verify_password(
            DOVECOT_SHA512,
            b"correct horse battery stapl"
        ));
        // Without prefix and without the explicit default rounds.
        let bare = DOVECOT_SHA512
            .trim_start_matches("{SHA512-CRYPT}")
            .replace("rounds=5000$", "");
        assert!(verify_password(&bare, DOVECOT_PASSWORD.as_bytes()));
        assert!(verify_password(
            &format!("{{CRYPT}}{bare}"),
            DOVECOT_PASSWORD.as_bytes()
        ));
        assert!(verify_password(DREPPER_SHA512, b"Hello world!"));
        assert!(!verify_password(DREPPER_SHA512, b"Hello world"));
        assert!(verify_password(SHA256, DOVECOT_PASSWORD.as_bytes()));
        assert!(verify_password(
            &format!("{{SHA256-CRYPT}}{SHA256}"),
            DOVECOT_PASSWORD.as_bytes()
        ));
        assert!(!verify_password(SHA256, b"nope"));
        // A wrong scheme label for the body is refused rather than guessed.
        assert!(!verify_password(
            &format!("{{SHA256-CRYPT}}{bare}"),
            DOVECOT_PASSWORD.as_bytes()
        ));
    }

    #[test]
    fn sha512_vectors_agree_with_the_crate() {
        let params = sha_crypt::Sha512Params::new(5000).unwrap();
        let ours =
            sha_crypt::sha512_crypt_b64(DOVECOT_PASSWORD.as_bytes(), b"saltsalt", &params).unwrap();
        assert!(DOVECOT_SHA512.ends_with(&format!("$saltsalt${ours}")));

        let generated = sha_crypt::sha512_simple("s3cret", &params).unwrap();
        assert!(verify_password(&generated, b"s3cret"));
        assert!(verify_password(
            &format!("{{SHA512-CRYPT}}{generated}"),
            b"s3cret"
        ));
        assert!(!verify_password(&generated, b"s3creT"));

        let params = sha_crypt::Sha512Params::new(10_000).unwrap();
        let generated = sha_crypt::sha512_simple("s3cret", &params).unwrap();
        assert!(generated.contains("rounds=10000$"));
        assert!(verify_password(&generated, b"s3cret"));
    }

    #[test]
    fn non_utf8_passwords_work_with_sha_crypt() {
        let params = sha_crypt::Sha512Params::new(5000).unwrap();
        let pw = b"\xff\xfe latin-1 \xe9";
        let h = sha_crypt::sha512_crypt_b64(pw, b"abc", &params).unwrap();
        assert!(verify_password(&format!("$6$abc${h}"), pw));
    }

    #[test]
    fn unknown_and_malformed_hashes_never_verify() {
        for bad in [
            "",
            "hunter2",
            "{PLAIN}hunter2",
            "{plain}hunter2",
            "{CRAM-MD5}abcdef",
            "$1$saltsalt$abcdefghijklmnopqrstuv",
            "$2y$10$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
            "{SHA512-CRYPT",
            "$6$saltsalt$short",
            "$6$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/$extra",
            "$6$rounds=999999999$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/",
            "$6$rounds=10$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/",
            "$6$rounds=+5000$saltsalt$CPgxBHZBXfhC6lX1yxpdEsbQfXmg3WXVj8AoVwyNFLfb5AtbfM8k6A8yehv1z6sgzoH/DUIs7YK9hVnGhTjhW/",
            "$argon2id$v=19$m=4194304,t=2,p=1$cG9zdG9mZmljZWR1bW15$ZxwDb+HGAYdDEcc7+ws2h8Ovs+LY+7BLp+FcYw7Pvl8",
            "$argon2id$garbage",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
        ] {
            assert!(!verify_password(bad, b"hunter2"), "{bad}");
            assert!(validate_hash(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fallback_dummy_hash_is_valid() {
        validate_hash(FALLBACK_DUMMY_HASH).unwrap();
        assert!(verify_password(
            FALLBACK_DUMMY_HASH,
            b"postoffice fallback dummy password"
        ));
    }

    #[test]
    fn dummy_verify_costs_about_as_much_as_a_real_verification() {
        prepare_dummy_hash();
        let real = hash_password(b"pw").unwrap();
        let t = Instant::now();
        assert!(verify_password(&real, b"pw"));
        let real_time = t.elapsed();
        let t = Instant::now();
        dummy_verify(b"pw");
        let dummy_time = t.elapsed();
        // Generous bounds: the machine may be busy, but a no-op or a cheap
        // hash would be orders of magnitude (>1000x) off.
        assert!(
            dummy_time * 10 >= real_time && dummy_time <= real_time * 10,
            "dummy {dummy_time:?} vs real {real_time:?}"
        );
    }
}
