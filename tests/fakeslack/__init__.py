"""Fake Slack for tests: Web API server, Socket Mode server and signed-request builders.

Typical use::

    with FakeSlack(socket_mode=True) as fake:
        client = WebClient(token=fake.token, base_url=fake.base_url)
        ...
        call = fake.wait_for("chat.postMessage")
"""

from .server import (
    APP_TOKEN_METHODS,
    JSON_FIELDS,
    RESPONSE_URL_PREFIX,
    UPLOAD_METHOD,
    ApiHandler,
    Call,
    FakeSlack,
    SlackApiFault,
    UploadedFile,
)
from .signing import (
    DEFAULT_MESSAGE_TS,
    DEFAULT_RESPONSE_URL,
    DEFAULT_VERIFICATION_TOKEN,
    FORM_CONTENT_TYPE,
    PostResult,
    block_actions_body,
    block_actions_payload,
    interactive_body,
    new_trigger_id,
    post_signed,
    sign,
    slash_command_body,
    slash_command_payload,
)
from .socket_mode import FakeSocketMode

__all__ = [
    "APP_TOKEN_METHODS",
    "DEFAULT_MESSAGE_TS",
    "DEFAULT_RESPONSE_URL",
    "DEFAULT_VERIFICATION_TOKEN",
    "FORM_CONTENT_TYPE",
    "JSON_FIELDS",
    "RESPONSE_URL_PREFIX",
    "UPLOAD_METHOD",
    "ApiHandler",
    "Call",
    "FakeSlack",
    "FakeSocketMode",
    "PostResult",
    "SlackApiFault",
    "UploadedFile",
    "block_actions_body",
    "block_actions_payload",
    "interactive_body",
    "new_trigger_id",
    "post_signed",
    "sign",
    "slash_command_body",
    "slash_command_payload",
]
