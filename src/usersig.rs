//! UserSig version 2 (TLS sig, HMAC-SHA256) as Tencent Cloud Chat checks it: generate, decode, verify.
//! Pure functions: no I/O and no clock reads, the caller passes the time in.

use std::fmt;
use std::io::{self, Write};

use base64::alphabet::Alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use flate2::write::ZlibEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The only document version this module understands (and the only one it writes).
const VERSION: &str = "2.0";

/// Largest inflated document accepted by [`decode`]; real ones are a few hundred bytes, and the
/// cap keeps a small compressed input from expanding into a lot of memory.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The outer encoding: standard base64 with `+` and `/` replaced by `*` and `-`. Padding (`=`,
/// written as `_`) is handled around the engine because the padding byte is not configurable.
const SIG_ALPHABET: Alphabet =
    match Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-") {
        Ok(alphabet) => alphabet,
        Err(_) => panic!("invalid UserSig alphabet"),
    };

/// Strict on decode (canonical padding, no stray trailing bits) so one document has one spelling.
const SIG_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &SIG_ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// The app's secret key. Debug prints `SecretKey(<redacted>)`; there is no way to print it.
///
/// Only the prepared HMAC state is kept: it is what every signature starts from, and cloning it
/// per signature is cheaper than keying a new HMAC each time.
#[derive(Clone)]
pub struct SecretKey(HmacSha256);

/// [`SecretKey::new`] was given nothing but whitespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the secret key is empty")]
pub struct EmptyKey;

impl SecretKey {
    /// The key's bytes exactly as given (the hex text's ASCII bytes, not decoded). Leading and
    /// trailing ASCII whitespace (e.g. a trailing newline from a Secret file) is trimmed.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, EmptyKey> {
        let bytes = bytes.as_ref().trim_ascii();
        if bytes.is_empty() {
            return Err(EmptyKey);
        }
        // HMAC takes keys of any length, so the empty key is the only error there is.
        HmacSha256::new_from_slice(bytes)
            .map(SecretKey)
            .map_err(|_| EmptyKey)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A decoded UserSig. `userbuf` holds the decoded bytes of `TLS.userbuf` when the sig has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigDocument {
    pub ver: String,
    pub identifier: String,
    pub sdkappid: u64,
    pub time: u64,
    pub expire: u64,
    pub userbuf: Option<Vec<u8>>,
    pub sig: String,
}

/// Why a UserSig was refused. The texts never include the sig, the key or the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the UserSig could not be decoded")]
    Malformed,
    #[error("the UserSig was issued for another SDKAppID")]
    SdkAppIdMismatch,
    #[error("the UserSig was issued for another identifier")]
    IdentifierMismatch,
    #[error("the UserSig has expired")]
    Expired,
    #[error("the UserSig's signature does not match")]
    BadSignature,
}

impl VerifyError {
    /// The ErrorCode Tencent answers with for the same failure.
    pub fn error_code(self) -> u32 {
        match self {
            VerifyError::Malformed => 70003,
            VerifyError::SdkAppIdMismatch => 70014,
            VerifyError::IdentifierMismatch => 70013,
            VerifyError::Expired => 70001,
            VerifyError::BadSignature => 70009,
        }
    }
}

/// A UserSig for `identifier`, valid from `time` (Unix seconds) for `expire` seconds.
pub fn generate(
    key: &SecretKey,
    sdkappid: u64,
    identifier: &str,
    time: u64,
    expire: u64,
) -> String {
    generate_with_userbuf(key, sdkappid, identifier, time, expire, None)
}

/// Like [`generate`], with an optional userbuf (signed, and carried base64-encoded in the sig).
pub fn generate_with_userbuf(
    key: &SecretKey,
    sdkappid: u64,
    identifier: &str,
    time: u64,
    expire: u64,
    userbuf: Option<&[u8]>,
) -> String {
    let userbuf = userbuf.map(|buf| STANDARD.encode(buf));
    let sig = sign(key, identifier, sdkappid, time, expire, userbuf.as_deref());
    let doc = OutDocument {
        ver: VERSION,
        identifier,
        sdkappid,
        expire,
        time,
        userbuf: userbuf.as_deref(),
        sig: &sig,
    };
    // Both writers are in memory, so neither serialising nor compressing has a way to fail.
    let compressed = compress(&doc).expect("in-memory zlib compression cannot fail");
    let mut out = SIG_ENGINE.encode(compressed);
    let padding = out.len() - out.trim_end_matches('=').len();
    out.truncate(out.len() - padding);
    for _ in 0..padding {
        out.push('_');
    }
    out
}

/// Decodes a UserSig without checking it. Anything that is not a version 2 document is
/// [`VerifyError::Malformed`].
pub fn decode(usersig: &str) -> Result<SigDocument, VerifyError> {
    // `=` is not part of the outer alphabet (the official libraries write padding as `_`);
    // refusing it keeps each document to one spelling, as the engine does for `+` and `/`.
    if usersig.contains('=') {
        return Err(VerifyError::Malformed);
    }
    let text = usersig.replace('_', "=");
    let compressed = SIG_ENGINE
        .decode(&text)
        .map_err(|_| VerifyError::Malformed)?;
    let json = inflate_bounded(&compressed)?;
    let doc: InDocument = serde_json::from_slice(&json).map_err(|_| VerifyError::Malformed)?;
    if doc.ver != VERSION {
        return Err(VerifyError::Malformed);
    }
    let userbuf = match doc.userbuf {
        Some(text) => Some(STANDARD.decode(text).map_err(|_| VerifyError::Malformed)?),
        None => None,
    };
    Ok(SigDocument {
        ver: doc.ver,
        identifier: doc.identifier,
        sdkappid: doc.sdkappid,
        time: doc.time,
        expire: doc.expire,
        userbuf,
        sig: doc.sig,
    })
}

/// Decodes `usersig`, then checks the SDKAppID, the identifier, the expiry (expired when
/// `now > time + expire`) and finally the signature, in constant time. That is the official Go
/// library's order, so the same sig fails with the same ErrorCode here as at Tencent.
pub fn verify(
    key: &SecretKey,
    usersig: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<SigDocument, VerifyError> {
    let doc = decode(usersig)?;
    if doc.sdkappid != sdkappid {
        return Err(VerifyError::SdkAppIdMismatch);
    }
    if doc.identifier != identifier {
        return Err(VerifyError::IdentifierMismatch);
    }
    if now > doc.time.saturating_add(doc.expire) {
        return Err(VerifyError::Expired);
    }
    // Sign the userbuf as the document spells it, so that any base64 the decoder accepted is
    // signed byte for byte as the issuer signed it.
    let userbuf = doc.userbuf.as_ref().map(|buf| STANDARD.encode(buf));
    let expected = sign(
        key,
        &doc.identifier,
        doc.sdkappid,
        doc.time,
        doc.expire,
        userbuf.as_deref(),
    );
    if bool::from(expected.as_bytes().ct_eq(doc.sig.as_bytes())) {
        Ok(doc)
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Standard base64 of HMAC-SHA256 over the text Tencent signs (each line ends in `\n`).
fn sign(
    key: &SecretKey,
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
    userbuf_base64: Option<&str>,
) -> String {
    let mut mac = key.0.clone();
    let mut text = MacWriter(&mut mac);
    // MacWriter never fails, so the results carry nothing.
    let _ = write_text(
        &mut text,
        identifier,
        sdkappid,
        time,
        expire,
        userbuf_base64,
    );
    STANDARD.encode(mac.finalize().into_bytes())
}

fn write_text(
    out: &mut impl fmt::Write,
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
    userbuf_base64: Option<&str>,
) -> fmt::Result {
    write!(
        out,
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    )?;
    if let Some(userbuf) = userbuf_base64 {
        writeln!(out, "TLS.userbuf:{userbuf}")?;
    }
    Ok(())
}

/// Feeds formatted text straight into the HMAC, so signing allocates nothing.
struct MacWriter<'a>(&'a mut HmacSha256);

impl fmt::Write for MacWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// The document as written: field order and spacing as the official Python library writes them,
/// so that the output is byte for byte what that library produces.
#[derive(Serialize)]
struct OutDocument<'a> {
    #[serde(rename = "TLS.ver")]
    ver: &'a str,
    #[serde(rename = "TLS.identifier")]
    identifier: &'a str,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.userbuf", skip_serializing_if = "Option::is_none")]
    userbuf: Option<&'a str>,
    #[serde(rename = "TLS.sig")]
    sig: &'a str,
}

#[derive(Deserialize)]
struct InDocument {
    #[serde(rename = "TLS.ver")]
    ver: String,
    #[serde(rename = "TLS.identifier")]
    identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.userbuf", default)]
    userbuf: Option<String>,
    #[serde(rename = "TLS.sig")]
    sig: String,
}

/// JSON serialised into a zlib stream at zlib's default level (6), as the official libraries do.
fn compress(doc: &OutDocument<'_>) -> io::Result<Vec<u8>> {
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(256), Compression::default());
    let mut serializer = serde_json::Serializer::with_formatter(&mut encoder, PythonStyle);
    doc.serialize(&mut serializer)?;
    encoder.finish()
}

/// Python's `json.dumps` defaults: `", "` and `": "` separators, and every character outside
/// printable ASCII escaped as `\uXXXX` (UTF-16, lower-case hex).
struct PythonStyle;

impl serde_json::ser::Formatter for PythonStyle {
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    // serde_json escapes quotes, backslashes and control characters itself, exactly as Python
    // does; what is left for here is DEL and everything beyond ASCII.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut plain_from = 0;
        for (at, ch) in fragment.char_indices() {
            if ch.is_ascii() && ch != '\x7f' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[plain_from..at])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            plain_from = at + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[plain_from..])
    }
}

/// Inflates a complete zlib stream (checksum included) of at most [`MAX_DOCUMENT_BYTES`], with
/// nothing after it.
fn inflate_bounded(compressed: &[u8]) -> Result<Vec<u8>, VerifyError> {
    // One byte of room past the cap lets a document of exactly the cap reach its stream end.
    const ROOM: usize = MAX_DOCUMENT_BYTES + 1;
    let mut inflater = Decompress::new(true);
    let mut out = Vec::with_capacity(512);
    loop {
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let rest = usize::try_from(in_before)
            .ok()
            .and_then(|consumed| compressed.get(consumed..))
            .ok_or(VerifyError::Malformed)?;
        let status = inflater
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|_| VerifyError::Malformed)?;
        if status == Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            if out.len() >= ROOM {
                return Err(VerifyError::Malformed);
            }
            out.reserve_exact(out.len().min(ROOM - out.len()));
        } else if inflater.total_in() == in_before && inflater.total_out() == out_before {
            // Room to write but nothing moved: the stream was cut short.
            return Err(VerifyError::Malformed);
        }
    }
    if out.len() > MAX_DOCUMENT_BYTES
        || usize::try_from(inflater.total_in()).ok() != Some(compressed.len())
    {
        return Err(VerifyError::Malformed);
    }
    Ok(out)
}

#[cfg(test)]
// A failed unwrap is a failed test, which is what it should be.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/vectors/usersig-v2.json"
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
}
