"""Settings: one validated object, loaded from ``config.yaml`` with environment overrides.

Precedence, highest first: environment variables (``INTERNVL_BOT_`` prefix, ``__`` between nested
keys, e.g. ``INTERNVL_BOT_ENGINE__TRANSFORMERS__MODEL``), then the YAML file, then the defaults
below. Unknown keys are errors. Secrets are never read from the file: a section names the
environment variable that holds each secret, and :meth:`Settings.check_secrets` verifies that the
enabled parts have theirs.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import ConfigError
from bot.seams import AccessPolicy, UsageLimits

ENV_PREFIX = "INTERNVL_BOT_"
CONFIG_ENV = "INTERNVL_BOT_CONFIG"
DEFAULT_CONFIG = "config.yaml"


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: field name -> description, for secrets this section needs when it is enabled.
    secrets: ClassVar[dict[str, str]] = {}

    def missing_secrets(self) -> list[str]:
        """Environment variables this section needs and does not find."""
        return [getattr(self, f) for f in self.secrets if not os.environ.get(getattr(self, f), "")]


class GenerationSettings(Section):
    """How answers are sampled."""

    max_new_tokens: int = Field(512, ge=1, le=65536)
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 means greedy decoding")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.05, ge=1.0, le=2.0)


class TransformersSettings(Section):
    """The in-process Hugging Face transformers engine (CPU or a single GPU)."""

    model: str = Field("", description="InternVL -hf checkpoint folder or hub id; empty = demo model")
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default")


class EchoSettings(Section):
    """The echo engine (``engine.kind: echo``): answers with what it received, to check wiring without a model."""

    delay_ms: int = Field(0, ge=0, le=60000, description="pause before each word: simulates a slow model")


class OpenAIHTTPSettings(Section):
    """An OpenAI-compatible server: ``lmdeploy serve api_server``, vLLM, ``transformers serve``, or a load
    balancer in front of several of them."""

    base_url: str = Field("http://127.0.0.1:23333/v1", description="URL up to and including /v1")
    model: str = Field("", description="model name to request; empty = the first one /v1/models lists")
    api_key_env: str = Field("INTERNVL_BOT_ENGINE_API_KEY", description="environment variable with the API key")
    tokenizer: str = Field("", description="tokenizer folder or hub id for exact token counts; empty = estimate")
    connect_timeout: float = Field(5.0, gt=0)
    first_token_timeout: float = Field(120.0, gt=0, description="seconds from the request to the first text")
    token_timeout: float = Field(60.0, gt=0, description="longest pause between two pieces of text")
    retries: int = Field(3, ge=0, le=20, description="re-sends on connection errors, 429 and 5xx, before any text")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds; doubles each time")
    max_backoff: float = Field(20.0, ge=0, description="longest wait between retries, Retry-After included")
    breaker_failures: int = Field(5, ge=1, description="consecutive failed requests that open the circuit")
    breaker_reset: float = Field(30.0, gt=0, description="seconds the open circuit refuses requests")
    max_dynamic_patch: bool = Field(True, description="send each image's tile count (LMDeploy honours it)")
    send_repetition_penalty: bool = Field(True, description="LMDeploy and vLLM accept it; strict OpenAI servers refuse it")
    image_placeholder: str = Field(
        "<IMAGE_TOKEN>",
        description="image marker in the text: <IMAGE_TOKEN> for LMDeploy, <image> for vLLM, empty = interleaved parts",
    )


class LMDeploySettings(Section):
    """LMDeploy in this process (GPU hosts: ``pip install 'internvl-bot[lmdeploy]'``)."""

    model: str = Field("", description="InternVL checkpoint folder or hub id")
    backend: Literal["turbomind", "pytorch"] = "turbomind"
    session_len: int = Field(0, ge=0, description="context length; 0 = the model's")
    cache_max_entry_count: float = Field(0.8, gt=0, le=1, description="share of free GPU memory for the KV cache")
    tp: int = Field(1, ge=1, description="tensor parallel GPUs")
    max_batch_size: int = Field(0, ge=0, description="0 = LMDeploy's default")
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"


class EngineSettings(Section):
    """Which engine answers, and the limits every engine honours."""

    kind: Literal["transformers", "openai_http", "lmdeploy", "echo"] = "transformers"
    max_concurrency: int = Field(1, ge=1, le=1024)
    context_length: int = Field(0, ge=0, description="0 = the model's own context length")
    generation: GenerationSettings = GenerationSettings()
    transformers: TransformersSettings = TransformersSettings()
    echo: EchoSettings = EchoSettings()
    openai_http: OpenAIHTTPSettings = OpenAIHTTPSettings()
    lmdeploy: LMDeploySettings = LMDeploySettings()


class MediaSettings(Section):
    """Limits on what users may send."""

    max_file_bytes: int = Field(20_000_000, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_tiles: int = Field(12, ge=1, le=40)
    history_max_tiles: int = Field(6, ge=1, le=40, description="most tiles for images of earlier turns")
    document_max_tiles: int = Field(24, ge=1, le=40, description="most tiles for a document page")
    max_pdf_pages: int = Field(8, ge=1, le=200, description="pages read from one PDF; the user is told when cut")
    max_images_per_turn: int = Field(8, ge=1, le=64)
    max_pixels_per_message: int = Field(
        100_000_000, ge=1, description="decoded pixels of one turn's images (its own and its history's); past it, "
                                       "the rest is left out and the user told")
    max_pixels_in_flight: int = Field(
        150_000_000, ge=1, description="decoded pixels held at once across all conversations; turns wait for room")
    video_frames: int = Field(8, ge=1, le=64, description="frames sampled from a video, one tile each")
    video_sampling: Literal["reference", "fast"] = "reference"
    max_video_seconds: float = Field(600, gt=0)
    max_video_pixels: int = Field(8_300_000, ge=1, description="largest frame size (4K UHD)")
    resize: Literal["exact", "fast"] = Field(
        "exact", description="exact: bit-identical to InternVL's reference; fast: torch resize, within 2 levels"
    )


class ConversationSettings(Section):
    """History, personas, language and ordering."""

    default_persona: str = "diagnosis"
    personas_dir: str = Field("", description="extra persona YAML folder; its files override built-ins")
    default_language: str = "en"
    languages: list[str] = Field(
        default_factory=lambda: ["en", "pt", "es", "fr", "de", "zh", "ru", "ja", "it", "nl", "pl", "uk"]
    )
    short_text_chars: int = Field(24, ge=0)
    max_message_chars: int = Field(16000, ge=1)
    max_pending_per_conversation: int = Field(20, ge=1)
    delivery_deadline_seconds: float = Field(
        3600.0, gt=0, description="how long a reply the platform did not take is sent again before it is given "
                                  "up (the operator inbox shows it as not delivered)")
    max_parallel_conversations: int = Field(64, ge=1)
    history_token_budget: int = Field(0, ge=0, description="0 = context length minus max_new_tokens")


class StoreSettings(Section):
    """Where conversations are kept: a SQLite file (one process), or PostgreSQL (several replicas)."""

    backend: Literal["sqlite", "postgres"] = Field("sqlite", description="sqlite | postgres")
    path: str = Field("", description="sqlite file; empty = <data_dir>/internvl-bot.sqlite3")
    url_env: str = Field("INTERNVL_BOT_DATABASE_URL",
                         description="postgres: environment variable with postgresql://user:password@host:5432/db")
    lease_seconds: float = Field(30.0, gt=1, le=600, description="postgres: a replica's claim on a conversation; "
                                 "another replica takes over this long after it dies")
    retention_days: int = Field(0, ge=0, description="0 keeps everything")

    @property
    def url(self) -> str:
        return os.environ.get(self.url_env, "")


def _ids(value: object) -> object:
    """Platform ids may be written as numbers in YAML (Telegram ids): compare them as text."""
    if isinstance(value, list | tuple | set):
        return [str(v) for v in value]
    return value


IdList = Annotated[list[str], BeforeValidator(_ids)]


class LimitsSettings(Section):
    """Per-user limits (0 = unlimited), counted in the store so they survive restarts."""

    messages_per_minute: int = Field(0, ge=0)
    messages_per_day: int = Field(0, ge=0)
    images_per_day: int = Field(0, ge=0, description="images, video frames excluded, PDF pages included")
    video_seconds_per_day: float = Field(0, ge=0)
    exempt_users: IdList = Field(default_factory=list, description="user ids the limits never apply to")

    def usage_limits(self) -> UsageLimits:
        return UsageLimits(self.messages_per_minute, self.messages_per_day, self.images_per_day,
                           self.video_seconds_per_day, frozenset(self.exempt_users))


class AdapterSection(Section):
    """What every adapter's section has: on/off, a persona, who may use it, and optional own limits."""

    enabled: bool = False
    persona: str = Field("", description="persona for this adapter's conversations; empty = the default")
    allow_users: IdList = Field(default_factory=list, description="only these user ids (empty = everyone)")
    deny_users: IdList = Field(default_factory=list)
    allow_chats: IdList = Field(default_factory=list, description="only these chats/channels/teams/inboxes")
    deny_chats: IdList = Field(default_factory=list)
    limits: LimitsSettings | None = Field(None, description="this adapter's own per-user limits; empty = limits:")
    training_export: Literal["off", "allowed"] = Field(
        "off", description="allowed: its rated conversations may leave in internvl-bot export sft|mpo")
    knowledge: list[str] = Field(
        default_factory=list, description="knowledge bases this adapter's turns search besides their persona's "
                                          "(`knowledge: [support]`; README, Knowledge bases)")

    @field_validator("training_export", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare off as false

    @field_validator("knowledge", mode="before")
    @classmethod
    def _base_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]  # `knowledge: support` means the one base
        if isinstance(value, list) and not all(isinstance(b, str) and b.strip() for b in value):
            raise ValueError("each entry must be a knowledge base name (as in `kb add BASE`)")
        return list(dict.fromkeys(b.strip() for b in value)) if isinstance(value, list) else value

    def policy(self, defaults: LimitsSettings) -> AccessPolicy:
        """The access policy the core enforces for this adapter."""
        return AccessPolicy(frozenset(self.allow_users), frozenset(self.deny_users), frozenset(self.allow_chats),
                            frozenset(self.deny_chats), (self.limits or defaults).usage_limits())


class AdaptersSettings(Section):
    """One section per adapter. The core knows none of them: ``adapters/registry.py`` builds the full
    model from the adapters it registers (``adapters.registry.AppSettings``)."""


class ServerSettings(Section):
    """``internvl-bot serve``: one HTTP server for the web chat, adapters' webhooks and operations."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    public_url: str = Field("", description="the URL users reach, behind a reverse proxy; printed at start")
    grace_seconds: float = Field(20.0, ge=0, description="on SIGTERM, time answers in progress get to finish")
    proxy_headers: bool = Field(False, description="trust X-Forwarded-For/-Proto from forwarded_allow_ips")
    forwarded_allow_ips: str = "127.0.0.1"
    operator_token_env: str = Field(
        "INTERNVL_BOT_OPERATOR_TOKEN", description="environment variable holding the operator API token; unset = off"
    )


class KnowledgeBaseSettings(Section):
    """One knowledge base: where its documents are (merged with what ``kb add`` stored) and its language."""

    sources: list[str] = Field(default_factory=list,
                               description="what `kb sync` indexes besides what `kb add` stored: files and folders, "
                                           "and the platforms' sources `chatwoot-portal:SLUG` (a Help Center "
                                           "portal's published articles), `django-helpdesk-kb` (its knowledge base) "
                                           "and `solved-tickets:chatwoot` / `solved-tickets:django-helpdesk` "
                                           "(resolved conversations and tickets, people's details removed)")
    language: str = Field("", description="ISO 639-1 code of the documents (postgres stems its words: en -> "
                          "english); empty = no stemming (the 'simple' configuration)")


class EmbeddingsSettings(Section):
    """Optional dense retrieval (bot/knowledge/dense.py): an OpenAI-compatible ``/v1/embeddings`` endpoint
    (vLLM, TEI, LMDeploy). Without ``url`` the bases are searched lexically only, offline."""

    url: str = Field("", description="base URL of the endpoint, e.g. http://gpu1:8000/v1; empty = lexical only")
    model: str = Field("", description="the embedding model's name, sent with every request and kept with "
                       "each vector (a new model re-embeds on `kb sync`)")
    api_key_env: str = Field("", description="environment variable holding the endpoint's API key; empty = none")
    dimensions: int | None = Field(None, ge=1, description="asked of the endpoint (models that can shorten "
                                   "their vectors); unset = the model's own")
    batch: int = Field(64, ge=1, le=2048, description="texts per request at ingest time")
    min_similarity: float = Field(0.6, ge=-1.0, le=1.0,
                                  description="cosine similarity at which a passage is relevant even when "
                                  "its words are not (README, Knowledge bases); depends on the model")


class KnowledgeSettings(Section):
    """Knowledge bases searched for each turn (bot/knowledge): the threshold and how documents are read."""

    min_score: float = Field(0.4, ge=0.0, le=1.0,
                             description="passages scoring less are not relevant (0-1; README, Knowledge bases)")
    max_pages: int = Field(2000, ge=1, description="pages read from one PDF; the rest are skipped with a warning")
    max_file_bytes: int = Field(200_000_000, ge=1, description="larger files are skipped with a warning")
    chunk_chars: int = Field(1200, ge=200, le=20000, description="largest chunk, in characters")
    chunk_overlap: int = Field(150, ge=0, le=5000, description="characters repeated between neighbouring chunks")
    bases: dict[str, KnowledgeBaseSettings] = Field(default_factory=dict,
                                                     description="name -> sources and language")
    page_images: int = Field(2, ge=0, le=6, description="PDF pages of the best passages shown to the model as "
                                                         "images besides their text (0 = text only)")
    link_days: float = Field(30.0, gt=0, description="days a Sources link to a stored PDF keeps working")
    embeddings: EmbeddingsSettings = EmbeddingsSettings()


class HandoffSettings(Section):
    """Where conversations handed to a person are announced (always also a log line)."""

    webhook_url: str = Field("", description="POST each handoff event here, HMAC-signed; empty = log only")
    webhook_secret_env: str = Field("INTERNVL_BOT_HANDOFF_SECRET", description="environment variable with the HMAC key")
    webhook_attempts: int = Field(5, ge=1, le=20)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("_yaml_data", default=None)


class Settings(BaseSettings):
    """Every setting of the framework. See README, section "Configuration", for each key."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    data_dir: str = "./data"
    engine: EngineSettings = EngineSettings()
    conversation: ConversationSettings = ConversationSettings()
    media: MediaSettings = MediaSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    adapters: AdaptersSettings = AdaptersSettings()
    server: ServerSettings = ServerSettings()
    handoff: HandoffSettings = HandoffSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, _yaml_data.get() or {}))

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def store_path(self) -> Path:
        return Path(self.store.path).expanduser() if self.store.path else self.data_path / "internvl-bot.sqlite3"

    def adapter_knowledge(self, platform: str) -> tuple[str, ...]:
        """The knowledge bases bound to the adapter whose conversations have this ``platform``
        (``adapters.<name>.knowledge``); () for a platform without a section."""
        section = getattr(self.adapters, platform, None)
        return tuple(section.knowledge) if isinstance(section, AdapterSection) else ()

    def enabled_adapters(self) -> dict[str, AdapterSection]:
        return {
            name: section
            for name in type(self.adapters).model_fields
            if getattr(section := getattr(self.adapters, name), "enabled", False)
        }

    def check_secrets(self, source: str = DEFAULT_CONFIG) -> None:
        """Fail closed: every enabled adapter must find its secrets in the environment."""
        for name, section in self.enabled_adapters().items():
            for var in section.missing_secrets():
                raise ConfigError(
                    f"{source}: adapters.{name}: secret missing — set the environment variable {var} "
                    f"(secrets are never read from the file), or set adapters.{name}.enabled: false"
                )
        if self.store.backend == "postgres" and not self.store.url:
            raise ConfigError(
                f"{source}: store.backend is postgres but the database URL is missing — set the environment "
                f"variable {self.store.url_env} (postgresql://user:password@host:5432/db)"
            )
        if self.handoff.webhook_url and not os.environ.get(self.handoff.webhook_secret_env, ""):
            raise ConfigError(
                f"{source}: handoff.webhook_url is set but its signing secret is missing — set the environment "
                f"variable {self.handoff.webhook_secret_env}, or empty handoff.webhook_url"
            )


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to read: the argument, else ``$INTERNVL_BOT_CONFIG``, else ``./config.yaml``."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()


def load_settings(path: str | os.PathLike[str] | None = None, *, required: bool = False,
                  model: type[Settings] | None = None) -> Settings:
    """Load and validate settings. Raises :class:`ConfigError` with one clear line on any problem.

    A missing file is fine (defaults apply) unless ``required`` or the path was given explicitly.
    ``model``: the settings class with every adapter's section (``adapters.registry.AppSettings``).
    """
    file = config_path(path)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{file}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}) — fix the syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of keys, not {type(loaded).__name__}")
        data = loaded or {}
    elif required or path is not None:
        raise ConfigError(f"{file}: config file not found — create it (see config.yaml in the repository) or omit --config")
    token = _yaml_data.set(data)
    try:
        return (model or Settings)()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file, model or Settings)) from None
    finally:
        _yaml_data.reset(token)


def _describe(exc: ValidationError, file: Path, model: type[Settings] = Settings) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    env = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
    origin = f"{file} or ${env}"
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 2 and err["loc"][0] == "adapters":
        # adapters.<name>: a misspelt adapter (its persona, knowledge, limits... would be silently unused)
        known = ", ".join(sorted(model.model_fields["adapters"].annotation.model_fields))  # type: ignore[union-attr]
        return (f"{origin}: {key}: no adapter named {err['loc'][1]!r} — use one of {known or '(none registered)'} "
                "(README, Configuration)")
    if err["type"] == "extra_forbidden":
        fix = "remove it or check its spelling; every key is listed in README, section Configuration"
        return f"{origin}: {key}: unknown key — {fix}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{origin}: {key}: {err['msg']} (got {err.get('input')!r}) — fix the value{more}"


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every dotted key of the settings model, for documentation checks."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(settings_keys(ann, dotted + "."))
        else:
            keys.append(dotted)
    return keys
