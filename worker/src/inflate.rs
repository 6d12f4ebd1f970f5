//! Record-batch payloads decompressed under a bound. A client chooses what
//! it compresses: a megabyte of zstd can stand for gigabytes, so every
//! decompression the worker does for a client's batch (checking a
//! compacted topic's keys, cleaning, the HTTP API's reads, transforms'
//! inputs) stops at [`MAX_INFLATED`] bytes and fails there.

use std::io::Read;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

/// Most bytes one batch's records may decompress to.
pub const MAX_INFLATED: usize = 64 << 20;

/// The xerial framing Kafka's snappy batches use.
const SNAPPY_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// `body` decompressed with `codec` (a batch's attributes & 7), at most
/// `cap` bytes of it.
pub fn decompress(codec: i16, body: &[u8], cap: usize) -> Result<Bytes, String> {
    let over = || format!("records decompress to more than {cap} bytes");
    let read_all = |r: &mut dyn Read| -> Result<Bytes, String> {
        let mut out = Vec::new();
        r.take(cap as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("decompressing: {e}"))?;
        if out.len() > cap {
            return Err(over());
        }
        Ok(Bytes::from(out))
    };
    match codec {
        0 if body.len() > cap => Err(over()),
        0 => Ok(Bytes::copy_from_slice(body)),
        1 => read_all(&mut flate2::read::GzDecoder::new(body)),
        2 => snappy(body, cap).map_err(|e| e.unwrap_or_else(over)),
        3 => read_all(&mut lz4::Decoder::new(body).map_err(|e| format!("lz4: {e}"))?),
        4 => {
            read_all(&mut zstd::stream::read::Decoder::new(body).map_err(|e| format!("zstd: {e}"))?)
        }
        c => Err(format!("unknown codec {c}")),
    }
}

/// Snappy, xerial-framed (blocks of `u32` length and raw snappy) or raw, as
/// Kafka's clients write it; each block's length is checked before it is
/// decoded. `Err(None)`: over `cap`.
fn snappy(mut body: &[u8], cap: usize) -> Result<Bytes, Option<String>> {
    let bad = |e: snap::Error| Some(format!("snappy: {e}"));
    let mut out = BytesMut::new();
    let block = |b: &[u8], out: &mut BytesMut| {
        let n = snap::raw::decompress_len(b).map_err(bad)?;
        if out.len() + n > cap {
            return Err(None);
        }
        let at = out.len();
        out.resize(at + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[at..])
            .map_err(bad)?;
        Ok(())
    };
    if !body.starts_with(SNAPPY_MAGIC) {
        block(body, &mut out)?;
        return Ok(out.freeze());
    }
    body.advance(SNAPPY_MAGIC.len());
    while body.has_remaining() {
        if body.remaining() < 4 {
            return Err(Some("snappy: a truncated block length".into()));
        }
        let n = body.get_u32() as usize;
        if body.remaining() < n {
            return Err(Some("snappy: a truncated block".into()));
        }
        block(&body[..n], &mut out)?;
        body.advance(n);
    }
    Ok(out.freeze())
}

/// `plain` compressed with `codec`, as Kafka's clients would.
pub fn compress(codec: i16, plain: &[u8]) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    let copy = |p: &mut BytesMut| {
        p.extend_from_slice(plain);
        Ok(())
    };
    let r = match codec {
        0 => return Ok(Bytes::copy_from_slice(plain)),
        1 => Gzip::compress(&mut out, copy),
        2 => Snappy::compress(&mut out, copy),
        3 => Lz4::compress(&mut out, copy),
        4 => Zstd::compress(&mut out, copy),
        c => return Err(format!("unknown codec {c}")),
    };
    r.map_err(|e| format!("compressing: {e}"))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_stops_at_the_bound() {
        let plain = vec![7u8; 100_000];
        for codec in 0..=4 {
            let packed = compress(codec, &plain).expect("compresses");
            let back = decompress(codec, &packed, 100_000).expect("decompresses");
            assert_eq!(&back[..], &plain[..], "codec {codec}");
            if codec > 0 {
                assert!(packed.len() < 10_000, "codec {codec} compresses");
            }
            let err = decompress(codec, &packed, 99_999).expect_err("over the bound");
            assert!(err.contains("more than 99999"), "codec {codec}: {err}");
        }
        // Raw snappy, without the xerial framing.
        let raw = snap::raw::Encoder::new()
            .compress_vec(&plain)
            .expect("compresses");
        assert_eq!(&decompress(2, &raw, 100_000).expect("raw")[..], &plain[..]);
        assert!(decompress(2, &raw, 10).is_err());
        assert!(decompress(1, b"not gzip", 100).is_err());
    }
}
