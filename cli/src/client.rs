//! Connections to the controllers and the retry policy every command shares.
//!
//! [`Connection::call`] runs one RPC until it gets an answer, a non-retryable error, or the
//! overall deadline (`--timeout`) passes:
//!
//! * Retried: status `UNAVAILABLE`, status `DEADLINE_EXCEEDED`, a failed connection, and an
//!   attempt that got no answer within its own budget (a third of `--timeout`, at least 1s).
//! * Never retried: every other status (`NOT_FOUND`, `INVALID_ARGUMENT`, ...).
//! * Where to retry: the leader named by the `x-flotilla-leader` metadata of the failed answer
//!   when there is one, else the next endpoint of the configured list (round robin).
//! * Backoff between attempts: 50ms, doubling up to 1s.
//!
//! The request message is cloned for each attempt, so a mutating request keeps the same
//! `request_id` on every retry and the controller answers a duplicate with the original outcome.
//! The endpoint that answered last is remembered, so a command making several calls keeps
//! talking to the leader it found.
//!
//! A client-streaming call (an image upload) cannot be replayed by [`Connection::call`]: its
//! caller takes a channel from [`Connection::connect`] and reports the outcome with
//! [`Connection::answered`] / [`Connection::rejected`], deciding itself what it may retry.
//! Every channel sends HTTP/2 keepalive pings while a call is open, so a long transfer or a
//! long wait for an answer notices a controller or network that has gone away.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use crate::config::Settings;
use crate::error::{report, CliError};

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh idempotency key for one mutating RPC (reused on all of its retries).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Adds the scheme to an endpoint: kept when given (`http://` or `https://`), otherwise https
/// when TLS is configured, else http. Checks the result is a valid URI.
pub fn normalize_endpoint(raw: &str, tls: bool) -> Result<String, CliError> {
    let raw = raw.trim();
    let (scheme, rest) = match raw.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => ("http", rest),
            "https" if tls => ("https", rest),
            "https" => {
                return Err(CliError::Config(format!(
                    "endpoint `{raw}` uses https but no CA certificate is configured: set \
                     --cacert or FLOTILLA_CACERT"
                )))
            }
            _ => {
                return Err(CliError::Config(format!(
                    "endpoint `{raw}` has an unsupported scheme (use http:// or https://)"
                )))
            }
        },
        None if tls => ("https", raw),
        None => ("http", raw),
    };
    let rest = rest.trim_end_matches('/');
    let uri = format!("{scheme}://{rest}");
    match Endpoint::from_shared(uri.clone()) {
        Ok(e) if !rest.is_empty() && e.uri().host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err(CliError::Config(format!(
            "endpoint `{raw}` is not a valid address (expected HOST:PORT)"
        ))),
    }
}

/// How one attempt failed.
enum Failure {
    /// Try again (elsewhere), unless the deadline has passed.
    Retry { hint: Option<String>, error: String },
    /// Give up now.
    Fatal(CliError),
}

struct State {
    /// Next configured endpoint to try.
    cursor: usize,
    /// Address learnt from a leader hint or a successful answer, tried before the list.
    preferred: Option<String>,
    channels: HashMap<String, Channel>,
}

/// Connection settings plus the channels opened so far. Cheap to share by reference.
pub struct Connection {
    endpoints: Vec<String>,
    tls: Option<ClientTlsConfig>,
    auth: Option<MetadataValue<Ascii>>,
    timeout: Duration,
    state: Mutex<State>,
}

impl Connection {
    /// Reads the TLS files and prepares the authorization header; opens no connection yet.
    pub fn new(settings: &Settings) -> Result<Self, CliError> {
        if settings.endpoints.is_empty() {
            return Err(CliError::Config(
                "no controller endpoints configured".into(),
            ));
        }
        let tls = match &settings.tls {
            None => None,
            Some(files) => {
                let ca = read("CA certificate", &files.cacert)?;
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some((cert, key)) = &files.identity {
                    let cert = read("client certificate", cert)?;
                    let key = read("client key", key)?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
        };
        let auth = match &settings.token {
            None => None,
            Some(token) => Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(
                |_| {
                    CliError::Config("the token contains characters not allowed in a header".into())
                },
            )?),
        };
        Ok(Connection {
            endpoints: settings.endpoints.clone(),
            tls,
            auth,
            timeout: settings.timeout,
            state: Mutex::new(State {
                cursor: 0,
                preferred: None,
                channels: HashMap::new(),
            }),
        })
    }

    /// The same endpoints and TLS settings without the bearer token: `login` must work while
    /// the configured token is expired or revoked.
    pub fn without_token(&self) -> Connection {
        Connection {
            endpoints: self.endpoints.clone(),
            tls: self.tls.clone(),
            auth: None,
            timeout: self.timeout,
            state: Mutex::new(State {
                cursor: 0,
                preferred: None,
                channels: HashMap::new(),
            }),
        }
    }

    /// The overall deadline of one call, retries included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `rpc` with retries (see the module documentation). `rpc` gets a channel to the
    /// endpoint of this attempt and the request with its authorization metadata, e.g.
    /// `|ch, req| async move { IdentityServiceClient::new(ch).get_project(req).await }`.
    pub async fn call<Req, Resp, F, Fut>(&self, request: Req, mut rpc: F) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let attempt_timeout = (self.timeout / 3).max(MIN_ATTEMPT_TIMEOUT);
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let target = self.target();
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(attempt_timeout);
            let attempt = self.attempt(&target, budget, request.clone(), &mut rpc);
            let (hint, error) = match tokio::time::timeout(budget, attempt).await {
                Ok(Ok(response)) => {
                    self.answered(&target);
                    return Ok(response.into_inner());
                }
                Ok(Err(Failure::Fatal(err))) => return Err(err),
                Ok(Err(Failure::Retry { hint, error })) => (hint, error),
                Err(_elapsed) => (
                    None,
                    format!(
                        "no answer within {:.1}s [DEADLINE_EXCEEDED]",
                        budget.as_secs_f64()
                    ),
                ),
            };
            self.failed(&target, hint);
            if Instant::now() + backoff >= deadline {
                return Err(CliError::GaveUp {
                    elapsed: started.elapsed(),
                    attempts,
                    address: target,
                    last: error,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A channel to the endpoint the next call would use, moving on (round robin, with the
    /// usual backoff) past endpoints that cannot be reached, until `deadline`.
    pub async fn connect(&self, deadline: Instant) -> Result<(String, Channel), CliError> {
        let started = Instant::now();
        let attempt_timeout = (self.timeout / 3).max(MIN_ATTEMPT_TIMEOUT);
        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let target = self.target();
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(attempt_timeout);
            let error = match self.channel(&target, budget).await {
                Ok(channel) => return Ok((target, channel)),
                Err(Failure::Fatal(err)) => return Err(err),
                Err(Failure::Retry { error, .. }) => error,
            };
            self.failed(&target, None);
            if Instant::now() + backoff >= deadline {
                return Err(CliError::GaveUp {
                    elapsed: started.elapsed(),
                    attempts,
                    address: target,
                    last: error,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Adds the authorization metadata to a request sent on a channel from
    /// [`Connection::connect`].
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
    }

    /// `target` answered: later calls go there first.
    pub fn answered(&self, target: &str) {
        self.lock().preferred = Some(target.to_string());
    }

    /// A call to `target` failed with `status`: the next call goes to the leader the answer
    /// names, if any (returned), else to the next configured endpoint.
    pub fn rejected(&self, target: &str, status: &Status) -> Option<String> {
        let hint = self.leader_hint(status);
        self.failed(target, hint.clone());
        hint
    }

    async fn attempt<Req, Resp, F, Fut>(
        &self,
        target: &str,
        budget: Duration,
        request: Req,
        rpc: &mut F,
    ) -> Result<Response<Resp>, Failure>
    where
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let channel = self.channel(target, budget).await?;
        let mut request = Request::new(request);
        self.authorize(&mut request);
        rpc(channel, request).await.map_err(|status| {
            if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                Failure::Retry {
                    hint: self.leader_hint(&status),
                    error: report(&CliError::Status(status)),
                }
            } else {
                Failure::Fatal(CliError::Status(status))
            }
        })
    }

    /// The cached channel to `target`, or a new connection.
    async fn channel(&self, target: &str, budget: Duration) -> Result<Channel, Failure> {
        if let Some(channel) = self.lock().channels.get(target) {
            return Ok(channel.clone());
        }
        let mut endpoint = Endpoint::from_shared(target.to_string())
            .map_err(|_| Failure::Fatal(CliError::Config(format!("invalid endpoint `{target}`"))))?
            .connect_timeout(budget)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        if target.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                Failure::Fatal(CliError::Config(format!(
                    "endpoint `{target}` uses https but no CA certificate is configured"
                )))
            })?;
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                Failure::Fatal(CliError::Config(format!(
                    "invalid TLS settings: {}",
                    report(&e)
                )))
            })?;
        }
        let channel = endpoint.connect().await.map_err(|e| Failure::Retry {
            hint: None,
            error: format!("cannot connect: {}", report(&e)),
        })?;
        self.lock()
            .channels
            .insert(target.to_string(), channel.clone());
        Ok(channel)
    }

    /// The leader address carried by a failed answer, normalized like a configured endpoint.
    fn leader_hint(&self, status: &Status) -> Option<String> {
        let value = status
            .metadata()
            .get(flotilla_proto::LEADER_METADATA_KEY)?
            .to_str()
            .ok()?
            .trim();
        if value.is_empty() {
            return None;
        }
        normalize_endpoint(value, self.tls.is_some()).ok()
    }

    fn target(&self) -> String {
        let state = self.lock();
        state
            .preferred
            .clone()
            .unwrap_or_else(|| self.endpoints[state.cursor].clone())
    }

    /// Chooses the next target: the hinted leader, else the next configured endpoint.
    fn failed(&self, target: &str, hint: Option<String>) {
        let mut state = self.lock();
        match hint {
            Some(leader) if leader != target => {
                state.preferred = Some(leader);
            }
            _ => {
                // The connection may be broken; reconnect next time.
                state.channels.remove(target);
                state.preferred = None;
                state.cursor = (state.cursor + 1) % self.endpoints.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7001", false).unwrap(),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:7001", true).unwrap(),
            "https://127.0.0.1:7001"
        );
        assert_eq!(
            normalize_endpoint("http://h:1/", true).unwrap(),
            "http://h:1"
        );
        assert_eq!(
            normalize_endpoint("HTTPS://h:1", true).unwrap(),
            "https://h:1"
        );
        assert!(normalize_endpoint("https://h:1", false).is_err());
        assert!(normalize_endpoint("ftp://h:1", false).is_err());
        assert!(normalize_endpoint("http://", false).is_err());
        assert!(normalize_endpoint("a b:1", false).is_err());
    }

    fn connection(endpoints: &[&str]) -> Connection {
        Connection::new(&Settings {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            token: None,
            tls: None,
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn targets_follow_hints_then_round_robin() {
        let c = connection(&["http://a:1", "http://b:2"]);
        assert_eq!(c.target(), "http://a:1");
        c.failed("http://a:1", Some("http://c:3".into()));
        assert_eq!(c.target(), "http://c:3");
        c.failed("http://c:3", None);
        assert_eq!(c.target(), "http://b:2");
        c.failed("http://b:2", Some("http://b:2".into()));
        assert_eq!(c.target(), "http://a:1");
        c.answered("http://a:1");
        assert_eq!(c.target(), "http://a:1");
    }

    #[test]
    fn leader_hint_follows_the_scheme_rules() {
        let c = connection(&["http://a:1"]);
        let mut status = Status::unavailable("not leader");
        assert_eq!(c.leader_hint(&status), None);
        status.metadata_mut().insert(
            flotilla_proto::LEADER_METADATA_KEY,
            "127.0.0.1:7002".parse().unwrap(),
        );
        assert_eq!(
            c.leader_hint(&status).as_deref(),
            Some("http://127.0.0.1:7002")
        );
    }
}
