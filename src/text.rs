//! Text forms that the CLI and the HTTP gateway share: durations as people write them
//! (`500ms`, `5m`) and as the CLI prints them back, values shown as text or JSON, and watch
//! events as JSON (`raftkv watch --json` and the gateway's `/watch` print the same objects).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::proto::v1 as pb;

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    let millis = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 5m or 1h"))?;
    Ok(Duration::from_millis(millis))
}

/// A duration as [`parse_duration`] reads it back, in the largest unit that is exact: `10s`,
/// `5m`, `1h`, `1500ms` (`0ms` for zero). Sub-millisecond parts are dropped.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    match millis {
        0 => "0ms".to_string(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// How values are shown to people and to scripts. The store holds arbitrary bytes, while the
/// CLI prints text lines and JSON strings, so every printing path goes through here.
pub mod values {
    use serde_json::{Map, Value};

    /// A value on one text line: itself when it is UTF-8 without line breaks or other control
    /// characters (tabs allowed); quoted with Rust-style escapes (`"a\nb"`) when it is UTF-8 with
    /// control characters, so a `key: value` line stays one line; `<N bytes, not UTF-8>` when it
    /// is not UTF-8 (use `--json` to get the bytes, base64-encoded).
    pub fn text(value: &[u8]) -> String {
        match std::str::from_utf8(value) {
            Ok(s) if s.chars().any(|c| c.is_control() && c != '\t') => format!("{s:?}"),
            Ok(s) => s.to_string(),
            Err(_) => format!("<{} bytes, not UTF-8>", value.len()),
        }
    }

    /// Adds `"value"` and `"encoding"` to a JSON object: the value as a string when it is valid
    /// UTF-8 (`"encoding":"utf8"`), else its standard base64 with padding
    /// (`"encoding":"base64"`). The encoding is always present so a script checks one field.
    pub fn insert_json(object: &mut Map<String, Value>, value: &[u8]) {
        let (text, encoding) = match std::str::from_utf8(value) {
            Ok(s) => (s.to_string(), "utf8"),
            Err(_) => (base64(value), "base64"),
        };
        object.insert("value".into(), Value::String(text));
        object.insert("encoding".into(), Value::String(encoding.into()));
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 (RFC 4648, with `=` padding). Written out here because the encoder is a
    /// dozen lines and the crate has no base64 dependency of its own.
    pub fn base64(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A watch event's type as printed: `PUT` or `DELETE`.
pub fn event_kind(event: &pb::WatchEvent) -> &'static str {
    match pb::watch_event::Kind::try_from(event.kind) {
        Ok(pb::watch_event::Kind::Delete) => "DELETE",
        _ => "PUT",
    }
}

/// A watch event as JSON: `{"type": "PUT"|"DELETE", "key", "value", "encoding", "revision",
/// "prev": {"value", "encoding", "revision"}}`; a DELETE has no value, and `prev` is there only
/// when the event carries the value it replaced or removed. Values as [`values::insert_json`].
pub fn event_json(event: &pb::WatchEvent) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), json!(event_kind(event)));
    object.insert("key".into(), json!(event.key));
    if event_kind(event) == "PUT" {
        values::insert_json(&mut object, &event.value);
    }
    object.insert("revision".into(), json!(event.revision));
    if let Some(prev) = &event.prev {
        let mut previous = Map::new();
        values::insert_json(&mut previous, &prev.value);
        previous.insert("revision".into(), json!(prev.revision));
        object.insert("prev".into(), Value::Object(previous));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_print_in_their_largest_exact_unit_and_read_back() {
        for (millis, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1500, "1500ms"),
            (10_000, "10s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (7_200_000, "2h"),
        ] {
            let duration = Duration::from_millis(millis);
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text).unwrap(), duration);
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(values::base64(plain.as_bytes()), encoded);
        }
        assert_eq!(values::base64(&[0x00, 0xff, 0xfe]), "AP/+");
    }

    #[test]
    fn watch_events_as_json() {
        let delete = pb::WatchEvent {
            kind: pb::watch_event::Kind::Delete as i32,
            key: "k".into(),
            revision: 9,
            prev: Some(pb::KeyValue {
                value: vec![0xff, 0x00],
                revision: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(event_kind(&delete), "DELETE");
        assert_eq!(
            event_json(&delete).to_string(),
            r#"{"key":"k","prev":{"encoding":"base64","revision":4,"value":"/wA="},"revision":9,"type":"DELETE"}"#
        );
    }

    #[test]
    fn values_as_text() {
        assert_eq!(values::text(b"plain\ttab"), "plain\ttab");
        assert_eq!(values::text(b"two\nlines"), "\"two\\nlines\"");
        assert_eq!(values::text(&[0xff, 0x00]), "<2 bytes, not UTF-8>");
    }
}
