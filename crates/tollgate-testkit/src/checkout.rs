//! A stand-in for Stripe Checkout, which `localstripe` lacks: it answers
//! `POST /v1/checkout/sessions` and `GET /v1/checkout/sessions/{id}` in Stripe's documented shapes
//! and forwards every other request to a real `localstripe`, so the server under test talks to
//! one Stripe base URL as it would in production. A test plays the customer on the hosted page
//! with [`CheckoutStandIn::complete`] (the card is saved, and in payment mode a PaymentIntent is
//! made in localstripe as the session asked: amount, customer, capture method, metadata) or
//! [`CheckoutStandIn::expire`]; each sends the signed `checkout.session.*` event Stripe would.
//!
//! A test double only for what no installable server speaks (Stripe's hosted Checkout pages).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

struct Shared {
    localstripe: String,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Value>>,
    webhook: Mutex<Option<(String, String)>>,
    next: Mutex<u64>,
}

/// A running stand-in. Stops when dropped.
pub struct CheckoutStandIn {
    /// The base URL to configure as Stripe's.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CheckoutStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `prefix[key]=value` fields as a JSON object.
fn object(fields: &[(String, String)], prefix: &str) -> Value {
    let mut map = serde_json::Map::new();
    for (key, value) in fields {
        if let Some(inner) = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('['))
            .and_then(|k| k.strip_suffix(']'))
        {
            map.insert(inner.to_owned(), json!(value));
        }
    }
    Value::Object(map)
}

impl CheckoutStandIn {
    /// Starts on a free loopback port in front of the localstripe at `localstripe`.
    pub async fn start(localstripe: &str) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            localstripe: localstripe.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            sessions: Mutex::new(HashMap::new()),
            webhook: Mutex::new(None),
            next: Mutex::new(0),
        });
        let app = Router::new()
            .route("/v1/checkout/sessions", post(create))
            .route("/v1/checkout/sessions/{id}", get(retrieve))
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Sends `checkout.session.*` events to `url`, signed with `secret` as Stripe signs them.
    pub fn deliver_to(&self, url: &str, secret: &str) {
        *self.shared.webhook.lock().unwrap_or_else(PoisonError::into_inner) = Some((url.to_owned(), secret.to_owned()));
    }

    /// The session as made.
    pub fn session(&self, id: &str) -> Option<Value> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The customer pays (or, in setup mode, saves) card `number` on the hosted page: the card is
    /// saved to the session's customer, the PaymentIntent or SetupIntent made in localstripe, and
    /// `checkout.session.completed` sent. Returns the event's HTTP status at the webhook.
    pub async fn complete(&self, id: &str, number: &str, unix_now: i64) -> Result<u16, String> {
        let session = self.session(id).ok_or("no such session")?;
        let customer = session["customer"]
            .as_str()
            .ok_or("the session has no customer")?
            .to_owned();
        let method = self
            .call(
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2030"),
                    ("card[cvc]", "123"),
                ],
            )
            .await?;
        let method = method["id"].as_str().ok_or("no payment method id")?.to_owned();
        self.call(
            &format!("/v1/payment_methods/{method}/attach"),
            &[("customer", &customer)],
        )
        .await?;
        let mut completed = session.clone();
        if session["mode"] == "payment" {
            let amount = session["amount_total"].as_i64().ok_or("no amount")?.to_string();
            let capture = session["_capture_method"].as_str().unwrap_or("automatic").to_owned();
            let mut fields: Vec<(String, String)> = vec![
                ("amount".into(), amount),
                ("currency".into(), "usd".into()),
                ("customer".into(), customer.clone()),
                ("payment_method".into(), method.clone()),
                ("capture_method".into(), capture.clone()),
                ("confirm".into(), "true".into()),
            ];
            if let Some(metadata) = session["_payment_metadata"].as_object() {
                for (key, value) in metadata {
                    fields.push((
                        format!("metadata[{key}]"),
                        value.as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
            let borrowed: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let intent = self.call("/v1/payment_intents", &borrowed).await?;
            completed["payment_intent"] = intent["id"].clone();
            completed["payment_status"] = json!(if capture == "manual" || intent["status"] != "succeeded" {
                "unpaid"
            } else {
                "paid"
            });
        } else {
            let intent = self
                .call(
                    "/v1/setup_intents",
                    &[("customer", &customer), ("usage", "off_session")],
                )
                .await?;
            let intent = intent["id"].as_str().ok_or("no setup intent id")?.to_owned();
            self.call(
                &format!("/v1/setup_intents/{intent}/confirm"),
                &[("payment_method", &method)],
            )
            .await?;
            completed["setup_intent"] = json!(intent);
            completed["payment_status"] = json!("no_payment_required");
        }
        completed["status"] = json!("complete");
        self.store(id, completed.clone());
        self.send("checkout.session.completed", &completed, unix_now).await
    }

    /// The session expires unpaid; `checkout.session.expired` is sent.
    pub async fn expire(&self, id: &str, unix_now: i64) -> Result<u16, String> {
        let mut session = self.session(id).ok_or("no such session")?;
        session["status"] = json!("expired");
        self.store(id, session.clone());
        self.send("checkout.session.expired", &session, unix_now).await
    }

    fn store(&self, id: &str, session: Value) {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), session);
    }

    async fn call(&self, path: &str, fields: &[(&str, &str)]) -> Result<Value, String> {
        let response = self
            .shared
            .http
            .post(format!("{}{path}", self.shared.localstripe))
            .basic_auth("sk_test_stand_in", Some(""))
            .form(fields)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("localstripe {path}: {status} {body}"));
        }
        Ok(body)
    }

    async fn send(&self, kind: &str, session: &Value, unix_now: i64) -> Result<u16, String> {
        let Some((url, secret)) = self
            .shared
            .webhook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Err("no webhook configured".into());
        };
        let mut public = session.clone();
        if let Some(map) = public.as_object_mut() {
            map.retain(|key, _| !key.starts_with('_'));
        }
        let event = json!({
            "id": format!("evt_cs_{}_{}", kind.replace('.', "_"), session["id"].as_str().unwrap_or_default()),
            "object": "event",
            "type": kind,
            "created": unix_now,
            "data": {"object": public},
        });
        let payload = event.to_string();
        let signature = crate::sign_stripe(&secret, unix_now, payload.as_bytes());
        let response = self
            .shared
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("stripe-signature", format!("t={unix_now},v1={signature}"))
            .body(payload)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}

async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fields = form(&body);
    let mode = field(&fields, "mode").unwrap_or("payment");
    let Some(customer) = field(&fields, "customer") else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"type": "invalid_request_error", "message": "customer is required here"}})),
        )
            .into_response();
    };
    let id = {
        let mut next = shared.next.lock().unwrap_or_else(PoisonError::into_inner);
        *next += 1;
        format!("cs_test_standin{:06}", *next)
    };
    let amount = field(&fields, "line_items[0][price_data][unit_amount]")
        .and_then(|a| a.parse::<i64>().ok())
        .zip(field(&fields, "line_items[0][quantity]").and_then(|q| q.parse::<i64>().ok()))
        .map(|(a, q)| a * q);
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "mode": mode,
        "status": "open",
        "payment_status": "unpaid",
        "customer": customer,
        "url": format!("https://checkout.stripe.test/c/pay/{id}"),
        "success_url": field(&fields, "success_url"),
        "cancel_url": field(&fields, "cancel_url"),
        "amount_total": amount,
        "currency": field(&fields, "currency").or(field(&fields, "line_items[0][price_data][currency]")),
        "payment_intent": null,
        "setup_intent": null,
        "metadata": object(&fields, "metadata"),
        "expires_at": field(&fields, "expires_at").and_then(|e| e.parse::<i64>().ok()),
        "_capture_method": field(&fields, "payment_intent_data[capture_method]"),
        "_payment_metadata": object(&fields, "payment_intent_data[metadata]"),
    });
    shared
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, session.clone());
    let mut public = session;
    if let Some(map) = public.as_object_mut() {
        map.retain(|key, _| !key.starts_with('_'));
    }
    axum::Json(public).into_response()
}

async fn retrieve(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.sessions.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
        Some(session) => {
            let mut public = session.clone();
            if let Some(map) = public.as_object_mut() {
                map.retain(|key, _| !key.starts_with('_'));
            }
            axum::Json(public).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"type": "invalid_request_error", "message": "No such checkout.session"}})),
        )
            .into_response(),
    }
}

/// Everything else goes to localstripe as it came.
async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!(
        "{}{}",
        shared.localstripe,
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut request = shared.http.request(method, target).body(body.to_vec());
    for name in ["authorization", "content-type", "idempotency-key", "stripe-version"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = response.bytes().await.unwrap_or_default();
            (status, [("content-type", "application/json")], body.to_vec()).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
