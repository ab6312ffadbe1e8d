//! Signed JSON Web Tokens (JWS compact form) from an OpenID provider: the signature checked
//! against the provider's published keys (JWKS) with ring, then the claims an ID token must
//! carry (issuer, audience, expiry, nonce, `at_hash`), as Synapse checks them through authlib.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};
use sha2::Digest;

/// Why a token was refused (shown on the error page, as Synapse shows authlib's message).
pub(crate) type Refusal = String;

/// A token's header and claims, once its signature has been checked.
#[derive(Debug)]
pub(crate) struct Verified {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, Refusal> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| format!("the token's {what} is not base64url"))
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice(&decode_part(part, what)?) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("the token's {what} is not a JSON object")),
    }
}

/// Checks `token`'s signature: its `alg` must be one of `allowed` (never `none`), made with one
/// of `keys` (a JWKS's `keys`; the one its `kid` names when it names one), or, for the HMAC
/// algorithms, with `secret` (the client secret, as OpenID Connect specifies).
pub(crate) fn verify(
    token: &str,
    keys: &[Value],
    allowed: &[String],
    secret: Option<&str>,
) -> Result<Verified, Refusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("the token is not a signed JWT (three dot-separated parts)".into());
    };
    let header = decode_object(h, "header")?;
    let claims = decode_object(p, "payload")?;
    let sig = decode_part(s, "signature")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    if alg.eq_ignore_ascii_case("none") || !allowed.iter().any(|a| a == alg) {
        return Err(format!("unsupported signing algorithm {alg:?} (allowed: {})", allowed.join(", ")));
    }
    let message = format!("{h}.{p}");
    if let Some(hmac) = hmac_algorithm(alg) {
        let Some(secret) = secret else { return Err(format!("{alg} needs a client secret, and none is configured")) };
        let key = ring::hmac::Key::new(hmac, secret.as_bytes());
        return ring::hmac::verify(&key, message.as_bytes(), &sig)
            .map(|_| Verified { header, claims })
            .map_err(|_| "bad signature".into());
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| kid.is_none_or(|kid| k.get("kid").and_then(Value::as_str) == Some(kid)))
        .filter(|k| k.get("use").and_then(Value::as_str).is_none_or(|u| u == "sig"))
        .filter(|k| k.get("alg").and_then(Value::as_str).is_none_or(|a| a == alg))
        .collect();
    if candidates.is_empty() {
        return Err(match kid {
            Some(kid) => format!("no key {kid:?} in the provider's key set"),
            None => "no suitable key in the provider's key set".into(),
        });
    }
    for key in candidates {
        if verify_with_jwk(alg, key, message.as_bytes(), &sig)? {
            return Ok(Verified { header, claims });
        }
    }
    Err("bad signature".into())
}

fn hmac_algorithm(alg: &str) -> Option<ring::hmac::Algorithm> {
    match alg {
        "HS256" => Some(ring::hmac::HMAC_SHA256),
        "HS384" => Some(ring::hmac::HMAC_SHA384),
        "HS512" => Some(ring::hmac::HMAC_SHA512),
        _ => None,
    }
}

/// Whether `key` (a JWK) made `sig` over `message` with `alg`; an error for a key that cannot.
fn verify_with_jwk(alg: &str, key: &Value, message: &[u8], sig: &[u8]) -> Result<bool, Refusal> {
    let field = |name: &str| -> Result<Vec<u8>, Refusal> {
        let text = key.get(name).and_then(Value::as_str).ok_or_else(|| format!("a key lacks {name:?}"))?;
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("a key's {name:?} is not base64url"))
    };
    let kty = key.get("kty").and_then(Value::as_str).unwrap_or_default();
    let rsa = |params: &'static signature::RsaParameters| -> Result<bool, Refusal> {
        if kty != "RSA" {
            return Ok(false);
        }
        let components = signature::RsaPublicKeyComponents { n: field("n")?, e: field("e")? };
        Ok(components.verify(params, message, sig).is_ok())
    };
    let ec = |curve: &str, params: &'static signature::EcdsaVerificationAlgorithm| -> Result<bool, Refusal> {
        if kty != "EC" || key.get("crv").and_then(Value::as_str) != Some(curve) {
            return Ok(false);
        }
        let mut point = vec![4u8];
        point.extend(field("x")?);
        point.extend(field("y")?);
        Ok(UnparsedPublicKey::new(params, point).verify(message, sig).is_ok())
    };
    match alg {
        "RS256" => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => rsa(&signature::RSA_PSS_2048_8192_SHA512),
        "ES256" => ec("P-256", &signature::ECDSA_P256_SHA256_FIXED),
        "ES384" => ec("P-384", &signature::ECDSA_P384_SHA384_FIXED),
        "EdDSA" | "Ed25519" => {
            if kty != "OKP" || key.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Ok(false);
            }
            Ok(UnparsedPublicKey::new(&signature::ED25519, field("x")?).verify(message, sig).is_ok())
        }
        other => Err(format!("unsupported signing algorithm {other:?}")),
    }
}

/// What an ID token's claims must match.
pub(crate) struct IdTokenExpectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// The access token, when it will be used (then a present `at_hash` must match it).
    pub access_token: Option<&'a str>,
    pub now_secs: i64,
}

/// Clock skew allowed on `exp`/`iat` (Synapse's two minutes).
const LEEWAY_SECS: i64 = 120;

/// OpenID Connect Core's checks of an ID token from the token endpoint (section 3.1.3.7).
pub(crate) fn check_id_token(token: &Verified, expect: &IdTokenExpectations<'_>) -> Result<(), Refusal> {
    let claims = &token.claims;
    let string = |name: &str| claims.get(name).and_then(Value::as_str);
    match string("iss") {
        Some(iss) if iss == expect.issuer => {}
        Some(iss) => return Err(format!("invalid claim \"iss\": {iss:?} is not {:?}", expect.issuer)),
        None => return Err("missing claim \"iss\"".into()),
    }
    let audience: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err("missing claim \"aud\"".into()),
    };
    if !audience.contains(&expect.client_id) {
        return Err("invalid claim \"aud\"".into());
    }
    if audience.len() > 1 && string("azp").is_some_and(|azp| azp != expect.client_id) {
        return Err("invalid claim \"azp\"".into());
    }
    let number = |name: &str| claims.get(name).and_then(Value::as_f64).map(|n| n as i64);
    match number("exp") {
        Some(exp) if exp + LEEWAY_SECS < expect.now_secs => return Err("expired token".into()),
        Some(_) => {}
        None => return Err("missing claim \"exp\"".into()),
    }
    match number("iat") {
        Some(iat) if iat - LEEWAY_SECS > expect.now_secs => return Err("the token is issued in the future".into()),
        Some(_) => {}
        None => return Err("missing claim \"iat\"".into()),
    }
    if string("nonce") != Some(expect.nonce) {
        return Err("invalid claim \"nonce\"".into());
    }
    if let (Some(at_hash), Some(access_token)) = (string("at_hash"), expect.access_token) {
        let alg = token.header.get("alg").and_then(Value::as_str).unwrap_or_default();
        if at_hash != left_half_hash(alg, access_token) {
            return Err("invalid claim \"at_hash\"".into());
        }
    }
    Ok(())
}

/// `at_hash`: the left half of the access token's hash with the signature's hash function.
fn left_half_hash(alg: &str, value: &str) -> String {
    let digest: Vec<u8> = if alg.ends_with("384") {
        sha2::Sha384::digest(value.as_bytes()).to_vec()
    } else if alg.ends_with("512") || alg == "EdDSA" || alg == "Ed25519" {
        sha2::Sha512::digest(value.as_bytes()).to_vec()
    } else {
        sha2::Sha256::digest(value.as_bytes()).to_vec()
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token signed with a fresh P-256 key, and that key as a JWK.
    fn es256_token(claims: &Value, kid: &str) -> (String, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&public[1..33]), "y": b64(&public[33..])});
        let signing_input = format!(
            "{}.{}",
            b64(json!({"alg": "ES256", "kid": kid}).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = pair.sign(&rng, signing_input.as_bytes()).unwrap();
        (format!("{signing_input}.{}", b64(sig.as_ref())), jwk)
    }

    fn es256() -> Vec<String> {
        vec!["ES256".to_owned()]
    }

    #[test]
    fn a_token_signed_by_a_published_key_verifies_and_a_tampered_one_does_not() {
        let (token, jwk) = es256_token(&json!({"sub": "alice"}), "k1");
        let verified = verify(&token, std::slice::from_ref(&jwk), &es256(), None).unwrap();
        assert_eq!(verified.claims["sub"], "alice");
        // Another key with the same kid, a changed payload, a disallowed algorithm: refused.
        let (_, other) = es256_token(&json!({}), "k1");
        assert_eq!(verify(&token, &[other], &es256(), None).err().unwrap(), "bad signature");
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(json!({"sub": "mallory"}).to_string().as_bytes());
        parts[1] = &forged;
        assert!(verify(&parts.join("."), std::slice::from_ref(&jwk), &es256(), None).is_err());
        assert!(
            verify(&token, std::slice::from_ref(&jwk), &["RS256".to_owned()], None)
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(verify("a.b", &[jwk], &es256(), None).is_err());
    }

    #[test]
    fn an_unsigned_token_is_refused_even_when_none_is_listed() {
        let token = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"x"}"#));
        let allowed = vec!["none".to_owned(), "RS256".to_owned()];
        assert!(verify(&token, &[], &allowed, None).unwrap_err().contains("unsupported"));
    }

    #[test]
    fn hmac_tokens_use_the_client_secret() {
        let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(br#"{"sub":"x"}"#));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let token = format!("{input}.{}", b64(ring::hmac::sign(&key, input.as_bytes()).as_ref()));
        let allowed = vec!["HS256".to_owned()];
        assert!(verify(&token, &[], &allowed, Some("s3cret")).is_ok());
        assert_eq!(verify(&token, &[], &allowed, Some("other")).err().unwrap(), "bad signature");
        assert!(verify(&token, &[], &allowed, None).is_err());
    }

    #[test]
    fn id_token_claims_are_checked() {
        let now = 1_700_000_000;
        let good = json!({"iss": "https://idp", "aud": "myelin", "exp": now + 60, "iat": now, "nonce": "n",
                          "at_hash": left_half_hash("ES256", "AT")});
        let expect = IdTokenExpectations {
            issuer: "https://idp",
            client_id: "myelin",
            nonce: "n",
            access_token: Some("AT"),
            now_secs: now,
        };
        let check = |claims: Value| {
            let token = Verified {
                header: json!({"alg": "ES256"}).as_object().unwrap().clone(),
                claims: claims.as_object().unwrap().clone(),
            };
            check_id_token(&token, &expect)
        };
        assert!(check(good.clone()).is_ok());
        let with = |key: &str, value: Value| {
            let mut c = good.clone();
            c[key] = value;
            c
        };
        assert!(check(with("iss", json!("https://evil"))).is_err());
        assert!(check(with("aud", json!(["other"]))).is_err());
        assert!(check(with("exp", json!(now - 121))).unwrap_err().contains("expired"));
        assert!(check(with("exp", json!(now - 100))).is_ok(), "two minutes of skew are allowed");
        assert!(check(with("nonce", json!("m"))).is_err());
        assert!(check(with("at_hash", json!("xyz"))).is_err());
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(check(no_exp).is_err());
    }
}
