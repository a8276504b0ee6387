//! Real client libraries through tollgate with a virtual key: `ollama-rs` on the native
//! API and `async-openai` on the OpenAI-compatible one. A bad key surfaces as an
//! authentication error in each.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use ollama_rs::Ollama;
use ollama_rs::error::OllamaError;
use ollama_rs::generation::chat::ChatMessage;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::embeddings::request::GenerateEmbeddingsRequest;
use serde_json::json;

use crate::keys_support::*;
use crate::support::TestApp;

const FULL_TEXT: &str = "tok0 tok1 tok2 tok3 tok4 ";

/// A key for these tests: two model families, so list filtering shows.
async fn client_key(app: &TestApp) -> NewKey {
    generate(
        app,
        json!({"models": ["llama3.1:*", "nomic-embed-text"], "key_alias": "clients"}),
    )
    .await
}

fn bad_key() -> String {
    format!("sk-{}", "x".repeat(43))
}

fn ollama_client(app: &TestApp, key: &str) -> Ollama {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header value"),
    );
    Ollama::builder()
        .url(app.base.as_str())
        .request_headers(headers)
        .build()
}

fn openai_client(app: &TestApp, key: &str) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(format!("{}/v1", app.base))
        .with_api_key(key);
    Client::build(crate::support::client(), config)
}

fn ollama_chat_request() -> ChatMessageRequest {
    ChatMessageRequest::new(
        "llama3.1:8b".into(),
        vec![ChatMessage::user("hello".into())],
    )
}

fn openai_chat_request(stream: bool, include_usage: Option<bool>) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("llama3.1:8b")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hello")
            .build()
            .expect("user message")
            .into()]);
    if stream {
        args.stream(true);
    }
    if let Some(include_usage) = include_usage {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(include_usage),
            include_obfuscation: None,
        });
    }
    args.build().expect("chat request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_rs_end_to_end() {
    let app = TestApp::spawn().await;
    let k = client_key(&app).await;
    let ollama = ollama_client(&app, &k.key);

    // Chat.
    let reply = ollama
        .send_chat_messages(ollama_chat_request())
        .await
        .expect("chat through tollgate");
    assert_eq!(reply.message.content, FULL_TEXT);
    assert!(reply.done);
    let final_data = reply.final_data.expect("final counts");
    assert_eq!(final_data.prompt_eval_count, 11);
    assert_eq!(final_data.eval_count, 5);

    // Streaming chat.
    let mut stream = ollama
        .send_chat_messages_stream(ollama_chat_request())
        .await
        .expect("streaming chat through tollgate");
    let mut text = String::new();
    let mut frames = 0;
    let mut last = None;
    while let Some(item) = stream.next().await {
        let item = item.expect("a stream item");
        text.push_str(&item.message.content);
        frames += 1;
        last = Some(item);
    }
    assert_eq!(text, FULL_TEXT);
    assert_eq!(frames, 6, "five content frames and the final one");
    let last = last.expect("frames");
    assert!(last.done);
    assert_eq!(last.final_data.expect("final counts").eval_count, 5);

    // Embeddings.
    let embedded = ollama
        .generate_embeddings(GenerateEmbeddingsRequest::new(
            "nomic-embed-text".into(),
            vec!["first", "second"].into(),
        ))
        .await
        .expect("embeddings through tollgate");
    assert_eq!(embedded.embeddings.len(), 2);
    assert!(embedded.embeddings.iter().all(|e| e.len() == 4));

    // List models: only the key's.
    let models = ollama
        .list_local_models()
        .await
        .expect("list through tollgate");
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["llama3.1:8b", "nomic-embed-text:latest"]);

    // The requests went through tollgate: one usage row each, right counts.
    let rows = logs_for(&app, &k.key_id).await;
    let chats: Vec<_> = rows.iter().filter(|r| r["route"] == "/api/chat").collect();
    assert_eq!(chats.len(), 2, "{rows:#?}");
    assert!(
        chats
            .iter()
            .all(|r| r["prompt_tokens"] == 11 && r["completion_tokens"] == 5)
    );
    assert_eq!(
        rows.iter().filter(|r| r["route"] == "/api/embed").count(),
        1
    );

    // A model outside the key's list is refused before Ollama.
    let seen = app.ollama.request_count();
    let refused = ollama
        .send_chat_messages(ChatMessageRequest::new(
            "qwen2.5:7b".into(),
            vec![ChatMessage::user("hi".into())],
        ))
        .await;
    match refused {
        Err(OllamaError::Other(body)) => assert!(body.contains("model_not_allowed"), "{body}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(app.ollama.request_count(), seen);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_rs_bad_key_is_an_auth_error() {
    let app = TestApp::spawn().await;
    let ollama = ollama_client(&app, &bad_key());
    let is_auth_error = |e: OllamaError| match e {
        OllamaError::Other(body) => {
            assert!(body.contains("\"unauthorized\""), "{body}");
        }
        other => panic!("expected the 401 body, got {other:?}"),
    };
    is_auth_error(
        ollama
            .send_chat_messages(ollama_chat_request())
            .await
            .expect_err("bad key"),
    );
    is_auth_error(
        ollama
            .send_chat_messages_stream(ollama_chat_request())
            .await
            .err()
            .expect("bad key"),
    );
    is_auth_error(
        ollama
            .generate_embeddings(GenerateEmbeddingsRequest::new(
                "nomic-embed-text".into(),
                "a".into(),
            ))
            .await
            .expect_err("bad key"),
    );
    is_auth_error(ollama.list_local_models().await.expect_err("bad key"));
    // Without any key at all, too.
    let anonymous = Ollama::builder().url(app.base.as_str()).build();
    is_auth_error(anonymous.list_local_models().await.expect_err("no key"));
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_end_to_end() {
    let app = TestApp::spawn().await;
    let k = client_key(&app).await;
    let client = openai_client(&app, &k.key);

    // Chat.
    let reply = client
        .chat()
        .create(openai_chat_request(false, None))
        .await
        .expect("chat through tollgate");
    assert_eq!(reply.choices.len(), 1);
    assert_eq!(reply.choices[0].message.content.as_deref(), Some(FULL_TEXT));
    let usage = reply.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 5));

    // Streaming chat without include_usage: no usage chunk at all.
    let mut stream = client
        .chat()
        .create_stream(openai_chat_request(true, None))
        .await
        .expect("stream through tollgate");
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        assert!(chunk.usage.is_none(), "no usage unasked: {chunk:?}");
        assert!(!chunk.choices.is_empty(), "no usage-only chunk: {chunk:?}");
        text.push_str(
            chunk.choices[0]
                .delta
                .content
                .as_deref()
                .unwrap_or_default(),
        );
    }
    assert_eq!(text, FULL_TEXT);
    let forwarded = app.ollama.last_request().expect("forwarded").json();
    assert_eq!(
        forwarded["stream_options"]["include_usage"], true,
        "tollgate asked Ollama for usage"
    );

    // Streaming chat with include_usage: the final usage is there.
    let mut stream = client
        .chat()
        .create_stream(openai_chat_request(true, Some(true)))
        .await
        .expect("stream through tollgate");
    let mut text = String::new();
    let mut usages = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a chunk");
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "the usage chunk has no choices");
            usages.push(u);
        } else {
            text.push_str(
                chunk.choices[0]
                    .delta
                    .content
                    .as_deref()
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(text, FULL_TEXT);
    assert_eq!(usages.len(), 1, "exactly one usage chunk");
    assert_eq!(
        (usages[0].prompt_tokens, usages[0].completion_tokens),
        (11, 5)
    );

    // Embeddings.
    let embedded = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("nomic-embed-text")
                .input(vec!["first", "second"])
                .build()
                .expect("embedding request"),
        )
        .await
        .expect("embeddings through tollgate");
    assert_eq!(embedded.data.len(), 2);
    assert_eq!(embedded.usage.prompt_tokens, 11);

    // List models: only the key's.
    let models = client
        .models()
        .list()
        .await
        .expect("models through tollgate");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["llama3.1:8b", "nomic-embed-text:latest"]);
    let one = client
        .models()
        .retrieve("llama3.1:8b")
        .await
        .expect("one model");
    assert_eq!(one.id, "llama3.1:8b");

    // Usage rows: three chats with 11/5 tokens each, one embedding.
    let rows = logs_for(&app, &k.key_id).await;
    let chats: Vec<_> = rows
        .iter()
        .filter(|r| r["route"] == "/v1/chat/completions")
        .collect();
    assert_eq!(chats.len(), 3, "{rows:#?}");
    assert!(
        chats
            .iter()
            .all(|r| r["prompt_tokens"] == 11 && r["completion_tokens"] == 5),
        "{chats:#?}"
    );
    let embeds: Vec<_> = rows
        .iter()
        .filter(|r| r["route"] == "/v1/embeddings")
        .collect();
    assert_eq!(embeds.len(), 1);
    assert_eq!(embeds[0]["prompt_tokens"], 11);

    // A model outside the key's list: a 403 API error.
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("qwen2.5:7b")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("hello")
            .build()
            .expect("user message")
            .into()]);
    match client.chat().create(args.build().expect("request")).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 403);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_allowed"));
        }
        other => panic!("expected a 403 API error, got {other:?}"),
    }
    app.shutdown().await;
}

/// async-openai sees a bad key as a 401 `ApiError` on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_openai_bad_key_is_an_auth_error() {
    let app = TestApp::spawn().await;
    let client = openai_client(&app, &bad_key());
    let is_auth_error = |e: OpenAIError| match e {
        OpenAIError::ApiError(e) => {
            assert_eq!(e.status_code.as_u16(), 401, "{e}");
            assert_eq!(e.api_error.code.as_deref(), Some("unauthorized"), "{e}");
        }
        other => panic!("expected a 401 API error, got {other:?}"),
    };
    is_auth_error(
        client
            .chat()
            .create(openai_chat_request(false, None))
            .await
            .expect_err("bad key"),
    );
    is_auth_error(
        client
            .chat()
            .create_stream(openai_chat_request(true, Some(true)))
            .await
            .err()
            .expect("bad key"),
    );
    is_auth_error(
        client
            .embeddings()
            .create(
                CreateEmbeddingRequestArgs::default()
                    .model("nomic-embed-text")
                    .input("a")
                    .build()
                    .expect("request"),
            )
            .await
            .expect_err("bad key"),
    );
    is_auth_error(client.models().list().await.expect_err("bad key"));
    assert_eq!(app.ollama.request_count(), 0);
    app.shutdown().await;
}
