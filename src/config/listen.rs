//! `--listen` specs: `FORMAT+PROTO://HOST:PORT[?option=value&...]`, for example
//! `graphite+tcp://0.0.0.0:2003` or `raw+tcp://127.0.0.1:7070?key=first_token&name=app`.
//!
//! Options: `name`, `key`, `value`, `time`, `max_line_bytes`, `max_connections`,
//! `idle_timeout` (a duration, `0` for none); which of
//! `key`, `value` and `time` a format takes is checked with the rest of the configuration.

use super::values::{ByteSize, parse_duration_ms, resolve_addr};
use super::{Error, Format, ListenerConfig, Proto};
use crate::limits;

/// Parses one listen spec into a listener (unnamed unless `?name=` is given).
pub fn parse_listen_spec(spec: &str) -> Result<ListenerConfig, Error> {
    let bad = |message: String| Error::ListenSpec {
        spec: spec.to_string(),
        message,
    };
    let (scheme, rest) = spec
        .split_once("://")
        .ok_or_else(|| bad("expected FORMAT+PROTO://HOST:PORT".into()))?;
    let (format, proto) = scheme.split_once('+').ok_or_else(|| {
        bad(format!(
            "`{scheme}` should be FORMAT+PROTO, e.g. graphite+tcp"
        ))
    })?;
    let format = Format::from_name(format).ok_or_else(|| {
        bad(format!(
            "unknown format `{format}` (raw, graphite, statsd, syslog, influx, json, logfmt)"
        ))
    })?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(bad(format!("unknown protocol `{other}` (tcp, udp)"))),
    };
    let (addr, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let addr = resolve_addr(addr).map_err(bad)?;
    let mut listener = ListenerConfig::new("", proto, addr, format);
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("option `{pair}` needs a value")))?;
        match k {
            "name" => listener.name = v.to_string(),
            "key" => {
                let keys: Vec<String> = v.split(',').map(str::to_string).collect();
                if keys.iter().any(String::is_empty) {
                    return Err(bad("empty key field in `key=`".into()));
                }
                listener.options.key = Some(keys);
            }
            "value" => listener.options.value = Some(v.to_string()),
            "time" => listener.options.time = Some(v.to_string()),
            "strict" => {
                listener.options.strict = Some(
                    v.parse()
                        .map_err(|_| bad(format!("strict `{v}` is not true or false")))?,
                );
            }
            "max_line_bytes" => {
                let n = ByteSize::parse(v).map_err(bad)?.0;
                if n == 0 || n > u64::from(limits::LINE_BYTES_MAX) {
                    return Err(bad(format!(
                        "max_line_bytes must be 1..={}",
                        limits::LINE_BYTES_MAX
                    )));
                }
                listener.max_line_bytes = n as u32;
            }
            "max_connections" => {
                listener.max_connections = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(format!("max_connections `{v}` is not a positive number"))
                })?;
            }
            "idle_timeout" => listener.idle_timeout = parse_duration_ms(v).map_err(bad)?,
            other => return Err(bad(format!("unknown option `{other}`"))),
        }
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_syslog_is_a_listener_option() {
        let l = parse_listen_spec("syslog+tcp://127.0.0.1:5140?strict=true").unwrap();
        assert_eq!(l.options.strict, Some(true));
    }

    #[test]
    fn specs_from_the_design() {
        let l = parse_listen_spec("graphite+tcp://0.0.0.0:2003").unwrap();
        assert_eq!(
            (l.format, l.proto, l.addr.port()),
            (Format::Graphite, Proto::Tcp, 2003)
        );
        let l = parse_listen_spec(
            "json+tcp://127.0.0.1:7070?key=service,status&value=latency_ms&time=ts",
        )
        .unwrap();
        assert_eq!(l.format, Format::Json);
        assert_eq!(l.options.key, Some(vec!["service".into(), "status".into()]));
        assert_eq!(l.options.value.as_deref(), Some("latency_ms"));
        assert_eq!(l.options.time.as_deref(), Some("ts"));
        for (name, format) in [("influx", Format::Influx), ("logfmt", Format::Logfmt)] {
            let l = parse_listen_spec(&format!("{name}+udp://127.0.0.1:0")).unwrap();
            assert_eq!(l.format, format);
        }
        let l = parse_listen_spec("statsd+udp://localhost:8125").unwrap();
        assert_eq!(l.addr, "127.0.0.1:8125".parse().unwrap());
        let l =
            parse_listen_spec("raw+tcp://127.0.0.1:0?key=first_token&name=app&max_line_bytes=1KiB")
                .unwrap();
        assert_eq!(l.name, "app");
        assert_eq!(l.max_line_bytes, 1024);
        assert_eq!(l.options.key, Some(vec!["first_token".into()]));
    }

    #[test]
    fn idle_timeout_takes_a_duration_and_zero_means_none() {
        let l = parse_listen_spec("raw+tcp://127.0.0.1:0").unwrap();
        let default = std::time::Duration::from_millis(limits::IDLE_TIMEOUT_MS_DEFAULT);
        assert_eq!(l.idle_timeout(), Some(default));
        let l = parse_listen_spec("raw+tcp://127.0.0.1:0?idle_timeout=30s").unwrap();
        assert_eq!(l.idle_timeout(), Some(std::time::Duration::from_secs(30)));
        let l = parse_listen_spec("raw+tcp://127.0.0.1:0?idle_timeout=1500").unwrap();
        assert_eq!(
            l.idle_timeout(),
            Some(std::time::Duration::from_millis(1500))
        );
        let l = parse_listen_spec("raw+tcp://127.0.0.1:0?idle_timeout=0").unwrap();
        assert_eq!(l.idle_timeout(), None);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("graphite://x:1", "FORMAT+PROTO"),
            ("nope+tcp://127.0.0.1:1", "unknown format"),
            ("raw+sctp://127.0.0.1:1", "unknown protocol"),
            ("raw+tcp://127.0.0.1", "bad address"),
            ("raw+tcp://127.0.0.1:1?colour=red", "unknown option"),
            ("raw+tcp://127.0.0.1:1?max_connections=0", "max_connections"),
            ("syslog+tcp://127.0.0.1:1?strict=maybe", "strict"),
            ("raw+tcp://127.0.0.1:1?idle_timeout=soon", "bad duration"),
        ] {
            let err = parse_listen_spec(spec).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains(spec), "{spec}: {err}");
        }
    }
}
