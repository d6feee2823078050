"""Server settings as one frozen dataclass; ``lhama serve`` maps its flags onto it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from lhama.errors import ConfigError
from lhama.paths import server_data_dir
from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS, SamplingDefaults


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # When set, every /v1 route needs "Authorization: Bearer <api_key>". The page, /health and
    # /metrics stay open so a load balancer and Prometheus need no secret.
    api_key: str | None = None
    # Requests the server holds beyond what the engine runs at once (``max_num_seqs``); past
    # that a generation request gets 429 with Retry-After instead of an ever longer wait.
    max_queue: int = 64
    max_num_seqs: int = 64
    max_body_bytes: int = 8 * 2**20  # JSON bodies; 413 past it
    max_file_bytes: int = 256 * 2**20  # uploads to /v1/files
    max_n: int = 16  # largest ``n`` one request may ask for
    max_embedding_inputs: int = 256
    # Model ids clients may send; the first is what /v1/models lists.
    served_model_names: tuple[str, ...] = ()
    # Local files (the state database when state_db is unset, file copies, SQLite vector stores).
    data_dir: Path = field(default_factory=server_data_dir)
    # Files, batches, vector stores and stored responses: a SQLite path or a postgresql:// URL
    # that every replica shares (None: <data_dir>/state.db). See lhama.server.state_db.
    state_db: str | None = None
    # A batch line claimed by a server that stops renewing it (it died) goes to another after this.
    batch_lease_s: float = 30.0
    batch_concurrency: int = 8  # batch lines in flight at once, so interactive traffic keeps flowing
    retry_after_s: int = 1
    # What the sampling fields a request leaves out take: lhama's one set of defaults (a missing
    # seed samples afresh); `lhama serve --temperature ...` changes them.
    sampling: SamplingDefaults = REQUEST_SAMPLING_DEFAULTS

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"the body limit must be >= 1 KiB, got {self.max_body_bytes} bytes")
        if self.batch_lease_s <= 0:
            raise ConfigError(f"--batch-lease must be > 0, got {self.batch_lease_s}")
        if self.batch_concurrency < 1:
            raise ConfigError(f"--batch-concurrency must be >= 1, got {self.batch_concurrency}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "served_model_names", tuple(self.served_model_names))

    @property
    def state_db_location(self) -> str:
        return self.state_db or str(self.data_dir / "state.db")

    @property
    def max_in_flight(self) -> int:
        return self.max_num_seqs + self.max_queue

    def with_(self, **changes) -> ServerConfig:
        return replace(self, **changes)
