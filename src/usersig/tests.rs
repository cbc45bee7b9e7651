//! UserSig v2: the vectors made by Tencent's own library, and what verification refuses.

use super::*;
use proptest::prelude::*;

/// Made by Tencent's official `tls-sig-api-v2` library (see the file's `about`); kept in the
/// repository so that a clone on its own checks against them.
const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/usersig-v2.json"
);

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    sdkappid: u64,
    secret_key: String,
    identifier: String,
    time: u64,
    expire: u64,
    userbuf_base64: Option<String>,
    usersig: String,
    decoded: serde_json::Value,
}

impl Vector {
    fn key(&self) -> SecretKey {
        SecretKey::new(&self.secret_key).unwrap()
    }

    fn userbuf(&self) -> Option<Vec<u8>> {
        self.userbuf_base64
            .as_ref()
            .map(|text| STANDARD.decode(text).unwrap())
    }

    fn expected_document(&self) -> SigDocument {
        let field = |name: &str| &self.decoded[name];
        SigDocument {
            ver: field("TLS.ver").as_str().unwrap().to_owned(),
            identifier: field("TLS.identifier").as_str().unwrap().to_owned(),
            sdkappid: field("TLS.sdkappid").as_u64().unwrap(),
            time: field("TLS.time").as_u64().unwrap(),
            expire: field("TLS.expire").as_u64().unwrap(),
            userbuf: field("TLS.userbuf")
                .as_str()
                .map(|text| STANDARD.decode(text).unwrap()),
            sig: field("TLS.sig").as_str().unwrap().to_owned(),
        }
    }
}

/// Panics (fails the test) when the shared vectors are missing: they must not be skipped.
fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|err| panic!("cannot read the UserSig vectors at {VECTORS}: {err}"));
    let file: VectorFile = serde_json::from_str(&text).unwrap();
    assert!(!file.vectors.is_empty(), "no vectors in {VECTORS}");
    file.vectors
}

fn key() -> SecretKey {
    SecretKey::new("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e").unwrap()
}

/// The outer encoding without its zlib layer, for building hostile inputs.
fn encode_raw(bytes: &[u8]) -> String {
    SIG_ENGINE.encode(bytes).replace('=', "_")
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn inner_bytes(usersig: &str) -> Vec<u8> {
    SIG_ENGINE.decode(usersig.replace('_', "=")).unwrap()
}

#[test]
fn vectors_generate_the_same_signature_and_document() {
    for v in vectors() {
        let generated = generate_with_userbuf(
            &v.key(),
            v.sdkappid,
            &v.identifier,
            v.time,
            v.expire,
            v.userbuf().as_deref(),
        );
        let ours = decode(&generated).unwrap();
        assert_eq!(ours, v.expected_document(), "vector {}", v.identifier);
        // The JSON inside is byte for byte the Python library's. The compressed bytes are
        // not: flate2's Rust backend encodes these short inputs with a dynamic Huffman
        // block where C zlib picks the fixed one. Both inflate to the same document.
        assert_eq!(
            inflate_bounded(&inner_bytes(&generated)).unwrap(),
            inflate_bounded(&inner_bytes(&v.usersig)).unwrap(),
            "vector {}",
            v.identifier
        );
    }
}

#[test]
fn vectors_decode_to_their_documents() {
    for v in vectors() {
        assert_eq!(decode(&v.usersig).unwrap(), v.expected_document());
    }
}

#[test]
fn vectors_verify_until_they_expire() {
    for v in vectors() {
        let key = v.key();
        let doc = verify(&key, &v.usersig, v.sdkappid, &v.identifier, v.time + 1).unwrap();
        assert_eq!(doc, v.expected_document());
        let last = v.time + v.expire;
        assert!(verify(&key, &v.usersig, v.sdkappid, &v.identifier, last).is_ok());
        assert_eq!(
            verify(&key, &v.usersig, v.sdkappid, &v.identifier, last + 1),
            Err(VerifyError::Expired)
        );
    }
}

#[test]
fn vectors_fail_with_another_key() {
    let other = SecretKey::new("not the key").unwrap();
    for v in vectors() {
        assert_eq!(
            verify(&other, &v.usersig, v.sdkappid, &v.identifier, v.time),
            Err(VerifyError::BadSignature)
        );
    }
}

#[test]
fn secret_key_is_trimmed_and_never_empty() {
    assert_eq!(SecretKey::new("").unwrap_err(), EmptyKey);
    assert_eq!(SecretKey::new(" \t\r\n").unwrap_err(), EmptyKey);
    let sig = generate(&key(), 1, "admin", 100, 60);
    let from_file = SecretKey::new(
        b"5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e\n".as_slice(),
    )
    .unwrap();
    assert!(verify(&from_file, &sig, 1, "admin", 100).is_ok());
    // The hex text is the key: its decoded bytes are a different key.
    let hex = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    let hex_decoded: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect();
    assert_eq!(
        verify(&SecretKey::new(hex_decoded).unwrap(), &sig, 1, "admin", 100),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn secret_key_debug_is_redacted() {
    let key = SecretKey::new("super-secret-value").unwrap();
    assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
    assert_eq!(format!("{:?}", key.clone()), "SecretKey(<redacted>)");
}

#[test]
fn error_codes_are_tencents() {
    assert_eq!(VerifyError::Malformed.error_code(), 70003);
    assert_eq!(VerifyError::SdkAppIdMismatch.error_code(), 70014);
    assert_eq!(VerifyError::IdentifierMismatch.error_code(), 70013);
    assert_eq!(VerifyError::Expired.error_code(), 70001);
    assert_eq!(VerifyError::BadSignature.error_code(), 70009);
}

#[test]
fn error_texts_leak_nothing() {
    let sig = generate(&key(), 1400000000, "admin", 100, 60);
    let doc = decode(&sig).unwrap();
    for err in [
        VerifyError::Malformed,
        VerifyError::SdkAppIdMismatch,
        VerifyError::IdentifierMismatch,
        VerifyError::Expired,
        VerifyError::BadSignature,
    ] {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&sig) && !text.contains(&doc.sig) && !text.contains("5bd2850f"));
    }
}

#[test]
fn checks_run_in_the_official_order() {
    let sig = generate(&key(), 7, "admin", 100, 60);
    let wrong_key = SecretKey::new("other").unwrap();
    // Every check fails at once: the SDKAppID is reported first, then identity, then expiry.
    assert_eq!(
        verify(&wrong_key, &sig, 8, "other", 1000),
        Err(VerifyError::SdkAppIdMismatch)
    );
    assert_eq!(
        verify(&wrong_key, &sig, 7, "other", 1000),
        Err(VerifyError::IdentifierMismatch)
    );
    assert_eq!(
        verify(&wrong_key, &sig, 7, "admin", 1000),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verify(&wrong_key, &sig, 7, "admin", 160),
        Err(VerifyError::BadSignature)
    );
    assert!(verify(&key(), &sig, 7, "admin", 160).is_ok());
}

#[test]
fn expiry_saturates_instead_of_wrapping() {
    let sig = generate(&key(), 1, "admin", u64::MAX - 10, u64::MAX);
    assert!(verify(&key(), &sig, 1, "admin", u64::MAX).is_ok());
}

#[test]
fn userbuf_is_signed() {
    let sig = generate_with_userbuf(&key(), 1, "u", 100, 60, Some(b"abc"));
    let doc = verify(&key(), &sig, 1, "u", 100).unwrap();
    assert_eq!(doc.userbuf.as_deref(), Some(b"abc".as_slice()));
    let empty = generate_with_userbuf(&key(), 1, "u", 100, 60, Some(b""));
    assert_eq!(
        verify(&key(), &empty, 1, "u", 100).unwrap().userbuf,
        Some(Vec::new())
    );
    // Dropping the userbuf from a signed document breaks the signature.
    let mut doc = decode(&sig).unwrap();
    doc.userbuf = None;
    let stripped = reencode(&doc, "2.0");
    assert_eq!(
        verify(&key(), &stripped, 1, "u", 100),
        Err(VerifyError::BadSignature)
    );
}

/// A document written by hand (compact JSON, other key order), as another library might.
fn reencode(doc: &SigDocument, ver: &str) -> String {
    let mut value = serde_json::json!({
        "TLS.sig": doc.sig,
        "TLS.time": doc.time,
        "TLS.expire": doc.expire,
        "TLS.sdkappid": doc.sdkappid,
        "TLS.identifier": doc.identifier,
        "TLS.ver": ver,
    });
    if let Some(buf) = &doc.userbuf {
        value["TLS.userbuf"] = STANDARD.encode(buf).into();
    }
    encode_raw(&zlib(&serde_json::to_vec(&value).unwrap()))
}

#[test]
fn other_key_orders_and_spacing_are_accepted() {
    let sig = generate(&key(), 1400000000, "admin", 100, 60);
    let doc = decode(&sig).unwrap();
    let compact = reencode(&doc, "2.0");
    assert_ne!(compact, sig);
    assert_eq!(verify(&key(), &compact, 1400000000, "admin", 100), Ok(doc));
}

#[test]
fn non_ascii_identifiers_are_escaped_like_python() {
    let sig = generate(&key(), 1, "小明\u{1f600}\x7f\"\n", 100, 60);
    let json = inflate_bounded(&inner_bytes(&sig)).unwrap();
    let text = String::from_utf8(json).unwrap();
    assert!(
        text.contains(r#""TLS.identifier": "\u5c0f\u660e\ud83d\ude00\u007f\"\n""#),
        "{text}"
    );
    assert!(verify(&key(), &sig, 1, "小明\u{1f600}\x7f\"\n", 100).is_ok());
}

#[test]
fn garbage_is_malformed() {
    let sig = generate(&key(), 1, "admin", 100, 60);
    let inner = inner_bytes(&sig);
    let mut cases: Vec<String> = vec![
        String::new(),
        "not base64!".into(),
        "eJyr".into(),
        sig[..sig.len() - 4].to_owned(),
        // padding in the wrong place, or spelt as in plain base64
        format!("{sig}_"),
        format!("_{sig}"),
        format!("{}=", &sig[..sig.len() - 1]),
        // a raw deflate or gzip stream instead of zlib
        encode_raw(&inner[2..inner.len() - 4]),
        // zlib stream cut before its checksum, bad checksum, trailing bytes
        encode_raw(&inner[..inner.len() - 4]),
        encode_raw(&[&inner[..inner.len() - 1], &[inner[inner.len() - 1] ^ 1]].concat()),
        encode_raw(&[inner.as_slice(), b"x"].concat()),
        // valid zlib, wrong contents
        encode_raw(&zlib(b"hello")),
        encode_raw(&zlib(b"[]")),
        encode_raw(&zlib(br#"{"TLS.ver":"2.0"}"#)),
        encode_raw(&zlib(
            br#"{"TLS.ver":"2.0","TLS.identifier":"a","TLS.sdkappid":-1,"TLS.expire":1,"TLS.time":1,"TLS.sig":"x"}"#,
        )),
        encode_raw(&zlib(
            br#"{"TLS.ver":"2.0","TLS.identifier":"a","TLS.sdkappid":1,"TLS.expire":1.5,"TLS.time":1,"TLS.sig":"x"}"#,
        )),
        encode_raw(&zlib(
            br#"{"TLS.ver":"2.0","TLS.identifier":"a","TLS.sdkappid":1,"TLS.expire":1,"TLS.time":1,"TLS.sig":"x","TLS.userbuf":"***"}"#,
        )),
        encode_raw(&zlib(
            br#"{"TLS.ver":"2.0","TLS.identifier":"\ud800","TLS.sdkappid":1,"TLS.expire":1,"TLS.time":1,"TLS.sig":"x"}"#,
        )),
    ];
    // the plain base64 alphabet is not the UserSig alphabet; padding is not optional
    for variant in [
        sig.replace('*', "+").replace('-', "/").replace('_', "="),
        sig.trim_end_matches('_').to_owned(),
    ] {
        if variant != sig {
            cases.push(variant);
        }
    }
    for case in &cases {
        assert_eq!(decode(case), Err(VerifyError::Malformed), "{case:?}");
    }
    let doc = decode(&sig).unwrap();
    assert_eq!(decode(&reencode(&doc, "1.0")), Err(VerifyError::Malformed));
    assert_eq!(decode(&reencode(&doc, "2.0")), Ok(doc));
}

#[test]
fn decompression_is_bounded() {
    // A valid document padded with whitespace past the cap: a few hundred compressed bytes.
    let doc = decode(&generate(&key(), 1, "admin", 100, 60)).unwrap();
    let json = format!(
        r#"{{"TLS.ver":"2.0","TLS.identifier":"admin","TLS.sdkappid":1,"TLS.expire":60,"TLS.time":100,"TLS.sig":"{}"}}"#,
        doc.sig
    );
    let fits = format!("{json}{}", " ".repeat(MAX_DOCUMENT_BYTES - json.len()));
    assert_eq!(decode(&encode_raw(&zlib(fits.as_bytes()))), Ok(doc));
    let bomb = format!("{fits} ");
    let compressed = zlib(bomb.as_bytes());
    assert!(compressed.len() < 1024);
    assert_eq!(
        decode(&encode_raw(&compressed)),
        Err(VerifyError::Malformed)
    );
    let big_bomb = zlib(&vec![b' '; 16 * 1024 * 1024]);
    assert_eq!(decode(&encode_raw(&big_bomb)), Err(VerifyError::Malformed));
}

fn sig_char() -> impl Strategy<Value = char> {
    proptest::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-_+/="
            .chars()
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #[test]
    fn generated_sigs_verify(
        identifier in any::<String>(),
        sdkappid in any::<u64>(),
        time in any::<u64>(),
        expire in any::<u64>(),
        userbuf in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
    ) {
        let sig = generate_with_userbuf(&key(), sdkappid, &identifier, time, expire, userbuf.as_deref());
        let doc = verify(&key(), &sig, sdkappid, &identifier, time).unwrap();
        prop_assert_eq!(&doc.identifier, &identifier);
        prop_assert_eq!((doc.sdkappid, doc.time, doc.expire), (sdkappid, time, expire));
        prop_assert_eq!(doc.userbuf, userbuf);
        prop_assert_eq!(verify(&key(), &sig, sdkappid, &identifier, time.saturating_add(expire)).is_ok(), true);
        if let Some(late) = time.checked_add(expire).and_then(|end| end.checked_add(1)) {
            prop_assert_eq!(verify(&key(), &sig, sdkappid, &identifier, late), Err(VerifyError::Expired));
        }
    }

    #[test]
    fn another_key_identifier_or_sdkappid_fails(
        identifier in any::<String>(),
        other_identifier in any::<String>(),
        sdkappid in any::<u64>(),
        other_sdkappid in any::<u64>(),
        other_key in "[ -~]{1,80}",
    ) {
        let sig = generate(&key(), sdkappid, &identifier, 1_700_000_000, 3600);
        let now = 1_700_000_000;
        if other_identifier != identifier {
            prop_assert_eq!(verify(&key(), &sig, sdkappid, &other_identifier, now), Err(VerifyError::IdentifierMismatch));
        }
        if other_sdkappid != sdkappid {
            prop_assert_eq!(verify(&key(), &sig, other_sdkappid, &identifier, now), Err(VerifyError::SdkAppIdMismatch));
        }
        let other_key = SecretKey::new(&other_key);
        if let Ok(other_key) = other_key {
            if other_key_differs(&other_key) {
                prop_assert_eq!(verify(&other_key, &sig, sdkappid, &identifier, now), Err(VerifyError::BadSignature));
            }
        }
    }

    #[test]
    fn a_changed_sig_string_fails(
        identifier in "[ -~]{0,40}",
        at in any::<prop::sample::Index>(),
        replacement in sig_char(),
    ) {
        let sig = generate(&key(), 1400000000, &identifier, 1_700_000_000, 3600);
        let at = at.index(sig.len());
        prop_assume!(sig.as_bytes()[at] != replacement as u8);
        let mut changed = sig.clone().into_bytes();
        changed[at] = replacement as u8;
        let changed = String::from_utf8(changed).unwrap();
        let original = decode(&sig).unwrap();
        match verify(&key(), &changed, 1400000000, &identifier, 1_700_000_000) {
            // A deflate stream ends in padding bits that every inflater ignores: flipping
            // only those re-encodes the very same document, which is not a forgery.
            Ok(doc) => prop_assert_eq!(doc, original),
            Err(VerifyError::Malformed) => prop_assert!(decode(&changed).is_err()),
            // Adler-32 is weak enough that a changed stream can inflate to a different,
            // well-formed document. Its claims may then differ, but they must never verify.
            Err(_) => {
                let forged = decode(&changed).unwrap();
                prop_assert_ne!(&forged, &original);
                prop_assert_eq!(
                    verify(&key(), &changed, forged.sdkappid, &forged.identifier, forged.time),
                    Err(VerifyError::BadSignature)
                );
            }
        }
    }

    #[test]
    fn a_changed_signature_field_fails(
        flip_at in 0usize..32,
        bit in 0u8..8,
    ) {
        let sig = generate(&key(), 1, "admin", 100, 60);
        let mut doc = decode(&sig).unwrap();
        let mut mac = STANDARD.decode(&doc.sig).unwrap();
        mac[flip_at] ^= 1 << bit;
        doc.sig = STANDARD.encode(&mac);
        prop_assert_eq!(verify(&key(), &reencode(&doc, "2.0"), 1, "admin", 100), Err(VerifyError::BadSignature));
    }

    #[test]
    fn a_changed_claim_fails(which in 0usize..3, delta in 1u64..1000) {
        let sig = generate(&key(), 1, "admin", 100, 60);
        let mut doc = decode(&sig).unwrap();
        match which {
            0 => doc.time += delta,
            1 => doc.expire += delta,
            _ => doc.identifier.push('x'),
        }
        let forged = reencode(&doc, "2.0");
        prop_assert_eq!(verify(&key(), &forged, 1, &doc.identifier, doc.time), Err(VerifyError::BadSignature));
    }

    #[test]
    fn decode_never_panics(text in any::<String>()) {
        let _ = decode(&text);
    }

    #[test]
    fn decode_never_panics_on_sig_alphabet(text in proptest::collection::vec(sig_char(), 0..400)) {
        let _ = decode(&text.into_iter().collect::<String>());
    }

    #[test]
    fn decode_never_panics_on_any_zlib_payload(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&encode_raw(&zlib(&bytes)));
        let _ = decode(&encode_raw(&bytes));
    }
}

fn other_key_differs(other: &SecretKey) -> bool {
    let probe = generate(other, 1, "probe", 1, 1);
    verify(&key(), &probe, 1, "probe", 1).is_err()
}
