"""Schemathesis hooks for `.ci/schemathesis.sh`.

An OpenAPI document cannot say which ids exist: a `team_id` given to /key/generate or
/key/update must name a team, a `key`/`key_id` given to a mapping must name a key, and
otherwise the answer is 400 (SPEC §4.2). `.ci/schemathesis.toml` lets a 400 pass
`positive_data_acceptance` on just those operations; this check then fails every such
400 on schema-valid data unless it is exactly that refusal, so any other disagreement
between the document and the handler still fails the run.
"""

import re

import schemathesis

REFERENCING = {
    "/key/generate",
    "/key/update",
    "/jwt/key/mapping/new",
    "/jwt/key/mapping/update",
}
MISSING_REFERENCE = re.compile(
    r"^field `(team_id|key_id)`: (team `.*` does not exist|no such key)$"
    r"|^refers to something that does not exist$"
)


@schemathesis.check
def refused_only_for_missing_references(ctx, response, case):
    """Schema-valid data on a referencing route is refused only for a missing reference."""
    meta = case.meta
    if (
        case.operation.path not in REFERENCING
        or response.status_code != 400
        or meta is None
        or not meta.generation.mode.is_positive
    ):
        return None
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if not isinstance(message, str) or not MISSING_REFERENCE.search(message):
        raise AssertionError(
            f"Valid data should have been accepted, got 400: {message!r}"
        )
    return None
