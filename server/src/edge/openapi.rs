//! `GET /openapi.json`: the OpenAPI 3.0 description of the HTTP API (the WebSocket route is
//! described in the README). Checked against the running server by schemathesis in the tests.

use axum::Json;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn errors(codes: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|(code, what)| (code.to_string(), error_response(what)))
        .collect()
}

fn with(mut base: serde_json::Map<String, Value>, code: &str, response: Value) -> Value {
    base.insert(code.to_owned(), response);
    Value::Object(base)
}

const AUTH: [(&str, &str); 4] = [
    (
        "400",
        "Malformed request (document name, parameters, Idempotency-Key or body)",
    ),
    ("401", "No valid token"),
    ("403", "The token does not grant this access"),
    ("503", "The server is shutting down"),
];

fn json_ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The OpenAPI document.
pub fn spec() -> Value {
    let doc_param = json!({"name": "doc", "in": "path", "required": true,
        "description": "Document name (1 to 256 bytes, no control characters)",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256,
                   "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"}});
    let token_param = json!({"name": "token", "in": "query", "required": false,
        "description": "Access token (alternative to `Authorization: Bearer`)",
        "schema": {"type": "string"}});
    let mut read_errors = errors(&AUTH);
    read_errors.insert("404".into(), error_response("No such document"));
    let mut stream_errors = errors(&AUTH);
    stream_errors.insert(
        "429".into(),
        error_response("Over the per-IP connection rate"),
    );
    stream_errors.insert("503".into(), error_response("At --max-connections"));
    let key_param = json!({"name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Makes a retry safe: a write with a key this user already used on this \
            document is not done again and gets the first answer (status, body, ETag) with \
            `Idempotent-Replayed: true`; while the first request is still running, the retry \
            waits for its answer. Keys are kept 24 h. The same key with another request \
            (method, path, If-Match / If-None-Match or body) is a 422.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}});
    let replayed = json!({"Idempotent-Replayed": {"description": "`true` when the answer is \
        the one an earlier request with the same Idempotency-Key got",
        "schema": {"type": "string", "enum": ["true"]}}});
    let mut write_errors = read_errors.clone();
    write_errors.insert("413".into(), error_response("Body over the size limit"));
    write_errors.insert(
        "422".into(),
        error_response(
            "Over a document limit, or the Idempotency-Key was used with a different request \
             (`unprocessable`)",
        ),
    );
    let written = |description: &str, schema: Value| {
        json!({"description": description, "headers": replayed,
            "content": {"application/json": {"schema": schema}}})
    };
    let mut admin_errors = errors(&AUTH);
    admin_errors.insert(
        "422".into(),
        error_response("The Idempotency-Key was used with a different request"),
    );
    let mut spec = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tandem",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Real-time collaboration server: Yjs documents with text fields and last-write-wins registers. Text offsets are UTF-16 code units. Errors are {\"error\": code, \"message\": text}."
        },
        "paths": {
            "/healthz": {"get": {
                "summary": "Liveness",
                "responses": {
                    "200": json_ok("Serving", json!({"type": "object", "required": ["status"],
                        "properties": {"status": {"type": "string"}, "version": {"type": "string"},
                                       "mode": {"type": "string", "enum": ["development", "secured"]}}})),
                    "503": error_response("Shutting down")
                }
            }},
            "/readyz": {"get": {
                "summary": "Readiness: whether this node can serve everything it promises",
                "responses": {
                    "200": json_ok("Ready", readiness()),
                    "503": {"description": "Not ready: shutting down, the shared store does not \
                        answer, or (several nodes) the bus to the others is down (degraded)",
                        "content": {"application/json": {"schema": readiness()}}}
                }
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": json_ok("OpenAPI 3.0 document", json!({"type": "object"}))}
            }},
            "/docs/{doc}": {"get": {
                "summary": "Snapshot of a document",
                "parameters": [doc_param, token_param],
                "responses": with(read_errors.clone(), "200",
                    json_ok("The document", json!({"$ref": "#/components/schemas/Snapshot"})))
            }},
            "/docs/{doc}/events": {"get": {
                "summary": "Server-Sent Events: snapshot, text, field and presence events; id = sid. A document nobody has written yet streams from an empty snapshot at sid 0. The stream counts against --max-connections and ends with a `close` event at token expiry or revocation",
                "parameters": [doc_param, token_param,
                    {"name": "since", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["json", "yjs"]}},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0}}],
                "responses": with(stream_errors, "200", json!({"description": "An event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}))
            }},
            "/docs/{doc}/updates": {"get": {
                "summary": "One binary Yjs update holding every change after `since`",
                "parameters": [doc_param, token_param,
                    {"name": "since", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}}],
                "responses": with(with(read_errors.clone().into_iter().collect(), "410",
                        error_response("That part of the log was compacted away: do a full sync"))
                    .as_object().cloned().unwrap_or_default(), "200",
                    json!({"description": "Yjs update (v1)", "headers": {"X-Tandem-Sid": {"schema": {"type": "integer"}}},
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}))
            }},
            "/docs/{doc}/update": {"post": {
                "summary": "Apply a binary Yjs update (v1); answers once durable",
                "parameters": [doc_param, token_param, key_param],
                "requestBody": {"required": true, "content": {"application/octet-stream":
                    {"schema": {"type": "string", "format": "binary"}}}},
                "responses": with(write_errors.clone(), "200",
                    written("Stored", json!({"type": "object", "required": ["sid"],
                        "properties": {"sid": {"type": "integer", "minimum": 0}}})))
            }},
            "/docs/{doc}/fields/{name}": {
                "parameters": [doc_param, {"name": "name", "in": "path", "required": true,
                    "description": "Register name: 1 to 64 characters, not starting with `tandem:`",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                               "pattern": "^(?!tandem:)"}}, token_param, key_param,
                    {"name": "If-Match", "in": "header", "required": false,
                     "description": "Write only if the register's version is still this one (quoted)",
                     "schema": {"type": "string"}}],
                "put": {
                    "summary": "Set a register to the JSON body",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {}}}},
                    "responses": with(with(write_errors.clone(), "412",
                            error_response("The version in If-Match is stale; `current` holds the register"))
                        .as_object().cloned().unwrap_or_default(), "200",
                        written("Written", json!({"$ref": "#/components/schemas/FieldWrite"})))
                },
                "delete": {
                    "summary": "Delete a register",
                    "responses": with(with(write_errors.clone(), "412",
                            error_response("The version in If-Match is stale; `current` holds the register"))
                        .as_object().cloned().unwrap_or_default(), "200",
                        written("Deleted", json!({"type": "object", "required": ["name", "deleted", "sid"],
                            "properties": {"name": {"type": "string"}, "deleted": {"type": "boolean"},
                                           "sid": {"type": "integer"}}})))
                }
            },
            "/docs/{doc}/texts/{field}": {"post": {
                "summary": "Edit a text field (UTF-16 offsets); answers once durable",
                "parameters": [doc_param, {"name": "field", "in": "path", "required": true,
                    "description": "Text field name: 1 to 64 characters, not starting with `tandem:`",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64,
                               "pattern": "^(?!tandem:)"}}, token_param, key_param],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["index"],
                    "properties": {"index": {"type": "integer", "minimum": 0},
                                   "delete": {"type": "integer", "minimum": 0},
                                   "insert": {"type": "string"}}}}}},
                "responses": with(write_errors.clone(), "200",
                    written("Edited", json!({"type": "object", "required": ["sid", "field", "text"],
                        "properties": {"sid": {"type": "integer"}, "field": {"type": "string"},
                                       "text": {"type": "string"}}})))
            }},
            "/docs/{doc}/history": {"get": {
                "summary": "Retained checkpoints, oldest first",
                "parameters": [doc_param, token_param],
                "responses": with(read_errors.clone(), "200",
                    json_ok("Checkpoints", json!({"type": "object", "required": ["doc", "checkpoints"],
                        "properties": {"doc": {"type": "string"}, "checkpoints": {"type": "array",
                            "items": {"type": "object", "required": ["sid", "at", "authors"],
                                "properties": {"sid": {"type": "integer"}, "at": {"type": "integer"},
                                    "authors": {"type": "array", "items": {"type": "string"}}}}}}})))
            }},
            "/admin/revoke": {"post": {
                "summary": "Refuse every token of a user issued up to now and close the user's connections (admin role)",
                "parameters": [token_param, key_param],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["user"], "additionalProperties": false,
                    "properties": {"user": {"type": "string", "minLength": 1}}}}}},
                "responses": with(admin_errors, "200",
                    written("Revoked", json!({"type": "object", "required": ["user", "revoked_at", "closed"],
                        "properties": {"user": {"type": "string"}, "revoked_at": {"type": "integer"},
                                       "closed": {"type": "integer", "minimum": 0}}})))
            }},
            "/docs/{doc}/history/{sid}": {"get": {
                "summary": "The document as it was at a checkpoint",
                "parameters": [doc_param, {"name": "sid", "in": "path", "required": true,
                    "schema": {"type": "integer", "minimum": 0}}, token_param],
                "responses": with(read_errors, "200",
                    json_ok("The document", json!({"$ref": "#/components/schemas/Snapshot"})))
            }}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "Field": {"type": "object", "required": ["value", "version", "at"],
                "properties": {"value": {}, "version": {"type": "string"},
                    "author": {"type": "string", "nullable": true}, "at": {"type": "integer"}}},
            "FieldWrite": {"allOf": [{"$ref": "#/components/schemas/Field"},
                {"type": "object", "required": ["name", "sid"],
                 "properties": {"name": {"type": "string"}, "sid": {"type": "integer"}}}]},
            "Snapshot": {"type": "object", "required": ["doc", "sid", "texts", "fields"],
                "properties": {"doc": {"type": "string"}, "sid": {"type": "integer"},
                    "texts": {"type": "object", "additionalProperties": {"type": "string"}},
                    "fields": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Field"}}}}
        }}
    });
    for (path, item) in notification_paths(&token_param) {
        spec["paths"][path] = item;
    }
    spec["components"]["schemas"]["Notification"] = json!({"type": "object",
        "required": ["id", "type", "doc", "field", "from", "at", "excerpt", "read"],
        "properties": {"id": {"type": "integer", "minimum": 1},
            "type": {"type": "string", "enum": ["mention", "assigned", "reply", "due"]},
            "doc": {"type": "string"}, "field": {"type": "string"},
            "from": {"type": "string", "nullable": true}, "at": {"type": "integer"},
            "excerpt": {"type": "string"}, "read": {"type": "boolean"}}});
    spec
}

/// `/me/notifications…` and `/admin/webhooks/deliveries…`.
fn notification_paths(token_param: &Value) -> Vec<(&'static str, Value)> {
    let me_errors = errors(&[
        ("400", "Malformed parameters or body"),
        ("401", "No valid token"),
        (
            "503",
            "The server is shutting down, or storage is unavailable",
        ),
    ]);
    let mut stream_errors = me_errors.clone();
    stream_errors.insert(
        "429".into(),
        error_response("Over the per-IP connection rate"),
    );
    let mut admin_errors = errors(&AUTH);
    admin_errors.insert("404".into(), error_response("No such delivery"));
    let unread = json!({"type": "object", "required": ["unread"],
        "properties": {"unread": {"type": "integer", "minimum": 0}}});
    let delivery = json!({"type": "object",
        "required": ["id", "endpoint", "doc", "kind", "first_sid", "last_sid", "attempts",
                     "created_at", "next_at", "state", "events"],
        "properties": {"id": {"type": "integer"}, "endpoint": {"type": "string"},
            "doc": {"type": "string"}, "kind": {"type": "string"},
            "first_sid": {"type": "integer"}, "last_sid": {"type": "integer"},
            "attempts": {"type": "integer"}, "created_at": {"type": "integer"},
            "next_at": {"type": "integer"},
            "state": {"type": "string", "enum": ["pending", "dead"]},
            "last_error": {"type": "string", "nullable": true},
            "events": {"type": "array", "items": {"type": "object"}}}});
    vec![
        (
            "/me/notifications",
            json!({"get": {
                "summary": "The token's user's notifications, newest first (only documents the token reaches). Kept: the newest 1,000 per user, 90 days",
                "parameters": [token_param,
                    {"name": "limit", "in": "query", "required": false,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                    {"name": "before", "in": "query", "required": false,
                     "description": "Only notifications with a smaller id (the `next` of the previous page)",
                     "schema": {"type": "integer", "minimum": 0}}],
                "responses": with(me_errors.clone(), "200", json_ok("A page", json!({"type": "object",
                    "required": ["notifications", "unread", "next"],
                    "properties": {"notifications": {"type": "array",
                            "items": {"$ref": "#/components/schemas/Notification"}},
                        "unread": {"type": "integer", "minimum": 0},
                        "next": {"type": "integer", "nullable": true}}})))
            }}),
        ),
        (
            "/me/notifications/read",
            json!({"post": {
                "summary": "Mark notifications read: `{\"ids\": [..]}` or `{\"all\": true}`",
                "parameters": [token_param],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": false,
                    "properties": {"ids": {"type": "array", "maxItems": 1000,
                                           "items": {"type": "integer", "minimum": 1}},
                                   "all": {"type": "boolean", "enum": [true]}}}}}},
                "responses": with(me_errors, "200", json_ok("How many stay unread", unread))
            }}),
        ),
        (
            "/me/notifications/events",
            json!({"get": {
                "summary": "Server-Sent Events: `notification` (id = notification id, data = the notification) and `unread` ({\"unread\": N}, after connecting and after each read change). Resume with Last-Event-ID or ?since=ID: every notification after it. Ends with a `close` event at token expiry or revocation",
                "parameters": [token_param,
                    {"name": "since", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0}},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0}}],
                "responses": with(stream_errors, "200", json!({"description": "An event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}))
            }}),
        ),
        (
            "/admin/webhooks/deliveries",
            json!({"get": {
                "summary": "Webhook deliveries waiting (pending) or given up after 24 h (dead), oldest first (admin role)",
                "parameters": [token_param,
                    {"name": "state", "in": "query", "required": false,
                     "schema": {"type": "string", "enum": ["pending", "dead"], "default": "pending"}},
                    {"name": "limit", "in": "query", "required": false,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": with(admin_errors.clone(), "200", json_ok("Deliveries", json!({"type": "object",
                    "required": ["state", "deliveries"],
                    "properties": {"state": {"type": "string"},
                        "deliveries": {"type": "array", "items": delivery}}})))
            }}),
        ),
        (
            "/admin/webhooks/deliveries/{id}/replay",
            json!({"post": {
                "summary": "Deliver again: the delivery is pending, due now, its attempts reset (admin role)",
                "parameters": [token_param, {"name": "id", "in": "path", "required": true,
                    "schema": {"type": "integer", "minimum": 1}}],
                "responses": with(admin_errors, "200", json_ok("Pending again", json!({"type": "object",
                    "required": ["id", "state"],
                    "properties": {"id": {"type": "integer"}, "state": {"type": "string"}}})))
            }}),
        ),
    ]
}

/// The body of `/readyz`.
fn readiness() -> Value {
    json!({"type": "object", "required": ["status", "store", "bus"], "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "unavailable", "shutting_down"]},
        "store": {"type": "string", "enum": ["embedded", "up", "down"]},
        "bus": {"type": "string", "enum": ["none", "up", "down"]},
        "node": {"type": "string"},
        "checked_at": {"type": "integer"}
    }})
}

/// The handler.
pub async fn document() -> Json<Value> {
    Json(spec())
}
