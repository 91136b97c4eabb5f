"""schemathesis checks of oxinfer's own (loaded with SCHEMATHESIS_HOOKS by test_schemathesis.py)."""

import json

import schemathesis


@schemathesis.check
def errors_are_json(ctx, response, case):
    """Every error answer is `{"error": "<message>"}` with Content-Type application/json."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type == "application/json", f"error {response.status_code} with Content-Type {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return None
