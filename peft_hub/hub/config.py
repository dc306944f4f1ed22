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
    #: Seconds a preupload leases the blobs it plans to its push, against gc
    #: and whatever the grace period (even ``gc --grace 0``); the commit ends
    #: the lease, since the revision then references them.
    upload_lease_seconds: int = Field(default=900, ge=0, le=7 * 86400)
    #: S3 endpoint that clients use, when it differs from the hub's own
    #: (``AWS_ENDPOINT_URL``), e.g. behind Docker networking. Presigned URLs use it.
    s3_public_url: str | None = None
    #: Lifetime of presigned S3 URLs, in seconds.
    presign_expiry: int = 3600
    #: Blobs larger than this are pushed in parts, so a killed push resumes:
    #: on S3 a multipart upload with parts sent straight from the client (S3's
    #: smallest part is 5 MiB; a single PUT is at most 5 GiB); on the local
    #: store each part through the hub, joined and hashed at completion.
    #: Up to it, one presigned PUT whose signed sha256 S3 itself checks, so
    #: the hub never reads the bytes back; a multipart blob has no whole-object
    #: sha256 in S3, so publish hashes it once (about 0.35 s per 100 MiB here).
    #: 256 MiB keeps a typical adapter on the single PUT (bench/bench_transfer.py).
    multipart_threshold: int = Field(default=256 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
    #: Part size the hub picks when the client proposes none (raised to fit 10,000 parts).
    multipart_part_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)
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

    # --- dependencies: timeouts and bounds -----------------------------------
    # The client gives up on an answer after 60 s (its read timeout). Every
    # bound below keeps the hub's own work on one request shorter than that,
    # so a push the user saw fail did not happen: a write still running when
    # ``write_deadline`` passes is rolled back instead of committed.

    #: S3 endpoint the hub itself uses (default: boto3's, e.g. ``AWS_ENDPOINT_URL``).
    s3_endpoint_url: str | None = None
    #: Seconds to open a connection to S3.
    s3_connect_timeout: float = Field(default=3.0, gt=0)
    #: Seconds S3 may take to send the next bytes of an answer.
    s3_read_timeout: float = Field(default=10.0, gt=0)
    #: Attempts per S3 call, the first included (botocore "standard" retries).
    s3_max_attempts: int = Field(default=3, ge=1, le=10)
    #: Requests that may use the blob store at once; more wait for a slot.
    #: Keep it below the worker threads (40) and the database pool, so reads
    #: that need no storage always find a thread and a connection.
    storage_concurrency: int = Field(default=16, ge=1, le=32)
    #: Seconds a request waits for a storage slot before a 503 (storage busy).
    storage_queue_timeout: float = Field(default=10.0, gt=0)
    #: Seconds to open a database connection.
    db_connect_timeout: float = Field(default=5.0, gt=0)
    #: Seconds a statement waits for a lock (PostgreSQL ``lock_timeout``;
    #: SQLite's busy timeout) before the request fails with 503.
    db_lock_timeout: float = Field(default=15.0, gt=0)
    #: Seconds one statement may run (PostgreSQL ``statement_timeout``).
    db_statement_timeout: float = Field(default=30.0, gt=0)
    #: Connections kept open, and the extra ones allowed under load.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    #: Seconds a request waits for a free database connection before a 503.
    db_pool_timeout: float = Field(default=10.0, gt=0)
    #: SQLite only: bytes of the database file each connection reads through
    #: a memory map (``PRAGMA mmap_size``) instead of ``read`` into its own 2 MB
    #: page cache; the map shares the kernel's page cache. 0: no map. At
    #: 100,000 adapters (150 MB) a search that reads a base model's rows
    #: takes 0.6 ms instead of 2.2 (bench/bench_search.py).
    sqlite_mmap_bytes: int = Field(default=1024**3, ge=0, le=2**40)
    #: PostgreSQL only: the planner's ``random_page_cost`` for the hub's
    #: sessions; 0 keeps the server's (4 by default, a spinning disk's). The
    #: hub's tables are read from memory or SSD, where a page read at random
    #: costs about what one read in order does: at 4 the planner read 14,600
    #: rows for a text query's facet rather than AND two indexes (14 against
    #: 8 ms at 100,000 adapters, bench/bench_search.py).
    pg_random_page_cost: float = Field(default=1.1, ge=0, le=1000)
    #: Seconds from the last byte of a request to its commit: a change whose
    #: work ran longer is rolled back (503), since its client may have given up.
    write_deadline: float = Field(default=45.0, gt=0)
    #: Seconds this process keeps token -> principal and ``owner/name`` -> the
    #: adapter row with its tags, visibility included, between database reads;
    #: 0: never kept. A write in this process is seen on its next request;
    #: another replica's write within this many seconds (docs/architecture.md).
    cache_ttl: float = Field(default=2.0, ge=0, le=60)
    #: Seconds ``/api/health/ready`` gives the database and the store to answer.
    ready_timeout: float = Field(default=5.0, gt=0)
    #: Seconds the hub keeps retrying an unreachable database or store at start.
    startup_timeout: float = Field(default=60.0, ge=0)
    #: Age in seconds after which unfinished uploads are removed, at start and
    #: by gc: S3 multipart uploads, and local temporary files when the file
    #: system cannot tell whether a live writer holds them (else: at once).
    stale_upload_seconds: int = Field(default=3600, ge=60)

    # --- webhooks ------------------------------------------------------------

    #: Sends of one delivery, the first included, before it is marked failed.
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    #: Seconds before the first retry; each later one waits twice as long (at most an hour).
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: Seconds a receiver may take to connect, and again to answer.
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    #: Seconds between looks at the outbox when nothing was enqueued in this process.
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    #: Allow webhook URLs that resolve to loopback, private or link-local
    #: addresses (off: a hook cannot make the hub call into its own network).
    webhook_allow_private: bool = False
    #: Days a finished delivery (delivered, failed, skipped) is kept after it
    #: finished; 0: kept whatever its age. Pending ones are never pruned.
    webhook_history_days: float = Field(default=30.0, ge=0, le=3650)
    #: Finished deliveries kept per hook, the newest; 0: no cap.
    webhook_history_per_hook: int = Field(default=1000, ge=0, le=1_000_000)
    #: Seconds between prunes of the delivery history, in each hub process.
    webhook_prune_seconds: float = Field(default=600.0, gt=0, le=86400)

    @property
    def webhook_claim_seconds(self) -> float:
        """How far a claim moves a delivery's next attempt: longer than one send can last."""
        return 2 * self.webhook_timeout + 20

    # --- pull-through mirror -------------------------------------------------

    #: An HF-compatible hub (huggingface.co, or another peft-hub) whose public
    #: repos are fetched, verified, stored and served on a read of a repo this
    #: hub does not hold; unset: off.
    upstream: str | None = None
    #: The hub's own token for the upstream; a caller's token is never sent there.
    upstream_token: str | None = None
    #: Seconds to connect to the upstream, and for its next bytes.
    upstream_connect_timeout: float = Field(default=5.0, gt=0, le=60)
    upstream_read_timeout: float = Field(default=15.0, gt=0, le=120)
    #: Seconds a whole fetch may take (kept below ``write_deadline``).
    upstream_fetch_deadline: float = Field(default=30.0, gt=0, le=600)
    #: Bytes one mirrored repo may hold, all files together.
    upstream_max_bytes: int = Field(default=2 * 1024**3, ge=1)
    #: Seconds a repo the upstream does not have (or that cannot be mirrored)
    #: is answered 404 without asking the upstream again.
    upstream_negative_ttl: float = Field(default=60.0, ge=0, le=86400)
