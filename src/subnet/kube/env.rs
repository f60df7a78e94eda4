//! flannel's kube-mode environment variables: `EVENT_QUEUE_DEPTH` and
//! `CONT_WHEN_CACHE_NOT_READY`, parsed as flannel parses them.
//!
//! `EVENT_QUEUE_DEPTH` is the capacity of the store→agent channel. weft's
//! channel is lossless and ordered: when it is full the node watcher waits
//! (back-pressure) instead of flannel's asynchronous requeue, so the value
//! only bounds how many updates are buffered.

/// flannel's default `EVENT_QUEUE_DEPTH`.
pub const DEFAULT_EVENT_QUEUE_DEPTH: usize = 5000;

/// `EVENT_QUEUE_DEPTH` as flannel reads it: unset or empty → 5000; not an
/// integer → `env EVENT_QUEUE_DEPTH=<v> format error: <Go's strconv.Atoi error>`;
/// zero or negative → 5000.
pub fn event_queue_depth(value: Option<&str>) -> Result<usize, String> {
    let Some(text) = value.filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_EVENT_QUEUE_DEPTH);
    };
    match text.parse::<i64>() {
        Ok(n) if n <= 0 => Ok(DEFAULT_EVENT_QUEUE_DEPTH),
        Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(e) => {
            use std::num::IntErrorKind::{NegOverflow, PosOverflow};
            let why = match e.kind() {
                PosOverflow | NegOverflow => "value out of range",
                _ => "invalid syntax",
            };
            Err(format!(
                "env EVENT_QUEUE_DEPTH={text} format error: strconv.Atoi: parsing {text:?}: {why}"
            ))
        }
    }
}

/// `CONT_WHEN_CACHE_NOT_READY`: only the exact text `true` enables it (flannel compares strings).
pub fn cont_when_cache_not_ready(value: Option<&str>) -> bool {
    value == Some("true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_parses_like_flannel() {
        assert_eq!(event_queue_depth(None), Ok(5000));
        assert_eq!(event_queue_depth(Some("")), Ok(5000));
        assert_eq!(event_queue_depth(Some("12")), Ok(12));
        assert_eq!(event_queue_depth(Some("+12")), Ok(12));
        assert_eq!(event_queue_depth(Some("0")), Ok(5000));
        assert_eq!(event_queue_depth(Some("-3")), Ok(5000));
        assert_eq!(
            event_queue_depth(Some("abc")),
            Err(
                "env EVENT_QUEUE_DEPTH=abc format error: strconv.Atoi: parsing \"abc\": invalid syntax"
                    .into()
            )
        );
        assert_eq!(
            event_queue_depth(Some("99999999999999999999")),
            Err("env EVENT_QUEUE_DEPTH=99999999999999999999 format error: strconv.Atoi: parsing \"99999999999999999999\": value out of range".into())
        );
        assert!(event_queue_depth(Some(" 5")).is_err());
    }

    #[test]
    fn cont_only_for_exact_true() {
        assert!(cont_when_cache_not_ready(Some("true")));
        assert!(!cont_when_cache_not_ready(Some("TRUE")));
        assert!(!cont_when_cache_not_ready(Some("1")));
        assert!(!cont_when_cache_not_ready(None));
    }
}
