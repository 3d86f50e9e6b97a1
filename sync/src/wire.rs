//! The envelope: `[PROTOCOL_VERSION] ++ CBOR(frame)`, one WebSocket binary frame each.
//!
//! Decoding never panics, and memory follows the bytes actually received: the length is checked
//! against `max_frame_bytes` before anything is parsed, the version byte next, then the CBOR
//! (ciborium reads byte strings in 4 KiB pieces, and serde caps what a header claiming a huge
//! array can pre-allocate at 1 MiB), and trailing bytes after the frame are an error.

use crate::protocol::{Frame, ManifestEntry, PROTOCOL_VERSION, ProtocolError};

/// Encodes `frame` into one binary WebSocket frame. Refuses ([`ProtocolError::FrameTooLarge`])
/// a frame longer than `max_frame_bytes`: the peer would refuse it anyway.
pub fn encode_frame(frame: &Frame, max_frame_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = vec![PROTOCOL_VERSION];
    ciborium::ser::into_writer(frame, &mut bytes)
        .map_err(|err| ProtocolError::Encode(err.to_string()))?;
    if bytes.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            bytes: bytes.len(),
            max_bytes: max_frame_bytes,
        });
    }
    Ok(bytes)
}

/// Decodes one binary WebSocket frame. The length is checked first (a frame longer than
/// `max_frame_bytes` is refused without looking at it), then the version byte, then the CBOR.
pub fn decode_frame(bytes: &[u8], max_frame_bytes: usize) -> Result<Frame, ProtocolError> {
    if bytes.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge {
            bytes: bytes.len(),
            max_bytes: max_frame_bytes,
        });
    }
    let (&version, mut body) = bytes.split_first().ok_or(ProtocolError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::WrongVersion { found: version });
    }
    let frame: Frame = ciborium::de::from_reader(&mut body)
        .map_err(|err| ProtocolError::Decode(err.to_string()))?;
    if !body.is_empty() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after the frame",
            body.len()
        )));
    }
    Ok(frame)
}

/// Splits a manifest into as few [`Frame::Manifest`] frames as fit `max_frame_bytes` each (every
/// frame but the last has `more: true`). Always at least one frame, so an empty manifest is still
/// sent. Fails only if a single entry does not fit a frame on its own.
pub fn manifest_frames(
    docs: Vec<ManifestEntry>,
    max_frame_bytes: usize,
) -> Result<Vec<Frame>, ProtocolError> {
    // Fixed part: the envelope of a manifest with no entries and `more: true`, plus the largest
    // array header CBOR can need (9 bytes) instead of the 1-byte header of an empty array.
    let empty = Frame::Manifest {
        docs: Vec::new(),
        more: true,
    };
    let fixed = encode_frame(&empty, usize::MAX)?.len() + 8;
    let mut frames = Vec::new();
    let mut current: Vec<ManifestEntry> = Vec::new();
    let mut size = fixed;
    for entry in docs {
        let mut entry_bytes = Vec::new();
        ciborium::ser::into_writer(&entry, &mut entry_bytes)
            .map_err(|err| ProtocolError::Encode(err.to_string()))?;
        if fixed + entry_bytes.len() > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge {
                bytes: fixed + entry_bytes.len(),
                max_bytes: max_frame_bytes,
            });
        }
        if size + entry_bytes.len() > max_frame_bytes {
            frames.push(Frame::Manifest {
                docs: std::mem::take(&mut current),
                more: true,
            });
            size = fixed;
        }
        size += entry_bytes.len();
        current.push(entry);
    }
    frames.push(Frame::Manifest {
        docs: current,
        more: false,
    });
    Ok(frames)
}

/// `#[serde(with = "crate::wire::serde_bytes")]` for `Vec<u8>`: a CBOR byte string (serde's
/// default would be an array of integers, up to twice the size). Also accepts an array of
/// integers, so the same types read JSON written for logs or tests.
pub(crate) mod serde_bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // The size hint comes from the peer: cap what is reserved up front.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element::<u8>()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;
    use crate::protocol::{Credential, DocumentKey, Head, codes};
    use ulid::Ulid;

    const MAX: usize = 64 * 1024;

    fn conv(n: u128) -> DocumentKey {
        DocumentKey::Conversation(ConversationId::from_ulid(Ulid(n)))
    }

    /// One of every frame (and of every optional field both ways).
    fn every_frame() -> Vec<Frame> {
        vec![
            Frame::Hello {
                store_id: "store-42".into(),
                region: "eu-west".into(),
                credential: Credential("c2VjcmV0".into()),
                edge_version: "0.1.0".into(),
            },
            Frame::Welcome {
                region: "eu-west".into(),
                hub_id: "hub-eu-west-1".into(),
                resolved_retention_secs: 0,
            },
            Frame::Welcome {
                region: "eu-west".into(),
                hub_id: "hub-eu-west-1".into(),
                resolved_retention_secs: 31_536_000,
            },
            Frame::Erase {
                docs: vec![conv(1), conv(2)],
            },
            Frame::Refused {
                code: codes::WRONG_REGION.into(),
                message: "store-42 belongs to us-east".into(),
            },
            Frame::Manifest {
                docs: vec![
                    (conv(1), vec![Head([0xab; 32])]),
                    (conv(2), vec![Head([1; 32]), Head([2; 32])]),
                    (DocumentKey::settings("store-42").expect("key"), vec![]),
                ],
                more: false,
            },
            Frame::Manifest {
                docs: vec![],
                more: true,
            },
            Frame::Sync {
                doc: conv(1),
                message: vec![0x42, 0, 1, 2, 255],
            },
            Frame::Sync {
                doc: conv(1),
                message: vec![],
            },
            Frame::Ack {
                doc: conv(1),
                heads: vec![Head([7; 32])],
            },
            Frame::Ping,
            Frame::Pong,
            Frame::Error {
                code: codes::BAD_FRAME.into(),
                message: "no".into(),
                doc: None,
            },
            Frame::Error {
                code: codes::FOREIGN_DOCUMENT.into(),
                message: "created twice".into(),
                doc: Some(conv(3)),
            },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in every_frame() {
            let bytes = encode_frame(&frame, MAX).expect("encode");
            assert_eq!(bytes[0], PROTOCOL_VERSION);
            assert_eq!(decode_frame(&bytes, MAX).expect("decode"), frame);
        }
    }

    #[test]
    fn frames_are_cbor_maps_with_a_type() {
        let bytes = encode_frame(&Frame::Ping, MAX).expect("encode");
        // 0x01 version, 0xa1 map(1), 0x64 "type", 0x64 "ping"
        assert_eq!(bytes, b"\x01\xa1\x64type\x64ping");
        let sync = encode_frame(
            &Frame::Sync {
                doc: conv(1),
                message: vec![9; 3],
            },
            MAX,
        )
        .expect("encode");
        // The message is a byte string (0x43 = bytes(3)), not an array of integers.
        assert!(sync.ends_with(b"\x67message\x43\x09\x09\x09"));
    }

    /// The worked examples of docs/sync-protocol.md, byte for byte in size.
    #[test]
    fn documented_example_sizes() {
        let key: DocumentKey = "conversation:01J9ZK3M4X8Q2W5T7V6B0C1D2E"
            .parse()
            .expect("key");
        let head = Head([0xc9; 32]);
        let size = |frame: Frame| encode_frame(&frame, MAX).expect("encode").len();
        assert_eq!(
            size(Frame::Hello {
                store_id: "store-0042".into(),
                region: "eu-west".into(),
                credential: Credential("k7Q2pX9vLm3sT8wR4yZ1bN6cD0fH5jG2aE7uI9oP3qW".into()),
                edge_version: "0.1.0".into(),
            }),
            123
        );
        assert_eq!(
            size(Frame::Welcome {
                region: "eu-west".into(),
                hub_id: "hub-eu-west-1".into(),
                resolved_retention_secs: 0,
            }),
            51
        );
        assert_eq!(
            size(Frame::Refused {
                code: codes::WRONG_REGION.into(),
                message: "store-0042 is enrolled in us-east".into(),
            }),
            76
        );
        assert_eq!(
            size(Frame::Manifest {
                docs: vec![
                    (key.clone(), vec![head]),
                    (
                        DocumentKey::settings("store-0042").expect("key"),
                        vec![head]
                    ),
                ],
                more: false,
            }),
            155
        );
        assert_eq!(
            size(Frame::Manifest {
                docs: vec![],
                more: false,
            }),
            22
        );
        // The envelope around an Automerge message: 67 bytes for a conversation key.
        assert_eq!(
            size(Frame::Sync {
                doc: key.clone(),
                message: vec![0; 74],
            }),
            141
        );
        assert_eq!(
            size(Frame::Ack {
                doc: key.clone(),
                heads: vec![head],
            }),
            97
        );
        assert_eq!(size(Frame::Ping), 12);
        assert_eq!(
            size(Frame::Error {
                code: codes::FOREIGN_DOCUMENT.into(),
                message: "the conversation was created twice".into(),
                doc: Some(key),
            }),
            124
        );
    }

    #[test]
    fn wrong_version_is_a_typed_error() {
        let mut bytes = encode_frame(&Frame::Ping, MAX).expect("encode");
        for v in [0u8, 2, 0xff] {
            bytes[0] = v;
            assert!(matches!(
                decode_frame(&bytes, MAX),
                Err(ProtocolError::WrongVersion { found }) if found == v
            ));
        }
        assert!(matches!(decode_frame(&[], MAX), Err(ProtocolError::Empty)));
    }

    #[test]
    fn truncated_garbage_and_trailing_bytes_are_decode_errors() {
        for frame in every_frame() {
            let bytes = encode_frame(&frame, MAX).expect("encode");
            for cut in 1..bytes.len() {
                assert!(
                    matches!(
                        decode_frame(&bytes[..cut], MAX),
                        Err(ProtocolError::Decode(_))
                    ),
                    "{frame:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                decode_frame(&longer, MAX),
                Err(ProtocolError::Decode(_))
            ));
        }
        // Deep nesting: array of array of ... (past ciborium's recursion limit).
        let mut deep = vec![PROTOCOL_VERSION];
        deep.extend([0x81; 2000]);
        let cases: [&[u8]; 9] = [
            b"\x01",
            b"\x01\xff",
            b"\x01not cbor at all",
            // A map without "type", an unknown type, a missing field.
            b"\x01\xa0",
            b"\x01\xa1\x64type\x64nope",
            b"\x01\xa1\x64type\x64sync",
            // Byte string / array headers claiming 2^63 elements.
            b"\x01\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
            b"\x01\xa2\x64type\x68manifest\x64docs\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",
            &deep,
        ];
        for case in cases {
            assert!(
                matches!(decode_frame(case, MAX), Err(ProtocolError::Decode(_))),
                "{case:?}"
            );
        }
        // A head of the wrong length, a bad document key.
        let mut bad_head = Vec::new();
        bad_head.push(PROTOCOL_VERSION);
        ciborium::ser::into_writer(
            &serde_json::json!({"type": "ack", "doc": conv(1).to_string(), "heads": [[1, 2]]}),
            &mut bad_head,
        )
        .expect("encode");
        assert!(matches!(
            decode_frame(&bad_head, MAX),
            Err(ProtocolError::Decode(_))
        ));
        let mut bad_key = Vec::new();
        bad_key.push(PROTOCOL_VERSION);
        ciborium::ser::into_writer(
            &serde_json::json!({"type": "ack", "doc": "inventory:1", "heads": []}),
            &mut bad_key,
        )
        .expect("encode");
        assert!(matches!(
            decode_frame(&bad_key, MAX),
            Err(ProtocolError::Decode(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap deterministic generator: any outcome but a panic is fine.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let mut bytes = vec![PROTOCOL_VERSION];
            for _ in 0..(len % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let _ = decode_frame(&bytes, MAX);
        }
    }

    #[test]
    fn oversize_frames_are_refused_before_decoding() {
        // Garbage, but too long: the length is the error, not the content.
        let big = vec![0xffu8; 1001];
        assert!(matches!(
            decode_frame(&big, 1000),
            Err(ProtocolError::FrameTooLarge {
                bytes: 1001,
                max_bytes: 1000
            })
        ));
        let frame = Frame::Sync {
            doc: conv(1),
            message: vec![0; 2000],
        };
        assert!(matches!(
            encode_frame(&frame, 1000),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        let bytes = encode_frame(&frame, MAX).expect("encode");
        assert!(decode_frame(&bytes, bytes.len()).is_ok());
        assert!(matches!(
            decode_frame(&bytes, bytes.len() - 1),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn manifests_split_to_fit_frames() {
        let docs: Vec<ManifestEntry> = (0..100u128)
            .map(|n| (conv(n), vec![Head([n as u8; 32])]))
            .collect();
        let frames = manifest_frames(docs.clone(), 1000).expect("split");
        assert!(frames.len() > 1);
        let mut seen = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let bytes = encode_frame(frame, 1000).expect("each part fits");
            let Frame::Manifest { docs, more } = decode_frame(&bytes, 1000).expect("decode") else {
                panic!("not a manifest");
            };
            assert_eq!(more, i + 1 < frames.len());
            seen.extend(docs);
        }
        assert_eq!(seen, docs);

        let one = manifest_frames(docs.clone(), MAX).expect("fits");
        assert_eq!(one.len(), 1);
        assert_eq!(manifest_frames(vec![], 100).expect("empty").len(), 1);
        assert!(matches!(
            manifest_frames(docs, 60),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }
}
