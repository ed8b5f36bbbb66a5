//! `xai_api.Chat`: completions whole, streamed and deferred, through the inference use case
//! every surface shares (admitted, held, answered by the tool loop or one upstream call,
//! settled before the answer's last message).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_core::{Admission, SearchCall};
use tollgate_domain::{ApiKey, Endpoint, RequestId, Ticks, TokenUsage};
use tollgate_gateway::search::{self, RequestedTool};
use tollgate_gateway::usage::parse_usage;
use tollgate_gateway::wire::ChatCompletionRequest;
use tonic::{Code, Request, Response, Status};

use crate::proto::chat_server::Chat;
use crate::proto::{
    CompactContextRequest, CompactContextResponse, DeferredStatus, DeleteStoredCompletionRequest,
    DeleteStoredCompletionResponse, GetChatCompletionChunk, GetChatCompletionResponse, GetCompletionsRequest,
    GetDeferredCompletionResponse, GetDeferredRequest, GetStoredCompletionRequest, StartDeferredResponse,
};
use crate::stored::Keeper;
use crate::{Services, auth, convert, status};

/// `xai_api.Chat`.
pub(crate) struct ChatService {
    services: Arc<Services>,
}

/// A completion request, read and admitted.
struct Admitted {
    key: Arc<ApiKey>,
    admission: Admission,
    chat: ChatCompletionRequest,
    tools: Vec<RequestedTool>,
    /// The completion's id: its request id (on its usage record; a stored completion's id).
    id: String,
    /// Where it is kept when `store_messages` asked for it.
    keeper: Option<Keeper>,
}

impl ChatService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    /// Authenticates, translates into the chat shape, takes out the server-side tools, and
    /// admits (`id` keys its usage record): the request ready for its upstream.
    async fn admit(
        &self,
        request: Request<GetCompletionsRequest>,
        streamed: bool,
        id: RequestId,
    ) -> Result<Admitted, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        let asked = request.get_ref();
        let (store, previous) = (asked.store_messages, asked.previous_response_id.clone());
        if key.team_zero_retention && (store || previous.is_some()) {
            // Nothing of a zero-retention team is kept: nothing stored, nothing to continue.
            return Err(Status::invalid_argument(
                "This team has zero data retention: completions cannot be stored (store_messages) or continued \
                 (previous_response_id); send the whole conversation",
            ));
        }
        let mut chat = convert::chat_request(asked).map_err(Status::invalid_argument)?;
        if let Some(previous) = &previous {
            // The conversation this turn continues: the team's own stored completion or
            // response, never another's; sent again, and billed as prompt.
            require_chat(&key)?;
            let saved = self
                .services
                .responses
                .load(key.team_id, previous)
                .await
                .map_err(|error| status::stored_unavailable(&error))?
                .ok_or_else(|| {
                    Status::invalid_argument(format!("Previous response with id '{previous}' not found."))
                })?;
            if let Some(messages) = chat["messages"].as_array_mut() {
                messages.splice(0..0, saved.messages);
            }
        }
        let conversation = if store {
            chat["messages"].as_array().cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        // Kept with the answer (for abuse review) in the shape REST keeps.
        let raw = Bytes::from(serde_json::to_vec(&chat).unwrap_or_default());
        let mut chat: ChatCompletionRequest =
            serde_json::from_value(chat).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let tools = search::take_server_tools(&mut chat).map_err(Status::invalid_argument)?;
        chat.validate().map_err(Status::invalid_argument)?;
        search::offer(&mut chat, &tools).map_err(Status::invalid_argument)?;
        let mut admission = self
            .services
            .inference
            .admit_chat(Arc::clone(&key), &chat, &tools, streamed, id)
            .await
            .map_err(|error| {
                self.services.telemetry.refused(&error);
                status::refused(&error)
            })?;
        admission.keep_request(raw);
        // The upstream is held to the budget the credit hold assumed.
        chat.limit_output(admission.output_per_choice());
        admission.route().upstream_model().clone_into(&mut chat.model);
        let id = id.to_string();
        let keeper = if store {
            let created_at = self.services.clock.now().timestamp();
            let model = &admission.route().name;
            Some(Keeper::new(&id, created_at, model, previous.as_deref(), conversation)?)
        } else {
            None
        };
        Ok(Admitted {
            key,
            admission,
            chat,
            tools,
            id,
            keeper,
        })
    }

    /// Answers whole and settles, in a task of its own: a client that goes away drops this
    /// call, but what the upstream produced is still charged.
    async fn answer(&self, admitted: Admitted) -> Result<GetChatCompletionResponse, Status> {
        let services = Arc::clone(&self.services);
        tokio::spawn(async move { answer(&services, admitted).await.map(|(response, _)| response) })
            .await
            .map_err(|_| Status::internal("The request failed"))?
    }
}

/// Answers whole and settles; then stores the completion when asked (a completion that could
/// not be stored is an error, though charged: the client is told to retry). The answer in the
/// SDK's shape, its id the request's.
async fn answer(services: &Services, admitted: Admitted) -> Result<(GetChatCompletionResponse, Value), Status> {
    let Admitted {
        key,
        admission,
        chat,
        tools,
        id,
        keeper,
    } = admitted;
    let model = admission.route().name.clone();
    let answered = settled(services, admission, chat, &tools).await?;
    let citations = tollgate_core::tools::citations(&answered.searches);
    let answer = answered.answer.value();
    let mut response = convert::response(
        &answer,
        &model,
        &answered.usage,
        answered.charged.cost,
        citations.clone(),
    );
    response.id.clone_from(&id);
    if let Some(mut keeper) = keeper {
        keeper.answer(&answer);
        let saved = keeper.finish(&answered.usage, answered.charged.cost, citations);
        services
            .responses
            .save(&key, &id, &model, &saved)
            .await
            .map_err(|error| status::unstored(&error))?;
    }
    let mut chat_answer = answered.into_chat(&model);
    chat_answer["id"] = json!(id);
    Ok((response, chat_answer))
}

async fn settled(
    services: &Services,
    admission: Admission,
    chat: ChatCompletionRequest,
    tools: &[RequestedTool],
) -> Result<tollgate_core::Answered, Status> {
    let model = admission.route().name.clone();
    let telemetry = &services.telemetry;
    let answered = services
        .inference
        .answer(
            admission,
            chat,
            tools,
            &|event| telemetry.upstream_event(&event),
            &|call| telemetry.search(call),
        )
        .await;
    match answered {
        Ok(answered) => {
            telemetry.charged(&model, &answered.usage, answered.charged);
            Ok(answered)
        }
        Err(error) => {
            if let tollgate_core::AnswerError::Upstream {
                settled: Some((usage, charged)),
                ..
            } = &error
            {
                telemetry.charged(&model, usage, *charged);
            }
            Err(status::unanswered(&error))
        }
    }
}

/// What a settled answer's `model` field says and what it cost, read back from REST's chat
/// shape (as deferred results are kept).
fn from_chat(answer: &Value) -> GetChatCompletionResponse {
    let usage = parse_usage(&answer["usage"]).unwrap_or_default();
    let cost = Ticks::new(answer["usage"]["cost_in_usd_ticks"].as_i64().unwrap_or_default());
    let citations = answer["citations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|url| url.as_str().map(str::to_owned))
        .collect();
    let model = answer["model"].as_str().unwrap_or_default();
    convert::response(answer, model, &usage, cost, citations)
}

/// Where a streamed answer goes: each chunk as the SDK's, the last one held back until the
/// request is settled (it carries the usage and cost, which the SDK reads from the last chunk).
struct ChunkSink {
    sender: mpsc::Sender<Result<GetChatCompletionChunk, Status>>,
    model: String,
    id: String,
    last: Option<GetChatCompletionChunk>,
    citations: Vec<String>,
    /// What was sent, as JSON lines, kept with the request when bodies are retained (bounded).
    kept: Option<Vec<u8>>,
    /// Where the completion is stored, when asked.
    keeper: Option<Keeper>,
    client_gone: bool,
    telemetry: Arc<dyn crate::Telemetry>,
}

impl ChunkSink {
    fn keep(&mut self, chunk: &Value) {
        if let Some(kept) = &mut self.kept
            && kept.len() <= tollgate_core::retention::MAX_KEPT_BYTES
        {
            kept.extend_from_slice(chunk.to_string().as_bytes());
            kept.push(b'\n');
        }
    }

    async fn send(&mut self, chunk: GetChatCompletionChunk) {
        if !self.client_gone && self.sender.send(Ok(chunk)).await.is_err() {
            // Gone: the answer still finishes, and is charged.
            self.client_gone = true;
        }
    }
}

impl tollgate_core::tools::ToolSink for ChunkSink {
    async fn chunk(&mut self, chunk: Value) {
        self.keep(&chunk);
        if let Some(keeper) = &mut self.keeper {
            keeper.chunk(&chunk);
        }
        let finished = chunk["choices"]
            .as_array()
            .is_some_and(|choices| choices.iter().any(|choice| !choice["finish_reason"].is_null()));
        let mut converted = convert::chunk(&chunk, &self.model);
        converted.id.clone_from(&self.id);
        if finished {
            self.last = Some(converted);
        } else {
            self.send(converted).await;
        }
    }

    async fn search(&mut self, call: &SearchCall) {
        self.telemetry.search(call);
        for hit in call.outcome.iter().flatten() {
            if !self.citations.contains(&hit.url) {
                self.citations.push(hit.url.clone());
            }
        }
        let chunk = convert::search_chunk(call, &self.id, &self.model);
        self.send(chunk).await;
    }
}

/// Streams `admitted`'s answer into `sender` from a task of its own, and settles it before the
/// last chunk, which carries the usage with its cost and the citations.
async fn stream(
    services: Arc<Services>,
    admitted: Admitted,
    sender: mpsc::Sender<Result<GetChatCompletionChunk, Status>>,
) {
    let Admitted {
        key,
        admission,
        chat,
        tools,
        id,
        keeper,
    } = admitted;
    let route = Arc::clone(admission.route());
    let keeps = services.inference.retains_bodies() && admission.keeps_bodies();
    let telemetry = Arc::clone(&services.telemetry);
    let mut sink = ChunkSink {
        sender,
        model: route.name.clone(),
        id,
        last: None,
        citations: Vec::new(),
        kept: keeps.then(Vec::new),
        keeper,
        client_gone: false,
        telemetry: Arc::clone(&telemetry),
    };
    let run = services
        .inference
        .tools()
        .run_streamed(
            &route,
            chat,
            &tools,
            admission.deadline(),
            &|event| telemetry.upstream_event(&event),
            &mut sink,
        )
        .await;
    let kept = sink.kept.take().unwrap_or_default();
    if let Err(error) = run.answer {
        // A failed call is not charged; what ran before it is.
        if run.usage != TokenUsage::default()
            && let Ok(charged) = services
                .inference
                .settle(admission, run.usage, run.estimated, &kept)
                .await
        {
            telemetry.charged(&route.name, &run.usage, charged);
        }
        if !sink.client_gone {
            let _ = sink.sender.send(Err(status::upstream(&error))).await;
        }
        return;
    }
    let settled = services
        .inference
        .settle(admission, run.usage, run.estimated, &kept)
        .await;
    let charged = match settled {
        Ok(charged) => charged,
        Err(error) => {
            let _ = sink.sender.send(Err(status::unsettled(&error))).await;
            return;
        }
    };
    telemetry.charged(&route.name, &run.usage, charged);
    if let Some(keeper) = sink.keeper.take() {
        let saved = keeper.finish(&run.usage, charged.cost, sink.citations.clone());
        if let Err(error) = services.responses.save(&key, &sink.id, &route.name, &saved).await {
            let _ = sink.sender.send(Err(status::unstored(&error))).await;
            return;
        }
    }
    let mut last = sink.last.take().unwrap_or_else(|| GetChatCompletionChunk {
        id: sink.id.clone(),
        model: route.name.clone(),
        ..GetChatCompletionChunk::default()
    });
    last.usage = Some(convert::usage(&run.usage, charged.cost));
    last.citations = std::mem::take(&mut sink.citations);
    sink.send(last).await;
}

#[tonic::async_trait]
impl Chat for ChatService {
    async fn get_completion(
        &self,
        request: Request<GetCompletionsRequest>,
    ) -> Result<Response<GetChatCompletionResponse>, Status> {
        let id = auth::request_id(&request);
        let admitted = self.admit(request, false, id).await?;
        Ok(Response::new(self.answer(admitted).await?))
    }

    type GetCompletionChunkStream = ReceiverStream<Result<GetChatCompletionChunk, Status>>;

    async fn get_completion_chunk(
        &self,
        request: Request<GetCompletionsRequest>,
    ) -> Result<Response<Self::GetCompletionChunkStream>, Status> {
        let id = auth::request_id(&request);
        let admitted = self.admit(request, true, id).await?;
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(stream(Arc::clone(&self.services), admitted, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    /// Admits the request now (a refusal is this call's error) and runs it in the background on
    /// this node; the result is kept for one poll, on any node, as REST's deferred completions.
    async fn start_deferred_completion(
        &self,
        request: Request<GetCompletionsRequest>,
    ) -> Result<Response<StartDeferredResponse>, Status> {
        // A deferred request's id is what its result is fetched by: always a fresh one.
        let id = RequestId::new();
        let admitted = self.admit(request, false, id).await?;
        let model = admitted.admission.route().name.clone();
        let request_id = id.to_string();
        // Unrecorded, the request is not run: dropping the admission releases its hold.
        self.services
            .deferred
            .begin(&admitted.key, &request_id, &model)
            .await
            .map_err(|error| status::deferred_unavailable(&error))?;
        let services = Arc::clone(&self.services);
        let key = Arc::clone(&admitted.key);
        let recorded_id = request_id.clone();
        tokio::spawn(async move {
            let outcome = match answer(&services, admitted).await {
                Ok((_, chat_answer)) => Ok(chat_answer),
                Err(failure) => Err(failed_outcome(&failure)),
            };
            match services.deferred.finish(key.team_id, &recorded_id, outcome).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(request_id = %recorded_id, "a deferred completion finished after it was reported lost")
                }
                Err(error) => {
                    tracing::error!(request_id = %recorded_id, %error, "a deferred completion's result could not be recorded");
                }
            }
        });
        Ok(Response::new(StartDeferredResponse { request_id }))
    }

    /// `PENDING` while it runs, then `DONE` with the completion exactly once; a failure is its
    /// error status, once (the SDK cannot read a `FAILED` status); then `NOT_FOUND`.
    async fn get_deferred_completion(
        &self,
        request: Request<GetDeferredRequest>,
    ) -> Result<Response<GetDeferredCompletionResponse>, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        if !key.acls.allows(Endpoint::Chat) {
            return Err(status::refused(&tollgate_core::AdmitError::EndpointDenied(
                Endpoint::Chat,
            )));
        }
        let request_id = request.into_inner().request_id;
        let polled = self
            .services
            .deferred
            .poll(key.team_id, &request_id)
            .await
            .map_err(|error| status::deferred_unavailable(&error))?;
        let pending = |status: DeferredStatus, response| GetDeferredCompletionResponse {
            status: status as i32,
            response,
        };
        match polled {
            None => Err(Status::not_found(format!(
                "No deferred completion {request_id} is waiting: results are returned once, within 24 hours."
            ))),
            Some(tollgate_core::Polled::Pending) => Ok(Response::new(pending(DeferredStatus::Pending, None))),
            Some(tollgate_core::Polled::Done(answer)) => {
                Ok(Response::new(pending(DeferredStatus::Done, Some(from_chat(&answer)))))
            }
            Some(tollgate_core::Polled::Failed { status, body }) => Err(Status::new(
                status::code_of_http(status),
                body["error"]
                    .as_str()
                    .unwrap_or("The deferred completion failed")
                    .to_owned(),
            )),
            Some(tollgate_core::Polled::Lost) => Err(Status::unavailable(
                "The deferred completion was lost: the server running it stopped before it finished. It was not charged; send it again.",
            )),
        }
    }

    /// A stored completion (or a REST stored response) of the caller's team.
    async fn get_stored_completion(
        &self,
        request: Request<GetStoredCompletionRequest>,
    ) -> Result<Response<GetChatCompletionResponse>, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        require_chat(&key)?;
        let id = request.into_inner().response_id;
        let saved = self
            .services
            .responses
            .load(key.team_id, &id)
            .await
            .map_err(|error| status::stored_unavailable(&error))?
            .ok_or_else(|| stored_not_found(&id))?;
        Ok(Response::new(crate::stored::completion(&saved.response)))
    }

    async fn delete_stored_completion(
        &self,
        request: Request<DeleteStoredCompletionRequest>,
    ) -> Result<Response<DeleteStoredCompletionResponse>, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        require_chat(&key)?;
        let response_id = request.into_inner().response_id;
        let deleted = self
            .services
            .responses
            .delete(key.team_id, &response_id)
            .await
            .map_err(|error| status::stored_unavailable(&error))?;
        if !deleted {
            return Err(stored_not_found(&response_id));
        }
        Ok(Response::new(DeleteStoredCompletionResponse { response_id }))
    }

    async fn compact_context(
        &self,
        _request: Request<CompactContextRequest>,
    ) -> Result<Response<CompactContextResponse>, Status> {
        Err(Status::unimplemented("Context compaction is not offered here"))
    }
}

/// The key must be granted chat to read or continue stored completions.
fn require_chat(key: &ApiKey) -> Result<(), Status> {
    if key.acls.allows(Endpoint::Chat) {
        Ok(())
    } else {
        Err(status::refused(&tollgate_core::AdmitError::EndpointDenied(
            Endpoint::Chat,
        )))
    }
}

/// REST's words for a stored response that is not there.
fn stored_not_found(id: &str) -> Status {
    Status::not_found(format!("The response {id} does not exist or has expired."))
}

/// A deferred failure as REST records it (its status and error body), so a poll on either
/// surface answers it.
fn failed_outcome(failure: &Status) -> (u16, Value) {
    let http = match failure.code() {
        Code::InvalidArgument => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 502,
    };
    (
        http,
        json!({"code": failure.code().description(), "error": failure.message()}),
    )
}
