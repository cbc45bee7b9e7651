//! An answer Tencent compressed although the gateway asked for `identity`: decoded here, once,
//! so that its `ErrorCode` is read, a shared call's answer can be split between its callers,
//! and every caller gets plain JSON. What does not decode is handed back as it came, with its
//! `Content-Encoding`, for the caller to make sense of.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH};

/// The plain body, and the header taken off, when the answer's one coding is gzip or deflate
/// and its bytes decode whole to at most `max` bytes; otherwise the body unchanged.
pub fn plain(headers: &mut HeaderMap, body: Bytes, max: usize) -> Bytes {
    let Some(coding) = headers.get(CONTENT_ENCODING) else {
        return body;
    };
    let decoded = match coding.as_bytes().to_ascii_lowercase().as_slice() {
        b"gzip" | b"x-gzip" => inflate(MultiGzDecoder::new(&body[..]), max),
        b"deflate" => inflate(ZlibDecoder::new(&body[..]), max)
            .or_else(|| inflate(DeflateDecoder::new(&body[..]), max)),
        _ => None,
    };
    match decoded {
        Some(plain) => {
            headers.remove(CONTENT_ENCODING);
            headers.remove(CONTENT_LENGTH);
            Bytes::from(plain)
        }
        None => body,
    }
}

/// Everything the decoder gives, when it is at most `max` bytes.
fn inflate<R: Read>(mut decoder: R, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut decoder).take(cap).read_to_end(&mut out).ok()?;
    (out.len() <= max).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use http::HeaderValue;

    use super::*;

    const JSON: &[u8] = br#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

    fn headers(coding: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        h
    }

    fn compressed(coding: &str) -> Vec<u8> {
        fn encode<W: Write>(mut w: W) -> W {
            w.write_all(JSON).expect("write");
            w
        }
        match coding {
            "gzip" => encode(GzEncoder::new(Vec::new(), Compression::default()))
                .finish()
                .expect("finish"),
            "zlib" => encode(ZlibEncoder::new(Vec::new(), Compression::default()))
                .finish()
                .expect("finish"),
            _ => encode(DeflateEncoder::new(Vec::new(), Compression::default()))
                .finish()
                .expect("finish"),
        }
    }

    #[test]
    fn gzip_and_both_deflates_come_out_plain_without_the_header() {
        for (header, stream) in [("gzip", "gzip"), ("deflate", "zlib"), ("deflate", "raw")] {
            let mut h = headers(header);
            let body = plain(&mut h, Bytes::from(compressed(stream)), 1024);
            assert_eq!(&body[..], JSON, "{header}/{stream}");
            assert!(h.get(CONTENT_ENCODING).is_none());
            assert!(
                h.get(CONTENT_LENGTH).is_none(),
                "the old length is wrong now"
            );
        }
    }

    #[test]
    fn what_does_not_decode_goes_back_as_it_came() {
        for (coding, body) in [
            ("gzip", b"\x1f\x8b-not-really-gzip".to_vec()),
            ("br", compressed("gzip")),
            ("gzip", compressed("gzip")),
        ] {
            let max = if coding == "gzip" && body.len() > 20 {
                4
            } else {
                1024
            };
            let mut h = headers(coding);
            let out = plain(&mut h, Bytes::from(body.clone()), max);
            assert_eq!(&out[..], &body[..], "{coding}");
            assert_eq!(h[CONTENT_ENCODING], coding);
        }
        let mut h = HeaderMap::new();
        assert_eq!(&plain(&mut h, Bytes::from_static(JSON), 4)[..], JSON);
    }
}
