"""`vault service add|set` flags of the brokered auth types (OAuth2, token exchange, AWS SigV4/STS).

Each flag is an `Annotated` option type; `brokered_fields(params)` maps the parsed values (typer's
`ctx.params`) to the SPEC §5.5 field names of the service's `auth` object. Flags name credential KEYS,
never values.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

Opt = typer.Option

TokenUrlOpt = Annotated[str | None, Opt("--token-url", help="oauth2/token-exchange: token endpoint URL.")]
ClientIdKeyOpt = Annotated[str | None, Opt("--client-id-key", help="oauth2: client id from KEY.")]
ClientSecretKeyOpt = Annotated[str | None, Opt("--client-secret-key", help="oauth2: client secret from KEY.")]
ScopeOpt = Annotated[list[str] | None, Opt("--scope", help="oauth2: scope to request (repeatable).")]
AudienceOpt = Annotated[str | None, Opt("--audience", help="oauth2/token-exchange: audience.")]
TokenAuthOpt = Annotated[
    str | None, Opt("--token-auth", help="oauth2: client credentials as HTTP basic (default) or post.")
]
RefreshTokenKeyOpt = Annotated[
    str | None, Opt("--refresh-token-key", help="oauth2-refresh-token: refresh token from KEY.")
]
SubjectTokenKeyOpt = Annotated[
    str | None, Opt("--subject-token-key", help="token-exchange: subject token from KEY.")
]
SubjectTokenTypeOpt = Annotated[
    str | None, Opt("--subject-token-type", help="token-exchange: subject token type URN.")
]
AwsKeyIdOpt = Annotated[str | None, Opt("--aws-access-key-id-key", help="aws-sigv4: access key id from KEY.")]
AwsSecretOpt = Annotated[
    str | None, Opt("--aws-secret-access-key-key", help="aws-sigv4: secret access key from KEY.")
]
AwsSessionOpt = Annotated[
    str | None, Opt("--aws-session-token-key", help="aws-sigv4: session token from KEY.")
]
AwsRegionOpt = Annotated[str | None, Opt("--aws-region", help="aws-sigv4: region, e.g. us-east-1.")]
AwsServiceOpt = Annotated[str | None, Opt("--aws-service", help="aws-sigv4: signing name, e.g. s3.")]
AwsRoleArnOpt = Annotated[str | None, Opt("--aws-role-arn", help="aws-sigv4: assume this role with STS.")]
AwsExternalIdOpt = Annotated[
    str | None, Opt("--aws-external-id-key", help="aws-sigv4 + role: STS external id from KEY.")
]
AwsStsEndpointOpt = Annotated[
    str | None, Opt("--aws-sts-endpoint", help="aws-sigv4 + role: STS URL (default: regional AWS).")
]

#: CLI parameter name -> auth field name.
FIELDS = {
    "token_url": "token_url",
    "client_id_key": "client_id",
    "client_secret_key": "client_secret",
    "scope": "scopes",
    "audience": "audience",
    "token_auth": "token_auth",
    "refresh_token_key": "refresh_token",
    "subject_token_key": "subject_token",
    "subject_token_type": "subject_token_type",
    "aws_access_key_id_key": "access_key_id",
    "aws_secret_access_key_key": "secret_access_key",
    "aws_session_token_key": "session_token",
    "aws_region": "region",
    "aws_service": "service",
    "aws_role_arn": "role_arn",
    "aws_external_id_key": "external_id",
    "aws_sts_endpoint": "sts_endpoint",
}


#: Auth fields that name credential keys.
KEY_FIELDS = (
    "client_id",
    "client_secret",
    "refresh_token",
    "subject_token",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "external_id",
)


def brokered_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The brokered auth fields given on the command line (unset flags omitted)."""
    return {field: params[p] for p, field in FIELDS.items() if params.get(p) not in (None, [], ())}
