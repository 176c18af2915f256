//! The `Authorization` header: `Basic` credentials and `Bearer` tokens, parsed strictly and
//! bounded in size before anything is decoded.

use base64::Engine;

/// The longest `Authorization` value looked at (a token with an `x5c` chain of three RSA
/// certificates stays well below it).
pub const MAX_LEN: usize = 16 * 1024;

/// Credentials a request carries; a token is borrowed from the header (it is hashed and looked
/// up on every request, never copied).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user.
        user: String,
        /// The password (never logged: `Debug` hides it).
        password: String,
    },
    /// `Bearer <jwt>`.
    Bearer(&'a str),
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Credentials::Bearer(_) => write!(f, "Bearer(<token>)"),
        }
    }
}

/// Parse an `Authorization` value; `None` when it is malformed, oversized or of another scheme.
pub fn parse(value: &[u8]) -> Option<Credentials<'_>> {
    if value.len() > MAX_LEN {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ];
        let raw = engines.iter().find_map(|e| e.decode(rest).ok())?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        if user.is_empty() {
            return None;
        }
        Some(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        // RFC 6750's token68 characters.
        let token_byte = |b: &u8| matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=');
        (!rest.is_empty() && rest.as_bytes().iter().all(token_byte)).then_some(Credentials::Bearer(rest))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_parse_and_garbage_does_not() {
        // "alice:pa:ss" — passwords may hold colons.
        assert_eq!(
            parse(b"Basic YWxpY2U6cGE6c3M="),
            Some(Credentials::Basic {
                user: "alice".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            parse(b"bearer abc.def.ghi"),
            Some(Credentials::Bearer("abc.def.ghi"))
        );
        for bad in [
            &b""[..],
            b"Basic",
            b"Basic !!!",
            b"Basic Og==",     // ":" (empty user)
            b"Basic YWxpY2U=", // no colon
            b"Basic /w==",     // not UTF-8
            b"Bearer ",
            b"Bearer a b",
            b"Bearer a\"b",
            b"Digest x",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_LEN));
        assert_eq!(parse(huge.as_bytes()), None);
        assert_eq!(
            format!("{:?}", parse(b"Basic YWxpY2U6cGE6c3M=").unwrap()),
            "Basic(alice, <password>)"
        );
    }
}
