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

/// Python's `", "` between members and between array elements.
fn comma_unless_first<W: ?Sized + Write>(writer: &mut W, first: bool) -> io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
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
        comma_unless_first(writer, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        comma_unless_first(writer, first)
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
mod tests;
