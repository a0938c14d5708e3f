//! Which replica a log line comes from, when one process runs several
//! (`phxkv dev`, multi-replica tests).
//!
//! Everything a replica does runs inside its [`replica_span`]: its start-up,
//! the tasks it spawns (each spawned with `in_current_span`), its engine
//! thread and the HTTP requests it serves ([`in_replica_span`]). The JSON log
//! format lists that span with its name on every line; [`DevFormat`] turns it
//! into a coloured `n1 |` prefix, as process managers do. `phxkv serve` runs
//! one replica per process and creates no such span: its logs are already
//! one replica's.

use std::fmt;
use std::io::IsTerminal as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Instrument as _, Level, Span, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Name of the span that covers everything one replica does.
pub const REPLICA_SPAN: &str = "replica";

/// The span for the replica called `name`; run its start-up inside it.
pub fn replica_span(name: &str) -> Span {
    tracing::info_span!(REPLICA_SPAN, name = %name)
}

/// Axum middleware serving each request inside the replica's span, so the
/// handlers' log lines name the replica too. Install with
/// `axum::middleware::from_fn_with_state(span, in_replica_span)`.
pub async fn in_replica_span(State(span): State<Span>, req: Request, next: Next) -> Response {
    next.run(req).instrument(span).await
}

/// A replica's name, kept in its span's extensions by [`NameReplicas`].
struct ReplicaName(String);

/// Layer that remembers each replica span's name for [`DevFormat`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NameReplicas;

impl<S> Layer<S> for NameReplicas
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != REPLICA_SPAN {
            return;
        }
        let mut visitor = NameVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(name), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(ReplicaName(name));
        }
    }
}

struct NameVisitor(Option<String>);

impl Visit for NameVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "name" {
            // `%name` arrives as a Display wrapper whose Debug is its Display.
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// Colours for replica names, picked by name so a replica keeps its colour
/// across restarts.
const PALETTE: [&str; 6] = ["36", "35", "33", "32", "34", "91"];

/// Width of the name column; longer names are written whole.
const NAME_WIDTH: usize = 3;

/// Log lines for a terminal shared by several replicas:
/// `n2  | 22:50:37.419 INFO became master ballot=2.e92c6c2ccc5e063a`, the
/// name in a colour of its own. Lines from outside any replica carry `dev`.
#[derive(Debug, Clone, Copy)]
pub struct DevFormat {
    ansi: bool,
}

impl DevFormat {
    /// Colours only on a terminal, and never when `NO_COLOR` is set.
    pub fn for_stderr() -> Self {
        DevFormat {
            ansi: std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// Whether the lines carry colours.
    pub fn ansi(&self) -> bool {
        self.ansi
    }
}

/// The replica whose span `event` happened in, if any.
fn replica_of<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let scope = ctx.event_scope()?;
    for span in scope {
        if let Some(n) = span.extensions().get::<ReplicaName>() {
            return Some(n.0.clone());
        }
    }
    None
}

fn colour_of(name: &str) -> &'static str {
    let sum = name
        .bytes()
        .fold(0usize, |a, b| a.wrapping_add(usize::from(b)));
    PALETTE[sum % PALETTE.len()]
}

/// `HH:MM:SS.mmm` in UTC.
fn clock(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "31",
        Level::WARN => "33",
        Level::INFO => "32",
        Level::DEBUG => "34",
        Level::TRACE => "35",
    }
}

impl<S, N> FormatEvent<S, N> for DevFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let name = replica_of(ctx);
        let label = name.as_deref().unwrap_or("dev");
        let level = *event.metadata().level();
        let time = clock(SystemTime::now());
        if self.ansi {
            write!(
                writer,
                "\x1b[{}m{label:<NAME_WIDTH$}\x1b[0m | \x1b[2m{time}\x1b[0m \x1b[{}m{level:>5}\x1b[0m ",
                colour_of(label),
                level_colour(level),
            )?;
        } else {
            write!(writer, "{label:<NAME_WIDTH$} | {time} {level:>5} ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Collects what the formatter writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(format: DevFormat, f: impl FnOnce()) -> String {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::registry().with(NameReplicas).with(
            tracing_subscriber::fmt::layer()
                .with_ansi(format.ansi)
                .event_format(format)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn lines_carry_the_name_of_the_replica_they_come_from() {
        let out = lines(DevFormat { ansi: false }, || {
            tracing::info!("before any replica");
            let n1 = replica_span("n1");
            let n2 = replica_span("n2");
            n1.in_scope(|| tracing::info!(ballot = "2.ab", "became master"));
            n2.in_scope(|| {
                let inner = tracing::info_span!("request");
                inner.in_scope(|| tracing::warn!(peer = "n1", "snapshot refused"));
            });
        });
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got.len(), 3, "{out}");
        assert!(got[0].starts_with("dev | "), "{out}");
        assert!(got[0].ends_with(" INFO before any replica"), "{out}");
        assert!(got[1].starts_with("n1  | "), "{out}");
        assert!(
            got[1].ends_with(" INFO became master ballot=\"2.ab\""),
            "{out}"
        );
        assert!(got[2].starts_with("n2  | "), "{out}");
        assert!(
            got[2].ends_with(" WARN snapshot refused peer=\"n1\""),
            "{out}"
        );
    }

    #[test]
    fn colours_only_when_asked_and_stable_per_name() {
        let out = lines(DevFormat { ansi: true }, || {
            replica_span("n3").in_scope(|| tracing::info!("hello"));
        });
        assert!(
            out.starts_with(&format!("\x1b[{}mn3 \x1b[0m | ", colour_of("n3"))),
            "{out:?}"
        );
        assert_ne!(colour_of("n1"), colour_of("n2"));
        assert_ne!(colour_of("n2"), colour_of("n3"));
        assert_eq!(colour_of("n1"), colour_of("n1"));
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(86_400_000 * 3 + 3_723_045);
        assert_eq!(clock(t), "01:02:03.045");
    }
}
