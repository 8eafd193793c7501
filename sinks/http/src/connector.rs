//! The spec interpreter: a [`Connector`] that renders a vendor spec's requests for each event
//! (or batch), sends them with the spec's auth, and reads the answers with the spec's rules.
//!
//! Guarantee: what the spec's `guarantee` says. With an idempotency key the vendor sees the
//! same key for every attempt of an event (the event id), so a replay after a crash or a lost
//! answer is deduplicated by the vendor; without one, each event whose answer was lost can be
//! delivered twice, at most the requests in flight (`sink.concurrency`). Offsets move only
//! for what the vendor accepted or what was dead-lettered (the runtime's rule).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minijinja::{AutoEscape, Environment};
use nectar_core::events::{ERASURE, Event};
use nectar_sink::auth::{Auth, AuthError, Grant, TokenSource, WebhookSigner};
use nectar_sink::template::sample_event;
use nectar_sink::template::{self, Compiled, Scope};
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use serde_json::Value;

use crate::answer::{Answer, Verdict, classify, json_matches};
use crate::spec::{AuthSpec, ClientAuth, Encoding, Escape, Idempotency, KeyPlace, Method, Spec, Start, Step};
use crate::target::Resolved;

/// A step with its templates compiled.
#[derive(Debug)]
struct CompiledStep {
    step: Step,
    /// The first request step: its body carries the idempotency key (`in = "body"`).
    keyed: bool,
    /// Whether the step sends batches (request steps of a batching spec; never erasure).
    batched: bool,
    label: String,
    url: Compiled,
    headers: Vec<(String, Compiled)>,
    body: Option<Compiled>,
    batch: Option<Compiled>,
}

#[derive(Debug)]
struct CompiledStart {
    start: Start,
    url: Compiled,
    headers: Vec<(String, Compiled)>,
}

/// A rendered request, before auth.
#[derive(Debug)]
struct Rendered {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<(Vec<u8>, &'static str)>,
}

/// What one request (of one event or a batch) came to.
enum Sent {
    Answered(Answer),
    Failed(DeliveryError),
}

#[derive(Debug)]
pub struct HttpConnector {
    name: String,
    spec: Spec,
    origin: String,
    env: Environment<'static>,
    settings: Arc<Value>,
    steps: Vec<CompiledStep>,
    erasure: Option<CompiledStep>,
    start: Option<CompiledStart>,
    auth: Auth,
    signer: Option<WebhookSigner>,
    http: reqwest::Client,
}

fn compile_str(env: &mut Environment<'static>, key: &str, s: &str) -> Result<Compiled, String> {
    template::compile(env, key, &Value::String(s.to_owned()))
}

fn compile_headers(
    env: &mut Environment<'static>,
    key: &str,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, Compiled)>, String> {
    headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), compile_str(env, &format!("{key}.headers.{k}"), v)?)))
        .collect()
}

fn compile_step(env: &mut Environment<'static>, key: &str, step: &Step, spec: &Spec) -> Result<CompiledStep, String> {
    // HTML bodies: every string is a text template, so every value is escaped.
    let typed = spec.escape != Escape::Html;
    Ok(CompiledStep {
        step: step.clone(),
        keyed: key == "request[0]",
        batched: key.starts_with("request") && spec.batched(),
        label: step.name.clone().unwrap_or_else(|| key.to_owned()),
        url: compile_str(env, &format!("{key}.url"), &step.url)?,
        headers: compile_headers(env, key, &step.headers)?,
        body: step
            .body
            .as_ref()
            .map(|b| template::compile_with(env, &format!("{key}.body"), b, typed))
            .transpose()?,
        batch: step
            .batch
            .as_ref()
            .map(|b| template::compile(env, &format!("{key}.batch"), b))
            .transpose()?,
    })
}

/// Render a string template once with the settings alone (auth values).
fn setting_text(env: &mut Environment<'static>, settings: &Arc<Value>, key: &str, s: &str) -> Result<String, String> {
    let compiled = compile_str(env, key, s)?;
    let scope = Scope::new(vec![("settings", settings.clone())]);
    match template::render_value(env, &compiled, &scope)? {
        Value::String(s) => Ok(s),
        Value::Null => Err(format!("{key}: renders to nothing (a setting is missing)")),
        other => Ok(other.to_string()),
    }
}

fn build_auth(
    spec: &AuthSpec,
    env: &mut Environment<'static>,
    settings: &Arc<Value>,
    http: &reqwest::Client,
) -> Result<(Auth, Option<WebhookSigner>), String> {
    let mut text = |key: &str, s: &str| setting_text(env, settings, &format!("auth.{key}"), s);
    let secret = |s: String| nectar_core::Sensitive::new(s);
    Ok(match spec {
        AuthSpec::None => (Auth::None, None),
        AuthSpec::Bearer { token } => (Auth::Bearer(secret(text("token", token)?)), None),
        AuthSpec::Basic { username, password } => (
            Auth::Basic {
                username: text("username", username)?,
                password: secret(text("password", password)?),
            },
            None,
        ),
        AuthSpec::ApiKey { place, name, value } => {
            let value = secret(text("value", value)?);
            let name = name.clone();
            let auth = match place {
                KeyPlace::Header => Auth::Header { name, value },
                KeyPlace::Query => Auth::Query { name, value },
            };
            (auth, None)
        }
        AuthSpec::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
            client_auth,
            extra,
        } => {
            let grant = Grant::ClientCredentials {
                client_id: text("client_id", client_id)?,
                client_secret: secret(text("client_secret", client_secret)?),
                scope: scope.as_ref().map(|s| text("scope", s)).transpose()?,
                basic: *client_auth == ClientAuth::Basic,
                extra: extra
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), text(&format!("extra.{k}"), v)?)))
                    .collect::<Result<_, String>>()?,
            };
            let url = text("token_url", token_url)?;
            (
                Auth::OAuth2(Box::new(TokenSource::new(url, grant, None, http.clone()))),
                None,
            )
        }
        AuthSpec::Oauth2RefreshToken {
            token_url,
            client_id,
            client_secret,
            refresh_token,
        } => {
            let grant = Grant::RefreshToken {
                client_id: text("client_id", client_id)?,
                client_secret: secret(text("client_secret", client_secret)?),
            };
            let refresh = secret(text("refresh_token", refresh_token)?);
            let url = text("token_url", token_url)?;
            (
                Auth::OAuth2(Box::new(TokenSource::new(url, grant, Some(refresh), http.clone()))),
                None,
            )
        }
        AuthSpec::JwtBearer {
            token_url,
            issuer,
            audience,
            subject,
            scope,
            private_key,
            key_id,
        } => {
            let pem = text("private_key", private_key)?.replace("\\n", "\n");
            let grant = Grant::JwtBearer {
                issuer: text("issuer", issuer)?,
                audience: text("audience", audience)?,
                subject: subject.as_ref().map(|s| text("subject", s)).transpose()?,
                scope: scope.as_ref().map(|s| text("scope", s)).transpose()?,
                key: Box::new(TokenSource::rsa_key(&pem).map_err(|e| format!("auth.private_key: {e}"))?),
                key_id: key_id.as_ref().map(|s| text("key_id", s)).transpose()?,
            };
            let url = text("token_url", token_url)?;
            (
                Auth::OAuth2(Box::new(TokenSource::new(url, grant, None, http.clone()))),
                None,
            )
        }
        AuthSpec::StandardWebhooks { secret: s } => {
            let signer = WebhookSigner::new(&text("secret", s)?).map_err(|e| format!("auth.secret: {e}"))?;
            (Auth::None, Some(signer))
        }
    })
}

fn form_body(value: &Value) -> Result<Vec<u8>, String> {
    let Value::Object(map) = value else {
        return Err("a form body must be an object".into());
    };
    let pairs: Vec<(&str, String)> = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            (
                k.as_str(),
                match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            )
        })
        .collect();
    serde_urlencoded::to_string(pairs)
        .map(String::into_bytes)
        .map_err(|e| e.to_string())
}

impl HttpConnector {
    pub fn new(name: &str, resolved: Resolved, request_timeout: Duration) -> anyhow::Result<Self> {
        let Resolved { spec, origin, settings } = resolved;
        let http = nectar_sink::http::client(request_timeout)?;
        let mut env = template::environment();
        if spec.escape == Escape::Html {
            // Bodies only: URLs and headers are not HTML (minijinja escapes `/` too).
            env.set_auto_escape_callback(|name| {
                if name.contains(".body") {
                    AutoEscape::Html
                } else {
                    AutoEscape::None
                }
            });
        }
        let settings_value = Arc::new(Value::Object(settings.expose().clone()));
        let err = |e: String| anyhow::anyhow!("{origin}: {e}");
        let (auth, signer) = build_auth(&spec.auth, &mut env, &settings_value, &http).map_err(err)?;
        let steps = spec
            .request
            .iter()
            .enumerate()
            .map(|(i, s)| compile_step(&mut env, &format!("request[{i}]"), s, &spec))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let erasure = spec
            .erasure
            .as_ref()
            .map(|s| compile_step(&mut env, "erasure", s, &spec))
            .transpose()
            .map_err(err)?;
        if let Some(expr) = &spec.limits.distinct_by {
            env.compile_expression(expr)
                .map_err(|e| err(format!("limits.distinct_by: invalid expression `{expr}`: {e}")))?;
        }
        for (i, expr) in spec.filter.require.iter().enumerate() {
            env.compile_expression(expr)
                .map_err(|e| err(format!("filter.require[{i}]: invalid expression `{expr}`: {e}")))?;
        }
        let start = match &spec.start {
            Some(s) => Some(CompiledStart {
                start: s.clone(),
                url: compile_str(&mut env, "start.url", &s.url).map_err(err)?,
                headers: compile_headers(&mut env, "start", &s.headers).map_err(err)?,
            }),
            None => None,
        };
        Ok(Self {
            name: name.to_owned(),
            spec,
            origin,
            env,
            settings: settings_value,
            steps,
            erasure,
            start,
            auth,
            signer,
            http,
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn takes(&self, event_type: &str) -> bool {
        let types = &self.spec.filter.event_types;
        if types.is_empty() {
            return event_type != ERASURE;
        }
        types.iter().any(|t| match t.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => t == event_type,
        })
    }

    /// The first `filter.require` expression the event does not satisfy (an expression that
    /// fails to evaluate counts as unmet).
    fn unmet_requirement(&self, item: &Item) -> Option<&str> {
        let requires = &self.spec.filter.require;
        if requires.is_empty() {
            return None;
        }
        let ctx = self.context(&item.event, Some(item), &[]);
        requires
            .iter()
            .find(|expr| !template::eval(&self.env, expr, &ctx).is_ok_and(|v| v.is_true()))
            .map(String::as_str)
    }

    fn context(&self, event: &Event, item: Option<&Item>, steps: &[Value]) -> Scope {
        let (key, attempts) = match item {
            Some(i) => (i.event_id(), i.attempts),
            None => (event.envelope.event_id.as_str(), 0),
        };
        let item = serde_json::json!({"event_id": key, "key": key, "attempts": attempts});
        Scope::of_event(
            event,
            vec![
                ("settings", self.settings.clone()),
                ("item", Arc::new(item)),
                ("steps", Arc::new(Value::Array(steps.to_vec()))),
            ],
        )
    }

    fn render_text(&self, compiled: &Compiled, ctx: &Scope) -> Result<String, String> {
        Ok(match template::render_value(&self.env, compiled, ctx)? {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        })
    }

    /// The body of one event for `step`, with the idempotency key in place.
    fn item_body(&self, step: &CompiledStep, ctx: &Scope) -> Result<Option<Value>, String> {
        let Some(body) = &step.body else {
            return Ok(None);
        };
        let value = template::render_value(&self.env, body, ctx)?;
        if let Idempotency::Body { pointer } = &self.spec.guarantee.idempotency
            && step.keyed
            && value.pointer(pointer).is_none_or(|v| v.is_null() || v == "")
        {
            return Err(format!(
                "the idempotency key at `{pointer}` is not set (the spec's body must set it from item.key)"
            ));
        }
        Ok(Some(value))
    }

    /// URL and headers of `step` for `ctx`, and its body from `bodies` (one event's, or a
    /// batch's).
    fn render(&self, step: &CompiledStep, ctx: &Scope, bodies: Vec<Value>, key: &str) -> Result<Rendered, String> {
        let url = self.render_text(&step.url, ctx)?;
        let mut headers = Vec::with_capacity(step.headers.len() + 1);
        for (name, value) in &step.headers {
            headers.push((name.clone(), self.render_text(value, ctx)?));
        }
        if let Idempotency::Header { name } = &self.spec.guarantee.idempotency {
            headers.push((name.clone(), key.to_owned()));
        }
        let body = if step.body.is_none() {
            None
        } else if step.batched {
            Some(match step.step.encoding {
                Encoding::Ndjson => {
                    let mut out = Vec::new();
                    for b in &bodies {
                        serde_json::to_writer(&mut out, b).map_err(|e| e.to_string())?;
                        out.push(b'\n');
                    }
                    (out, "application/x-ndjson")
                }
                _ => {
                    let items = Value::Array(bodies);
                    let value = match &step.batch {
                        Some(wrapper) => {
                            let scope =
                                Scope::new(vec![("settings", self.settings.clone()), ("items", Arc::new(items))]);
                            template::render_value(&self.env, wrapper, &scope)?
                        }
                        None => items,
                    };
                    (
                        serde_json::to_vec(&value).map_err(|e| e.to_string())?,
                        "application/json",
                    )
                }
            })
        } else {
            let value = bodies.into_iter().next().unwrap_or(Value::Null);
            Some(match step.step.encoding {
                Encoding::Form => (form_body(&value)?, "application/x-www-form-urlencoded"),
                _ => (
                    serde_json::to_vec(&value).map_err(|e| e.to_string())?,
                    "application/json",
                ),
            })
        };
        Ok(Rendered {
            method: step.step.method,
            url,
            headers,
            body,
        })
    }

    /// Send a rendered request: auth, signing, one fresh token on a 401 to a token.
    async fn send(&self, rendered: &Rendered, key: &str) -> Sent {
        let mut refreshed = false;
        loop {
            let method = match rendered.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
                Method::Put => reqwest::Method::PUT,
                Method::Patch => reqwest::Method::PATCH,
                Method::Delete => reqwest::Method::DELETE,
            };
            let mut request = self.http.request(method, &rendered.url);
            for (k, v) in &rendered.headers {
                request = request.header(k.as_str(), v.as_str());
            }
            if let Some((bytes, content_type)) = &rendered.body {
                if !rendered
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                {
                    request = request.header(reqwest::header::CONTENT_TYPE, *content_type);
                }
                if let Some(signer) = &self.signer {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    for (k, v) in signer.headers(key, now, bytes) {
                        // `webhook-id` may already be there as the idempotency header.
                        if !rendered.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(k)) {
                            request = request.header(k, v);
                        }
                    }
                }
                request = request.body(bytes.clone());
            }
            let (request, token) = match self.auth.apply(request).await {
                Ok(r) => r,
                Err(AuthError::Rejected(m)) => {
                    return Sent::Failed(DeliveryError::Fatal(format!("credentials rejected: {m}")));
                }
                Err(AuthError::Unavailable(m)) => return Sent::Failed(DeliveryError::retry(m)),
            };
            let response = match request.send().await {
                Ok(r) => r,
                // Without the URL: it can carry the credential (a webhook URL, a bot token).
                Err(e) => return Sent::Failed(nectar_sink::http::transport_error(&e.without_url())),
            };
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::UNAUTHORIZED && self.auth.refreshes() && !refreshed {
                tracing::info!(vendor = %self.spec.name, "the vendor refused the access token; refreshing it once");
                match self.auth.refresh(token.as_deref()).await {
                    Ok(()) => {}
                    Err(AuthError::Rejected(m)) => {
                        return Sent::Failed(DeliveryError::Fatal(format!("credentials rejected: {m}")));
                    }
                    Err(AuthError::Unavailable(m)) => return Sent::Failed(DeliveryError::retry(m)),
                }
                refreshed = true;
                continue;
            }
            return Sent::Answered(Answer::new(status, headers, text));
        }
    }

    /// Deliver one event through every step.
    async fn deliver_one(&self, item: &Item, steps: &[CompiledStep]) -> Result<ItemResult, DeliveryError> {
        let event = &item.event;
        let key = item.event_id();
        let mut answers: Vec<Value> = Vec::new();
        for step in steps {
            let ctx = self.context(event, Some(item), &answers);
            let rendered = match self
                .item_body(step, &ctx)
                .and_then(|body| self.render(step, &ctx, body.into_iter().collect(), key))
            {
                Ok(r) => r,
                Err(e) => return Ok(ItemResult::reject(format!("{}: cannot render: {e}", step.label), "")),
            };
            if let (Some(max), Some((body, _))) = (self.spec.limits.max_bytes, &rendered.body)
                && body.len() > max
            {
                return Ok(ItemResult::reject(
                    format!(
                        "{}: the request is {} bytes, over the vendor's {max}",
                        step.label,
                        body.len()
                    ),
                    "",
                ));
            }
            let answer = match self.send(&rendered, key).await {
                Sent::Answered(a) => a,
                Sent::Failed(e) => return Err(e),
            };
            let verdict = classify(&step.step.answers, &answer, &[key]);
            let prefix = |r: String| {
                if steps.len() > 1 {
                    format!("{}: {r}", step.label)
                } else {
                    r
                }
            };
            match verdict {
                Verdict::Delivered => answers.push(answer.json.unwrap_or(Value::Null)),
                Verdict::Partial(mut results) => match results.pop().flatten() {
                    None => answers.push(answer.json.unwrap_or(Value::Null)),
                    Some(v) => return single(v, &answer, prefix),
                },
                other => return single(other, &answer, prefix),
            }
        }
        Ok(ItemResult::Delivered)
    }

    /// The batch as requests whose events have distinct `limits.distinct_by` values: the
    /// first event of each value in the first, the second in the next, and so on (so one
    /// lead's events keep their order).
    fn layers(&self, items: &[Item], bodies: Vec<(usize, Value)>) -> Vec<Vec<(usize, Value)>> {
        let Some(expr) = &self.spec.limits.distinct_by else {
            return if bodies.is_empty() { vec![] } else { vec![bodies] };
        };
        let mut layers: Vec<Vec<(usize, Value)>> = Vec::new();
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (i, body) in bodies {
            let ctx = self.context(&items[i].event, Some(&items[i]), &[]);
            let value = template::eval(&self.env, expr, &ctx)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let layer = seen.entry(value).and_modify(|n| *n += 1).or_insert(0);
            if layers.len() <= *layer {
                layers.push(Vec::new());
            }
            layers[*layer].push((i, body));
        }
        layers
    }

    /// Deliver a batch of events (indices into `items`) in one request, splitting it when it
    /// is over the byte limit or the vendor answers 413. One result per index.
    async fn deliver_batch(
        &self,
        items: &[Item],
        bodies: &[(usize, Value)],
    ) -> Result<Vec<(usize, ItemResult)>, DeliveryError> {
        let step = &self.steps[0];
        let keys: Vec<&str> = bodies.iter().map(|(i, _)| items[*i].event_id()).collect();
        let ctx = self.context(&items[bodies[0].0].event, Some(&items[bodies[0].0]), &[]);
        let rendered = self
            .render(step, &ctx, bodies.iter().map(|(_, b)| b.clone()).collect(), keys[0])
            .map_err(|e| DeliveryError::Fatal(format!("{}: cannot render the batch: {e}", self.origin)))?;
        let size = rendered.body.as_ref().map_or(0, |(b, _)| b.len());
        let too_large = self.spec.limits.max_bytes.is_some_and(|max| size > max);
        if too_large {
            return Box::pin(self.split(items, bodies, size)).await;
        }
        let answer = match self.send(&rendered, keys[0]).await {
            Sent::Answered(answer) => answer,
            Sent::Failed(e) => return Err(e),
        };
        match classify(&step.step.answers, &answer, &keys) {
            Verdict::Split => Box::pin(self.split(items, bodies, size)).await,
            Verdict::Partial(results) => Ok(bodies
                .iter()
                .zip(results)
                .map(|((i, _), r)| {
                    let result = r.map_or(ItemResult::Delivered, |v| {
                        single(v, &answer, |r| r).unwrap_or_else(|e| ItemResult::retry(e.to_string()))
                    });
                    (*i, result)
                })
                .collect()),
            other => {
                let result = single(other, &answer, |r| r)?;
                Ok(bodies.iter().map(|(i, _)| (*i, result.clone())).collect())
            }
        }
    }

    async fn split(
        &self,
        items: &[Item],
        bodies: &[(usize, Value)],
        size: usize,
    ) -> Result<Vec<(usize, ItemResult)>, DeliveryError> {
        if bodies.len() == 1 {
            let reason = format!("the event alone is too large for the vendor ({size} bytes)");
            return Ok(vec![(bodies[0].0, ItemResult::reject(reason, ""))]);
        }
        let (a, b) = bodies.split_at(bodies.len() / 2);
        let mut out = self.deliver_batch(items, a).await?;
        out.extend(self.deliver_batch(items, b).await?);
        Ok(out)
    }

    /// Render every template on a sample event, so a template that cannot work is a
    /// configuration error at start rather than a dead letter per event.
    pub fn check_templates(&self) -> Result<(), StartError> {
        let event = sample_event();
        let samples = [Value::Object(Default::default())];
        for step in self.steps.iter().chain(self.erasure.iter()) {
            let ctx = self.context(&event, None, &samples);
            let body = self
                .item_body(step, &ctx)
                .map_err(|e| StartError::Config(format!("{}: {e}", self.origin)))?;
            self.render(step, &ctx, body.into_iter().collect(), &event.envelope.event_id)
                .map_err(|e| StartError::Config(format!("{}: {e}", self.origin)))?;
        }
        Ok(())
    }

    async fn start_request(&self, start: &CompiledStart) -> Result<(), StartError> {
        let event = sample_event();
        let ctx = self.context(&event, None, &[]);
        let config = |e: String| StartError::Config(format!("{}: start: {e}", self.origin));
        let url = self.render_text(&start.url, &ctx).map_err(config)?;
        let mut headers = Vec::new();
        for (k, v) in &start.headers {
            headers.push((k.clone(), self.render_text(v, &ctx).map_err(config)?));
        }
        let body = if start.start.sample {
            let step = &self.steps[0];
            let sample = self.item_body(step, &ctx).map_err(config)?.unwrap_or(Value::Null);
            self.render(step, &ctx, vec![sample], &event.envelope.event_id)
                .map_err(config)?
                .body
        } else {
            None
        };
        let rendered = Rendered {
            method: start.start.method,
            url,
            headers,
            body,
        };
        let answer = match self.send(&rendered, &event.envelope.event_id).await {
            Sent::Answered(a) => a,
            Sent::Failed(DeliveryError::Fatal(m)) => return Err(StartError::Credentials(m)),
            Sent::Failed(DeliveryError::Retry { reason, .. }) => return Err(StartError::Unreachable(reason)),
        };
        let what = format!(
            "{} ({})",
            self.spec.name,
            start.start.url.split('?').next().unwrap_or_default()
        );
        if !answer.status.is_success() {
            return Err(nectar_sink::http::start_status(answer.status, &what, &answer.text));
        }
        if let Some(expect) = &start.start.expect
            && !json_matches(expect, answer.json.as_ref())
        {
            return Err(StartError::Config(format!(
                "{what}: unexpected answer: {}",
                answer.summary()
            )));
        }
        if let Some(pointer) = &start.start.problems
            && let Some(Value::Array(problems)) = answer.json.as_ref().and_then(|j| j.pointer(pointer))
            && !problems.is_empty()
        {
            return Err(StartError::Config(format!(
                "{what}: the vendor refuses the events this spec sends: {}",
                Value::Array(problems.clone())
            )));
        }
        Ok(())
    }
}

/// One event's result from a verdict on its request.
fn single(verdict: Verdict, answer: &Answer, prefix: impl Fn(String) -> String) -> Result<ItemResult, DeliveryError> {
    Ok(match verdict {
        Verdict::Delivered | Verdict::Partial(_) => ItemResult::Delivered,
        Verdict::Retry { reason, after } => {
            return Err(DeliveryError::Retry {
                reason: prefix(reason),
                after,
            });
        }
        Verdict::RetryItems { reason, after } => ItemResult::Retry {
            reason: prefix(reason),
            after,
        },
        Verdict::Reject { reason } => ItemResult::reject(prefix(reason), nectar_sink::http::excerpt(&answer.text)),
        Verdict::Fatal(reason) => return Err(DeliveryError::Fatal(prefix(reason))),
        Verdict::Split => ItemResult::reject(
            prefix("the event alone is too large for the vendor (HTTP 413)".into()),
            nectar_sink::http::excerpt(&answer.text),
        ),
    })
}

impl Connector for HttpConnector {
    fn name(&self) -> &str {
        &self.name
    }

    async fn start(&self) -> Result<(), StartError> {
        self.check_templates()?;
        match &self.start {
            Some(start) => self.start_request(start).await,
            None => Ok(()),
        }
    }

    fn max_items(&self) -> usize {
        self.spec.limits.max_items
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        let items = delivery.items;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut bodies: Vec<(usize, Value)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let event_type = item.event.envelope.event_type.as_str();
            if event_type == ERASURE
                && let Some(erasure) = &self.erasure
            {
                results[i] = Some(self.deliver_one(item, std::slice::from_ref(erasure)).await?);
                continue;
            }
            if !self.takes(event_type) {
                results[i] = Some(ItemResult::Skipped {
                    reason: format!("{} does not take {event_type} events", self.spec.name),
                });
                continue;
            }
            if let Some(unmet) = self.unmet_requirement(item) {
                results[i] = Some(ItemResult::Skipped {
                    reason: format!("{} requires {unmet}", self.spec.name),
                });
                continue;
            }
            if !self.spec.batched() {
                results[i] = Some(self.deliver_one(item, &self.steps).await?);
                continue;
            }
            let ctx = self.context(&item.event, Some(item), &[]);
            match self.item_body(&self.steps[0], &ctx) {
                Ok(body) => bodies.push((i, body.unwrap_or(Value::Null))),
                Err(e) => results[i] = Some(ItemResult::reject(format!("cannot render: {e}"), "")),
            }
        }
        for layer in self.layers(items, bodies) {
            for (i, result) in self.deliver_batch(items, &layer).await? {
                results[i] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::retry("no answer for this event")))
            .collect())
    }
}
