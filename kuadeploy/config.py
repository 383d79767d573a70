"""Configuration (DESIGN §6): `kuadeploy.toml`, every key optional, env overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

Role = Literal["reader", "deployer", "admin"]
Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
# host:port, port 0-65535 (0: any free port); an IPv6 host in brackets
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
Listen = Annotated[str, msgspec.Meta(pattern=f"^([^:\\s]*|\\[[0-9a-fA-F:.]+\\]):{_PORT}$")]
# the schemes the engine client speaks (a bare socket path is a common slip)
DockerUrl = Annotated[str, msgspec.Meta(pattern="^(unix|tcp|http|https)://.+")]
# A wait or timeout of zero or less spins (a heartbeat, a health poll) or fails at once
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    docker: DockerUrl
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class TokenConfig(msgspec.Struct, forbid_unknown_fields=True):
    actor: str
    role: Role
    sha256: Sha256Hex


class SecretsConfig(msgspec.Struct, forbid_unknown_fields=True):
    command: list[str] | None = None
    dir: str | None = None


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True):
    secret: str | None = None
    repos: dict[str, str] = {}
    authorization: str | None = None


class GitSinkConfig(msgspec.Struct, forbid_unknown_fields=True):
    repo: str
    branch: str = "registry"


class ExportConfig(msgspec.Struct, forbid_unknown_fields=True):
    git: GitSinkConfig | None = None


class GitCredentials(msgspec.Struct, forbid_unknown_fields=True):
    """For repos whose URL starts with the key under [git.credentials]."""

    token: str | None = None
    username: str | None = None
    ssh_key: str | None = None
    ssh_pubkey: str | None = None
    ssh_passphrase: str | None = None


class GitConfig(msgspec.Struct, forbid_unknown_fields=True):
    credentials: dict[str, GitCredentials] = {}


class DeployConfig(msgspec.Struct, forbid_unknown_fields=True):
    fetch_timeout_s: Seconds = 300.0
    build_timeout_s: Seconds = 1800.0
    migrate_timeout_s: Seconds = 900.0
    recreate_timeout_s: Seconds = 120.0
    # verify has its own timeout_s + stable_s per app; this bounds everything else
    verify_grace_s: Seconds = 30.0
    gate_expiry_s: Seconds = 24 * 3600.0
    health_poll_s: Seconds = 0.25


class Config(msgspec.Struct, forbid_unknown_fields=True):
    data_dir: str = "data"
    listen: Listen = "127.0.0.1:8080"
    legacy_registry: str | None = None
    snapshot_every: int = 4096
    sse_heartbeat_s: Seconds = 15.0
    # Signed checkpoints (kuadeploy/audit): at most one every interval under load.
    checkpoint_interval_s: float = 1.0
    checkpoint_mirror: str | None = None  # default DATA_DIR/checkpoints/latest
    checkpoint_key: str | None = None  # signer key file; default DATA_DIR/keys/checkpoint.key
    checkpoint_origin: str | None = None  # default: the key's name, kuadeploy/<hostname>
    servers: dict[str, ServerConfig] = {}
    tokens: list[TokenConfig] = []
    secrets: SecretsConfig = msgspec.field(default_factory=SecretsConfig)
    webhook: WebhookConfig = msgspec.field(default_factory=WebhookConfig)
    export: ExportConfig = msgspec.field(default_factory=ExportConfig)
    git: GitConfig = msgspec.field(default_factory=GitConfig)
    deploy: DeployConfig = msgspec.field(default_factory=DeployConfig)

    @property
    def ledger_path(self) -> str:
        return str(Path(self.data_dir) / "ledger.db")

    @property
    def checkpoint_mirror_path(self) -> Path:
        return Path(self.checkpoint_mirror or Path(self.data_dir) / "checkpoints" / "latest")

    @property
    def checkpoint_key_path(self) -> Path:
        return Path(self.checkpoint_key or Path(self.data_dir) / "keys" / "checkpoint.key")


class ConfigError(Exception):
    pass


def load_config(path: str | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the TOML file (from `path`, else KUA_CONFIG, else none) and apply env overrides."""
    env = os.environ if env is None else env
    path = path or env.get("KUA_CONFIG")
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            config = msgspec.toml.decode(raw, type=Config)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    else:
        config = Config()
    overrides = {}
    if env.get("KUA_DATA_DIR"):
        overrides["data_dir"] = env["KUA_DATA_DIR"]
    if env.get("KUA_LISTEN"):
        overrides["listen"] = env["KUA_LISTEN"]
    if overrides:
        config = msgspec.structs.replace(config, **overrides)
        try:  # the same schema for what the environment set
            msgspec.convert(msgspec.to_builtins(config), Config)
        except msgspec.ValidationError as exc:
            names = ", ".join(f"KUA_{k.upper()}" for k in sorted(overrides))
            raise ConfigError(f"environment {names}: {exc}") from exc
    if not config.servers:
        docker = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        config = msgspec.structs.replace(config, servers={"local": ServerConfig(docker=docker)})
    return config
