//! HTTP consumer instances (the REST API's v2 consumers), stored as
//! metadata keys of the tenant's shard log, so that no gateway holds them:
//! any gateway serves any instance. The state itself is the gateway's
//! (opaque bytes here); the worker only keeps it durable and swaps it
//! atomically. Keys are binary: `h/`, group length (u16 BE), group, name.

use bytes::{BufMut, Bytes, BytesMut};

const PREFIX: &[u8] = b"h/";

/// Every instance key of one group starts with this.
pub fn group_prefix(group: &str) -> Bytes {
    crate::offsets::keyed_by_group(PREFIX, group)
}

pub fn key(group: &str, name: &str) -> Bytes {
    let mut b = BytesMut::from(&group_prefix(group)[..]);
    b.put_slice(name.as_bytes());
    b.freeze()
}

/// The instance name a key of `group` holds.
pub fn parse_name(group: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(&group_prefix(group)[..])?;
    String::from_utf8(rest.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_within_their_group() {
        let k = key("g", "i-1");
        assert_eq!(parse_name("g", &k).as_deref(), Some("i-1"));
        // "g" + "2i" and "g2" + "i" differ: the group's length is in the key.
        assert_ne!(key("g", "2i"), key("g2", "i"));
        assert_eq!(parse_name("g2", &k), None);
    }
}
