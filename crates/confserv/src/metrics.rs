//! Prometheus metrics over HTTP (`GET /metrics`), served on `--metrics-listen` when given, by a
//! master and a proxy alike.
//!
//! Every scrape reads the server's status ([`status_of`], what `tandem cfg status` shows) and
//! its [`Activity`](crate::state::Activity) counters, and encodes them with prometheus-client,
//! so the figures cannot drift from the status. A labelled state (role, proxy mode,
//! configuration mode) is exported with every value it can take, 1 for the current one and 0
//! for the others, so that no series appears or vanishes when the state changes.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::record::Mode;
use crate::service::{status_of, Backend};
use crate::state::{LinkMode, Shared};

/// The content type of the text served.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the metrics of one server are read from.
#[derive(Clone)]
pub struct Source {
    /// The configuration in memory and the activity counters.
    shared: Arc<Shared>,
    /// The master or the proxy (role, link).
    backend: Backend,
}

impl Source {
    /// The metrics of the server made of `shared` and `backend`.
    pub fn new(shared: Arc<Shared>, backend: Backend) -> Source {
        Source { shared, backend }
    }
}

/// Registers `name{label="…"}` for each of `values`: 1 for `current`, 0 for the others.
fn one_of(registry: &mut Registry, name: &str, help: &str, label: &'static str, values: &[&str], current: &str) {
    let family: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    for value in values {
        let labels = vec![(label, (*value).to_owned())];
        family.get_or_create(&labels).set(i64::from(*value == current));
    }
    registry.register(name, help, family);
}

/// Registers the gauge `name` at `value`.
fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Gauge = Gauge::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

/// The metrics text of the server now.
pub fn render(source: &Source) -> Result<String, std::fmt::Error> {
    let status = status_of(&source.shared, &source.backend);
    let activity = &source.shared.activity;
    let mut registry = Registry::with_prefix("tandem_confserv");
    let roles: &[&str] = match source.backend {
        Backend::Master(_) => &["starting", "backup", "primary"],
        Backend::Proxy(_) => &["proxy"],
    };
    one_of(
        &mut registry,
        "role",
        "This server's role: a master's starting, backup or primary; or proxy",
        "role",
        roles,
        &status.role,
    );
    let modes = [Mode::Normal, Mode::ReadOnly, Mode::Emergency].map(Mode::name);
    one_of(
        &mut registry,
        "config_mode",
        "The configuration's mode: normal, read_only or emergency",
        "mode",
        &modes,
        &status.mode,
    );
    if let Backend::Proxy(_) = source.backend {
        let modes = [LinkMode::Starting, LinkMode::Normal, LinkMode::Limited].map(LinkMode::name);
        one_of(
            &mut registry,
            "proxy_mode",
            "This proxy's mode: starting (nothing loaded yet), normal (attached to the primary master) or \
             limited (no master reachable: writes are refused)",
            "mode",
            &modes,
            &status.proxy_mode,
        );
        let changes: Counter = Counter::default();
        changes.inc_by(activity.proxy_mode_changes.load(Ordering::Relaxed));
        registry.register(
            "proxy_mode_changes",
            "Changes of this proxy's mode since it started (the first attachment included)",
            changes,
        );
    } else {
        gauge(
            &mut registry,
            "replication_links",
            "Proxies following this master now",
            activity.replication_links.get(),
        );
        gauge(
            &mut registry,
            "fencing_token",
            "The fencing token of the master lease while this master is the primary (0 otherwise)",
            status.fencing_token,
        );
    }
    gauge(
        &mut registry,
        "last_seq",
        "The last notification number applied",
        status.last_seq,
    );
    gauge(
        &mut registry,
        "history_oldest_seq",
        "The oldest number after which a client can still resume from the history",
        status.history_oldest_seq,
    );
    gauge(&mut registry, "objects", "Objects held in memory", status.objects);
    gauge(
        &mut registry,
        "subscribers",
        "Subscriptions open now",
        activity.subscribers.get(),
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

async fn scrape(State(source): State<Source>) -> Response {
    match render(&source) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    source: Source,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", get(scrape)).with_state(source);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Proxy, ProxyConfig};

    #[test]
    fn a_starting_proxy_exports_every_mode_with_the_current_one_at_1() {
        let proxy = Proxy::new(ProxyConfig::new("p", "127.0.0.1:1", Vec::new(), "admin", "pw")).unwrap();
        let source = Source::new(proxy.shared.clone(), Backend::Proxy(proxy.clone()));
        let text = render(&source).unwrap();
        for line in [
            "tandem_confserv_role{role=\"proxy\"} 1",
            "tandem_confserv_proxy_mode{mode=\"starting\"} 1",
            "tandem_confserv_proxy_mode{mode=\"normal\"} 0",
            "tandem_confserv_proxy_mode{mode=\"limited\"} 0",
            "tandem_confserv_config_mode{mode=\"normal\"} 1",
            "tandem_confserv_proxy_mode_changes_total 0",
            "tandem_confserv_last_seq 0",
            "tandem_confserv_subscribers 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("replication_links"),
            "a master's metric on a proxy:\n{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
