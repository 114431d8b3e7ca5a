//! The delivery task of one HTTP stream (docs/flespi.md#streams, spec flespi-gw §6): one POST
//! in flight; its body a JSON array of up to `limit_messages` of the oldest queued messages
//! (the stored JSON documents joined, never re-encoded), `Content-Type: application/json`, the
//! stream's `headers`. A 200 answer removes the batch; anything else, a connection error or
//! `timeout` keeps it and tries again after a back-off doubling from 1 s to 60 s, logged in
//! the stream's log, `connected` false meanwhile. With `%ident%` in the URI each batch holds
//! one ident's oldest messages and goes to that ident's URL.
//!
//! The client is hyper-util's pooled client (one per stream, so connections are reused and
//! at most one is busy) with hyper-rustls on ring, its roots those of `tern-mqttc` (the
//! system bundle, or the stream's `ca`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};
use tern_store::MessageKey;

use crate::Gateway;
use crate::outbound;
use crate::stream::{IDENT, Stream, target_uri};

/// The first delay after a failure; doubled after each one up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The most of a receiver's answer read (the rest is not waited for).
const ANSWER_MAX: usize = 64 * 1024;
/// How long an idle connection to the receiver is kept for the next batch.
const IDLE: Duration = Duration::from_secs(90);

pub(crate) type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<outbound::Resolver>>, Full<Bytes>>;

/// The client of one stream: TLS by its `ca` or the system's roots (a plain `http://`
/// receiver needs neither).
fn client(s: &Stream, policy: outbound::OutboundPolicy) -> HttpsClient {
    https_client(s.ca(), s.timeout(), s.id, policy)
}

/// A pooled client (at most one idle connection per host) whose TLS trusts `ca` or the
/// system's roots, connecting within `timeout` to addresses `policy` allows (host names are
/// resolved and checked by `outbound::Resolver`); `owner` names the stream or webhook in logs.
/// Streams and webhooks share it.
pub(crate) fn https_client(
    ca: Option<&str>,
    timeout: Duration,
    owner: u64,
    policy: outbound::OutboundPolicy,
) -> HttpsClient {
    let options = tern_mqttc::TlsOptions {
        roots: match ca {
            Some(pem) => tern_mqttc::Roots::Pem(pem.as_bytes().to_vec()),
            None => tern_mqttc::Roots::System,
        },
        ..Default::default()
    };
    let tls = match tern_mqttc::tls_client_config(&options) {
        Ok(c) => (*c).clone(),
        Err(err) => {
            // https receivers fail the handshake then (logged per POST); http ones work.
            tracing::warn!(owner, %err, "no TLS roots for this stream or webhook");
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
        }
    };
    // Host names resolve to allowed addresses only (`[gw] outbound_private_targets`).
    let mut http = HttpConnector::new_with_resolver(outbound::Resolver::new(policy));
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE)
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// Why a POST did not deliver its batch.
enum Failed {
    Status(u16),
    Timeout,
    Error(String),
}

impl Failed {
    fn reason(&self) -> String {
        match self {
            Failed::Status(code) => format!("the receiver answered {code}"),
            Failed::Timeout => "timeout".into(),
            Failed::Error(e) => e.clone(),
        }
    }
}

/// One POST of `body` to `uri`, answered within `timeout`.
async fn post(
    client: &HttpsClient,
    s: &Stream,
    headers: &[(String, String)],
    uri: hyper::Uri,
    body: Bytes,
) -> Result<(), Failed> {
    let mut req = hyper::Request::post(uri).header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| Failed::Error(format!("the request: {e}")))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // A refused target says why in plain words; anything else as hyper tells it.
            match outbound::refusal_in(&e) {
                Some(refused) => Failed::Error(refused.to_string()),
                None => Failed::Error(format!("{e:?}")),
            }
        })?;
        let status = resp.status().as_u16();
        // Read the answer (bounded) so the connection can serve the next batch.
        let _ = Limited::new(resp.into_body(), ANSWER_MAX).collect().await;
        if status == 200 {
            Ok(())
        } else {
            Err(Failed::Status(status))
        }
    };
    match tokio::time::timeout(s.timeout(), exchange).await {
        Ok(done) => done,
        Err(_) => Err(Failed::Timeout),
    }
}

/// The next batch: its keys, its body, its URI's ident, and whether it is the oldest run of
/// the queue (removed by one range).
struct Batch {
    keys: Vec<MessageKey>,
    body: Bytes,
    ident: Option<String>,
    contiguous: bool,
}

/// The batch of `queued` (oldest first): all of them, or with `per_ident` the first one's
/// ident's.
fn batch(queued: Vec<(MessageKey, Bytes)>, per_ident: bool) -> Batch {
    let ident_of = |json: &Bytes| {
        serde_json::from_slice::<Map<String, Value>>(json)
            .ok()
            .and_then(|m| m.get("ident").and_then(Value::as_str).map(str::to_string))
    };
    let mut ident = None;
    let mut contiguous = true;
    let mut keys = Vec::with_capacity(queued.len());
    let mut body =
        BytesMut::with_capacity(queued.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
    body.put_u8(b'[');
    for (i, (key, json)) in queued.into_iter().enumerate() {
        if per_ident {
            let this = ident_of(&json);
            if i == 0 {
                ident = this;
            } else if this != ident {
                contiguous = false;
                continue;
            }
        }
        if !keys.is_empty() {
            body.put_u8(b',');
        }
        body.put_slice(&json);
        keys.push(key);
    }
    body.put_u8(b']');
    Batch {
        keys,
        body: body.freeze(),
        ident,
        contiguous,
    }
}

/// Delivers stream `s`'s queue until the task is stopped (the stream changed, was deleted or
/// disabled, or shutdown).
pub(crate) async fn run(
    gw: Arc<Gateway>,
    s: Stream,
    wake: Arc<tokio::sync::Notify>,
    connected: Arc<AtomicBool>,
) {
    let policy = gw.options.outbound;
    let client = client(&s, policy);
    let headers = s.headers();
    let per_ident = s.uri().contains(IDENT);
    let limit = s.limit_messages();
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let Some(queued) = gw.next_queued(s.id, limit, &wake, backoff).await else {
            return;
        };
        let b = batch(queued, per_ident);
        let uri = match target_uri(s.uri(), b.ident.as_deref()) {
            Ok(u) => u,
            Err(e) => {
                // An ident that makes no valid URI: its messages cannot go anywhere.
                tracing::warn!(stream = s.id, %e, "dropping a batch with no valid URI");
                gw.stream_dropped(&s, format!("no valid URI: {e}"), b.keys.len());
                gw.dequeue(s.id, &b.keys, b.contiguous).await;
                continue;
            }
        };
        let started = Instant::now();
        // hyper-util does not resolve a literal address: it is checked here (a stream made
        // before the switch was turned off, or an `%ident%` host).
        let allowed = outbound::check_literal(uri.host().unwrap_or(""), policy)
            .map_err(|e| Failed::Error(e.to_string()));
        let sent = match allowed {
            Ok(()) => post(&client, &s, &headers, uri, b.body).await,
            Err(refused) => Err(refused),
        };
        match sent {
            Ok(()) => {
                gw.dequeue(s.id, &b.keys, b.contiguous).await;
                backoff = BACKOFF_MIN;
                if failing {
                    failing = false;
                    gw.stream_resumed(&s, b.keys.len(), started.elapsed().as_secs_f64());
                }
                if !connected.swap(true, Ordering::Relaxed) {
                    gw.republish_stream(s.id, true);
                }
            }
            Err(why) => {
                failing = true;
                let http_code = match why {
                    Failed::Status(code) => Some(code),
                    _ => None,
                };
                gw.stream_failed(&s, why.reason(), b.keys.len(), http_code, backoff.as_secs());
                if connected.swap(false, Ordering::Relaxed) {
                    gw.republish_stream(s.id, false);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_join_the_stored_documents_and_keep_one_ident() {
        let k = |seq| MessageKey {
            ts: seq as i64,
            seq,
        };
        let m = |ident: &str| Bytes::from(format!("{{\"ident\":\"{ident}\"}}"));
        let all = batch(vec![(k(1), m("a")), (k(2), m("b")), (k(3), m("a"))], false);
        assert_eq!(all.keys.len(), 3);
        assert!(all.contiguous);
        let v: Value = serde_json::from_slice(&all.body).expect("JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(3));
        let one = batch(vec![(k(1), m("a")), (k(2), m("b")), (k(3), m("a"))], true);
        assert_eq!(one.ident.as_deref(), Some("a"));
        assert_eq!(one.keys, vec![k(1), k(3)]);
        assert!(!one.contiguous);
        assert_eq!(&one.body[..], b"[{\"ident\":\"a\"},{\"ident\":\"a\"}]");
    }
}
