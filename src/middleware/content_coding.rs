//! Request bodies a caller compressed (`Content-Encoding: gzip` or `deflate`, as HTTP clients
//! with request compression send them): decoded before validation, so the rules see, and
//! Tencent gets, plain JSON. The coding is read from the headers before the body (a coding
//! the gateway cannot decode is named in the answer instead of being reported as bytes that
//! are not JSON); the body layer marks the request with it, and [`Decode`] decodes after the
//! shed layer, so only requests holding an in-flight permit spend memory and CPU on it. The
//! decoded body is held to `max_body_bytes` like any other: a small body that inflates to
//! gigabytes stops at the limit, with no more than that in memory.

use std::io::Read;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use flate2::{Decompress, FlushDecompress, Status};
use http::header::{HeaderMap, CONTENT_ENCODING, TRANSFER_ENCODING};
use http::Request;

use super::check::Check;
use crate::error::GatewayError;

/// A content coding the gateway decodes; also the request extension the body layer leaves on
/// a body read as it came, for [`Decode`].
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

/// The decoded body: at most `max` bytes, or `BodyTooLarge`. Decoding stops as soon as the
/// output passes `max`, and the output buffer never grows past `max + 1` bytes, so a bomb
/// costs at most that much memory. Bytes after the end of the compressed data (or a stream
/// that stops before its end) are refused for every coding alike: they are not part of the
/// body the caller compressed.
pub fn decode(coding: Coding, body: &[u8], max: usize) -> Result<Bytes, GatewayError> {
    let result =
        match coding {
            Coding::Gzip => gunzip(body, max),
            Coding::Deflate => match inflate(body, true, max) {
                Ok(plain) => Ok(plain),
                // Some clients send a raw deflate stream as `deflate`. When both fail, the error
                // named is that of the form the body's first bytes claim.
                Err(zlib) => inflate(body, false, max).map_err(|raw| {
                    if looks_like_zlib(body) {
                        zlib
                    } else {
                        raw
                    }
                }),
            },
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

/// Decodes a body the body layer marked with its [`Coding`]; placed under the shed layer.
#[derive(Debug, Clone, Copy)]
pub struct Decode {
    max_bytes: usize,
}

impl Decode {
    pub fn new(max_bytes: usize) -> Self {
        Decode { max_bytes }
    }
}

impl Check<Bytes> for Decode {
    fn check(&self, req: &mut Request<Bytes>) -> Result<(), GatewayError> {
        if let Some(coding) = req.extensions_mut().remove::<Coding>() {
            let plain = decode(coding, req.body(), self.max_bytes)?;
            *req.body_mut() = plain;
        }
        Ok(())
    }
}

/// A zlib header: compression method 8 and a check value that divides by 31 (RFC 1950).
fn looks_like_zlib(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// The next size of an output buffer holding `len` bytes: double, at least 8 KiB, at most
/// `max + 1` (one byte past the limit is enough to know the body is too large).
fn grown(len: usize, max: usize) -> usize {
    len.saturating_mul(2)
        .max(8 << 10)
        .min(max.saturating_add(1))
}

/// A zlib (or, without the header, raw deflate) stream, decoded to its end: `None` once it
/// gives more than `max` bytes.
fn inflate(body: &[u8], zlib_header: bool, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut stream = Decompress::new(zlib_header);
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() > max {
            return Ok(None);
        }
        if out.len() == out.capacity() {
            out.reserve_exact(grown(out.len(), max) - out.len());
        }
        let consumed = usize::try_from(stream.total_in()).unwrap_or(usize::MAX);
        let input = body.get(consumed..).unwrap_or_default();
        let before = (stream.total_in(), stream.total_out());
        let status = stream
            .decompress_vec(input, &mut out, FlushDecompress::None)
            .map_err(|e| e.to_string())?;
        match status {
            Status::StreamEnd => break,
            // No progress with room to write: the input ended before the stream did.
            _ if before == (stream.total_in(), stream.total_out()) => {
                return Err("the compressed data ends before its end marker".into())
            }
            _ => {}
        }
    }
    if out.len() > max {
        return Ok(None);
    }
    if usize::try_from(stream.total_in()).unwrap_or(usize::MAX) < body.len() {
        return Err("bytes follow the end of the compressed data".into());
    }
    Ok(Some(out))
}

/// One gzip member or more, to their end (the decoder refuses bytes after the last member
/// and a member cut short): `None` once it gives more than `max` bytes.
fn gunzip(body: &[u8], max: usize) -> Result<Option<Vec<u8>>, String> {
    read_capped(MultiGzDecoder::new(body), max).map_err(|e| e.to_string())
}

/// Everything the reader gives, or `None` once it gives more than `max` bytes; the buffer
/// grows to at most `max + 1` bytes.
fn read_capped(mut reader: impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(Some(out)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if out.len().saturating_add(n) > max {
            return Ok(None);
        }
        if out.capacity() - out.len() < n {
            let size = grown(out.len(), max).max(out.len() + n);
            out.reserve_exact(size - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
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
    fn a_raw_deflate_or_zlib_bomb_stops_at_the_limit_with_a_bounded_buffer() {
        let spaces = vec![b' '; 10 << 20];
        for (name, bomb) in [("raw", raw_deflate(&spaces)), ("zlib", zlib(&spaces))] {
            assert!(bomb.len() < 20 << 10, "{name}: {}", bomb.len());
            assert!(
                matches!(
                    decode(Coding::Deflate, &bomb, 64 << 10),
                    Err(GatewayError::BodyTooLarge { limit }) if limit == 64 << 10
                ),
                "{name}"
            );
            let zlib_header = name == "zlib";
            let plain = inflate(&bomb[..], zlib_header, 1 << 20).expect("decodes");
            assert!(plain.is_none(), "{name}: over the limit");
        }
        // Exactly at the limit: the buffer never held more than max + 1 bytes.
        let exact = raw_deflate(&[b'x'; 100_000]);
        let plain = inflate(&exact, false, 100_000)
            .expect("decodes")
            .expect("fits");
        assert_eq!(plain.len(), 100_000);
        assert!(plain.capacity() <= 100_001, "{}", plain.capacity());
        let plain = read_capped(MultiGzDecoder::new(&gzip(&[b'x'; 100_000])[..]), 100_000)
            .expect("decodes")
            .expect("fits");
        assert!(plain.capacity() <= 100_001, "{}", plain.capacity());
    }

    #[test]
    fn bytes_after_the_compressed_data_or_a_cut_stream_are_refused_for_every_coding() {
        let plain = br#"{"GroupId":"g"}"#;
        for (coding, name, compressed) in [
            (Coding::Gzip, "gzip", gzip(plain)),
            (Coding::Deflate, "zlib", zlib(plain)),
            (Coding::Deflate, "raw deflate", raw_deflate(plain)),
        ] {
            assert_eq!(
                decode(coding, &compressed, 1024).ok().as_deref(),
                Some(&plain[..]),
                "{name}"
            );
            let mut trailing = compressed.clone();
            trailing.extend_from_slice(b"garbage");
            let e = info(decode(coding, &trailing, 1024).expect_err(name));
            assert!(e.contains("not valid"), "{name}: {e}");
            let cut = &compressed[..compressed.len() - 3];
            assert!(decode(coding, cut, 1024).is_err(), "{name}: cut");
        }
        let mut trailing = zlib(plain);
        trailing.push(0);
        let e = info(decode(Coding::Deflate, &trailing, 1024).expect_err("zlib"));
        assert!(e.contains("bytes follow the end"), "{e}");
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
