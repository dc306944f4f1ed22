"""Hub settings, read from ``PEFT_HUB_*`` environment variables and passed to
:func:`peft_hub.hub.app.create_app` (never read as module globals)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from peft_hub.paths import home as default_home
from peft_hub.paths import token_file


class Settings(BaseSettings):
    """Everything the hub needs to start."""

    model_config = SettingsConfigDict(env_prefix="PEFT_HUB_", extra="ignore")

    #: SQLAlchemy URL: ``sqlite:///path`` (embedded default) or ``postgresql+psycopg://…``.
    db_url: str = Field(default_factory=lambda: f"sqlite:///{default_home() / 'hub.db'}")
    #: A directory path (``file://`` optional) or ``s3://bucket/prefix``.
    storage: str = Field(default_factory=lambda: str(default_home() / "blobs"))
    host: str = "127.0.0.1"
    port: int = 8000
    #: Token for the first admin; generated and printed once when unset.
    admin_token: str | None = None
    #: Name of the first admin's namespace.
    admin_name: str = "admin"
    #: Where the generated admin token is saved for the CLI on this machine.
    token_file: Path = Field(default_factory=token_file)
    #: Seconds an unreferenced blob is kept before ``gc`` deletes it.
    gc_grace_seconds: int = 3600
    #: S3 endpoint that clients use, when it differs from the hub's own
    #: (``AWS_ENDPOINT_URL``), e.g. behind Docker networking. Presigned URLs use it.
    s3_public_url: str | None = None
    #: Lifetime of presigned S3 URLs, in seconds.
    presign_expiry: int = 3600
    #: Secret that signs the HF LFS upload URLs; generated per process when
    #: unset (set it when running several hub processes).
    session_secret: str | None = None
    #: Comma-separated addresses of reverse proxies whose X-Forwarded-For is
    #: believed (e.g. ``127.0.0.1`` behind a local nginx); empty: none.
    trusted_proxies: str = ""
    #: Mark the web session cookie Secure (set when the hub is served over HTTPS).
    secure_cookies: bool = False
    #: Failed authentications allowed per client address in a window; more get 429.
    auth_failures_per_address: int = Field(default=10, ge=1)
    #: Failed authentications allowed per token lookup prefix in a window; then
    #: even the right token for that lookup gets 429 until the window passes.
    auth_failures_per_lookup: int = Field(default=5, ge=1)
    #: Length of the failed-authentication window, in seconds.
    auth_failure_window_seconds: int = Field(default=60, ge=1)
    #: Lifetime of a web sign-in, in seconds (never past its token's expiry).
    web_session_seconds: int = Field(default=14 * 24 * 3600, ge=60)
