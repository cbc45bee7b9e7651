//! Request bodies a caller compressed (`Content-Encoding: gzip` or `deflate`, as HTTP clients
//! with request compression send them): decoded when read, so the rules see, and Tencent
//! gets, plain JSON. The decoded body is held to `max_body_bytes` like any other, so a small
//! body that inflates to gigabytes stops at the limit. A coding the gateway cannot decode is
//! named in the answer instead of being reported as bytes that are not JSON.

use std::io::Read;

use bytes::Bytes;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::header::{HeaderMap, CONTENT_ENCODING, TRANSFER_ENCODING};

use crate::error::GatewayError;

/// A content coding the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate` is a zlib stream; a raw deflate stream, which some clients send
    /// under that name, is accepted too.
    Deflate,
}

/// The coding of a request body from its `Content-Encoding` headers, and from its
/// `Transfer-Encoding` past `chunked` (hyper undoes only that one): `None` without one (or
/// `identity`); an error for a coding the gateway does not decode, or for two codings applied
/// one over the other.
pub fn of(headers: &HeaderMap) -> Result<Option<Coding>, GatewayError> {
    let mut found = None;
    for (name, header) in [
        (CONTENT_ENCODING, "Content-Encoding"),
        (TRANSFER_ENCODING, "Transfer-Encoding"),
    ] {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else {
                return Err(GatewayError::InvalidJson(format!(
                    "the request body's {header} is not ASCII: send the body uncompressed, or with gzip or deflate"
                )));
            };
            for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let coding = if token.eq_ignore_ascii_case("identity")
                    || (header == "Transfer-Encoding" && token.eq_ignore_ascii_case("chunked"))
                {
                    continue;
                } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip")
                {
                    Coding::Gzip
                } else if token.eq_ignore_ascii_case("deflate") {
                    Coding::Deflate
                } else {
                    return Err(unsupported(header, token));
                };
                if found.replace(coding).is_some() {
                    return Err(GatewayError::InvalidJson(
                        "the request body has more than one coding (Content-Encoding, Transfer-Encoding): send it uncompressed, or compressed once with gzip or deflate".into(),
                    ));
                }
            }
        }
    }
    Ok(found)
}

fn unsupported(header: &str, coding: &str) -> GatewayError {
    // At most a short token of the caller's, and only printable ASCII of it.
    let shown: String = coding
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    GatewayError::InvalidJson(format!(
        "the request body's {header} {shown:?} is not supported: send it uncompressed, or with gzip or deflate"
    ))
}

/// The decoded body: at most `max` bytes, or `BodyTooLarge`.
pub fn decode(coding: Coding, body: &[u8], max: usize) -> Result<Bytes, GatewayError> {
    let result = match coding {
        Coding::Gzip => read_capped(MultiGzDecoder::new(body), max),
        Coding::Deflate => read_capped(ZlibDecoder::new(body), max)
            .or_else(|_| read_capped(DeflateDecoder::new(body), max)),
    };
    match result {
        Ok(Some(plain)) => Ok(Bytes::from(plain)),
        Ok(None) => Err(GatewayError::BodyTooLarge { limit: max }),
        Err(e) => Err(GatewayError::InvalidJson(format!(
            "the request body is not valid {} data ({e})",
            match coding {
                Coding::Gzip => "gzip",
                Coding::Deflate => "deflate",
            }
        ))),
    }
}

/// Everything the reader gives, or `None` once it gives more than `max` bytes.
fn read_capped(reader: impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader
        .take(u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)?;
    Ok((out.len() <= max).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, v.parse().expect("value"));
        }
        h
    }

    fn info(e: GatewayError) -> String {
        match e {
            GatewayError::InvalidJson(text) => text,
            other => panic!("not invalid_json: {other:?}"),
        }
    }

    #[test]
    fn codings_are_read_from_the_header() {
        assert_eq!(of(&headers(&[])).ok(), Some(None));
        assert_eq!(of(&headers(&["identity"])).ok(), Some(None));
        assert_eq!(of(&headers(&["GZIP"])).ok(), Some(Some(Coding::Gzip)));
        assert_eq!(of(&headers(&["x-gzip"])).ok(), Some(Some(Coding::Gzip)));
        assert_eq!(
            of(&headers(&["identity, deflate"])).ok(),
            Some(Some(Coding::Deflate))
        );
        let br = info(of(&headers(&["br"])).expect_err("br"));
        assert!(
            br.contains("Content-Encoding \"br\" is not supported"),
            "{br}"
        );
        let twice = info(of(&headers(&["gzip", "gzip"])).expect_err("twice"));
        assert!(twice.contains("more than one"), "{twice}");
        assert!(of(&headers(&["gzip, br"])).is_err());
        let mut te = HeaderMap::new();
        te.insert(TRANSFER_ENCODING, "gzip, chunked".parse().expect("value"));
        assert_eq!(of(&te).ok(), Some(Some(Coding::Gzip)));
        te.insert(TRANSFER_ENCODING, "chunked".parse().expect("value"));
        assert_eq!(of(&te).ok(), Some(None), "chunked alone is hyper's to undo");
        te.insert(CONTENT_ENCODING, "gzip".parse().expect("value"));
        te.insert(
            TRANSFER_ENCODING,
            "deflate, chunked".parse().expect("value"),
        );
        assert!(of(&te).is_err(), "two codings stacked");
        te.insert(
            TRANSFER_ENCODING,
            "compress, chunked".parse().expect("value"),
        );
        te.remove(CONTENT_ENCODING);
        let e = info(of(&te).expect_err("compress"));
        assert!(e.contains("Transfer-Encoding \"compress\""), "{e}");
        let mut latin1 = HeaderMap::new();
        latin1.insert(
            CONTENT_ENCODING,
            http::HeaderValue::from_bytes(b"gz\xe9").expect("value"),
        );
        let e = info(of(&latin1).expect_err("not ASCII"));
        assert!(e.contains("is not ASCII"), "{e}");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(
            bomb.len() < 20 << 10,
            "10 MB of spaces compress to {}",
            bomb.len()
        );
        assert!(matches!(
            decode(Coding::Gzip, &bomb, 64 << 10),
            Err(GatewayError::BodyTooLarge { limit }) if limit == 64 << 10
        ));
        let exact = gzip(&[b'x'; 100]);
        assert_eq!(
            decode(Coding::Gzip, &exact, 100).map(|b| b.len()).ok(),
            Some(100)
        );
        assert!(decode(Coding::Gzip, &exact, 99).is_err());
    }

    #[test]
    fn what_is_not_compressed_is_named() {
        let plain = br#"{"GroupId":"g"}"#;
        let e = info(decode(Coding::Gzip, plain, 1024).expect_err("plain as gzip"));
        assert!(e.contains("not valid gzip"), "{e}");
        let truncated = gzip(plain);
        let e = decode(Coding::Gzip, &truncated[..truncated.len() - 6], 1024);
        assert!(e.is_err(), "a cut gzip stream is refused");
    }

    proptest! {
        #[test]
        fn every_compressed_body_decodes_to_itself(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            for (coding, compressed) in [
                (Coding::Gzip, gzip(&data)),
                (Coding::Deflate, zlib(&data)),
                (Coding::Deflate, raw_deflate(&data)),
            ] {
                let plain = decode(coding, &compressed, 4096);
                prop_assert_eq!(plain.ok(), Some(Bytes::from(data.clone())));
            }
        }

        #[test]
        fn any_bytes_give_a_bounded_body_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..2048) {
            for coding in [Coding::Gzip, Coding::Deflate] {
                if let Ok(plain) = decode(coding, &data, max) {
                    prop_assert!(plain.len() <= max);
                }
            }
        }
    }
}
