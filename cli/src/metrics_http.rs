//! `kxgw serve --metrics-listen`: the counters as Prometheus text over HTTP.

use std::sync::Arc;

use anyhow::{Context, Result};
use kxgw::metrics::Metrics;

/// Serves `GET /metrics` over HTTP on `addr` (Prometheus scrapers).
pub fn serve_http(addr: &str, metrics: Arc<Metrics>) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("binding the metrics listener {addr}: {e}"))?;
    log::info!("metrics: Prometheus text on http://{addr}/metrics");
    std::thread::Builder::new()
        .name("kxgw-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" {
                    let ctype = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4"[..],
                    )
                    .ok();
                    let mut r = tiny_http::Response::from_string(metrics.render());
                    if let Some(h) = ctype {
                        r.add_header(h);
                    }
                    r
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                if let Err(e) = req.respond(resp) {
                    log::debug!("metrics: response failed: {e}");
                }
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}
