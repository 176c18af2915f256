//! Logging setup from `log:`: level, `text` or `json` lines, and `log.fields` added to every
//! line (the seed sets `service: registry`).

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogConfig;

/// Wraps a line formatter and adds fixed fields: as a `k=v` prefix to text lines, as leading
/// members of JSON objects.
pub struct WithFields<F> {
    inner: F,
    json: bool,
    text: String,
    json_members: String,
}

impl<F> WithFields<F> {
    /// Wrap `inner`, adding `fields`.
    pub fn new(inner: F, json: bool, fields: &std::collections::BTreeMap<String, String>) -> Self {
        let text = fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let json_members = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}:{}",
                    serde_json::Value::from(k.as_str()),
                    serde_json::Value::from(v.as_str())
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        WithFields {
            inner,
            json,
            text,
            json_members,
        }
    }

    /// Add the fields to one formatted line.
    fn decorate(&self, line: &str) -> String {
        if self.json && !self.json_members.is_empty() {
            if let Some(rest) = line.strip_prefix('{') {
                let sep = if rest.trim_start().starts_with('}') {
                    ""
                } else {
                    ","
                };
                return format!("{{{}{sep}{rest}", self.json_members);
            }
        } else if !self.json && !self.text.is_empty() {
            return format!("{} {line}", self.text);
        }
        line.to_string()
    }
}

impl<S, N, F> FormatEvent<S, N> for WithFields<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&self.decorate(&line))
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        // actix logs a client's malformed or oversized request head at ERROR; it is the
        // client's fault and already answered (431, 400, closed), so any client could fill the
        // log with ERROR lines: silenced unless RUST_LOG asks for it.
        .or_else(|_| {
            EnvFilter::try_new(format!(
                "{},openraft=warn,actix_http::h1::dispatcher=off",
                config.level
            ))
        })
        .map_err(|e| format!("log.level: {e}"))?;
    let json = config.formatter == "json";
    let ansi = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = if json {
        let format = tracing_subscriber::fmt::format().json();
        builder
            .event_format(WithFields::new(format, true, &config.fields))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .try_init()
    } else {
        let format = tracing_subscriber::fmt::format();
        builder
            .event_format(WithFields::new(format, false, &config.fields))
            .try_init()
    };
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_decorate_text_and_json() {
        let fields = [("service".to_string(), "registry".to_string())].into();
        let text = WithFields::new((), false, &fields);
        assert_eq!(text.decorate("INFO hello\n"), "service=registry INFO hello\n");
        let json = WithFields::new((), true, &fields);
        let line = json.decorate("{\"level\":\"INFO\",\"message\":\"hi\"}\n");
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["service"], "registry");
        assert_eq!(v["message"], "hi");
        let empty = WithFields::new((), true, &Default::default());
        assert_eq!(empty.decorate("{}"), "{}");
    }
}
