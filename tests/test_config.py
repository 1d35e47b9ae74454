from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from adapters.registry import AppSettings, load
from bot.config import AdapterSection, AdaptersSettings, Section, Settings, load_settings, settings_keys
from bot.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.engine.kind == "transformers"
    assert settings.engine.generation.max_new_tokens == 512
    assert settings.store_path == Path("data/internvl-bot.sqlite3")


def test_repository_config_matches_the_defaults() -> None:
    shipped = load(Path(__file__).parent.parent / "config.yaml")
    assert shipped == AppSettings()


def test_config_yaml_lists_every_key() -> None:
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "config.yaml").read_text(encoding="utf-8"))

    def has(path: list[str]) -> bool:
        node = data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [key for key in settings_keys(AppSettings) if not has(key.split("."))]
    assert not missing, f"config.yaml lacks {missing}"


def test_yaml_values_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "engine:\n  max_concurrency: 2\n  generation:\n    temperature: 0\n")
    assert load_settings(path).engine.max_concurrency == 2
    monkeypatch.setenv("INTERNVL_BOT_ENGINE__MAX_CONCURRENCY", "5")
    settings = load_settings(path)
    assert settings.engine.max_concurrency == 5
    assert settings.engine.generation.temperature == 0


def test_unknown_key_is_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  transformers:\n    modle: /x\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert "engine.transformers.modle: unknown key" in message
    assert "README" in message


def test_wrong_type_names_key_value_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  max_concurrency: lots\n")
    with pytest.raises(ConfigError, match=r"engine\.max_concurrency: .*'lots'.*fix the value"):
        load_settings(path)


def test_unknown_environment_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_ENGINE__MAX_CONCURENCY", "3")
    with pytest.raises(ConfigError, match="INTERNVL_BOT_ENGINE__MAX_CONCURENCY"):
        load_settings(write(tmp_path, ""))


def test_invalid_yaml_and_wrong_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "engine: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


class _TokenSection(Section):
    secrets: ClassVar[dict[str, str]] = {"token_env": "bot token"}
    enabled: bool = True
    token_env: str = "EXAMPLE_BOT_TOKEN"


class _Adapters(AdaptersSettings):
    example: _TokenSection = _TokenSection()


class _Settings(Settings):
    adapters: _Adapters = _Adapters()


def test_missing_secret_for_an_enabled_adapter_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXAMPLE_BOT_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        _Settings().check_secrets("config.yaml")
    assert "adapters.example" in str(err.value)
    assert "EXAMPLE_BOT_TOKEN" in str(err.value)
    monkeypatch.setenv("EXAMPLE_BOT_TOKEN", "xoxb-secret-value")
    _Settings().check_secrets()  # no error once the environment has it
    disabled = _Settings(adapters=_Adapters(example=_TokenSection(enabled=False)))
    monkeypatch.delenv("EXAMPLE_BOT_TOKEN")
    disabled.check_secrets()


def test_every_settings_key_is_documented_in_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    common = set(AdapterSection.model_fields)
    missing = []
    for key in settings_keys(AppSettings):
        parts = key.split(".")
        generic = f"adapters.<name>.{parts[2]}" if parts[0] == "adapters" and parts[2] in common else None
        if f"`{key}`" not in readme and not (generic and f"`{generic}`" in readme):
            missing.append(key)
    assert not missing, f"README lacks these config keys: {missing}"


def test_adapter_sections_come_from_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"adapters\.web\.titel: unknown key"):
        load(write(tmp_path, "adapters:\n  web:\n    titel: Help\n"))
    path = write(tmp_path, "adapters:\n  web:\n    allow_users: [123, abc]\n    limits:\n      messages_per_day: 5\n")
    settings = load(path)
    assert settings.adapters.web.allow_users == ["123", "abc"]  # type: ignore[attr-defined]
    policy = settings.adapters.web.policy(settings.limits)  # type: ignore[attr-defined]
    assert policy.allow_users == {"123", "abc"} and policy.limits.messages_per_day == 5
    monkeypatch.setenv("INTERNVL_BOT_ADAPTERS__WEB__TITLE", "Help desk")
    assert load(path).adapters.web.title == "Help desk"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"adapters\.web"):
        load_settings(path)  # the core alone knows no adapter section


def test_every_adapter_section_has_the_common_keys() -> None:
    for name, field in AppSettings.model_fields["adapters"].annotation.model_fields.items():  # type: ignore[union-attr]
        assert issubclass(field.annotation, AdapterSection), name


def test_an_adapter_is_bound_to_knowledge_bases_and_a_misspelt_adapter_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "adapters:\n  webchat:\n    knowledge: [support]\n"))
    message = str(err.value)
    assert "\n" not in message and "adapters.webchat: no adapter named 'webchat'" in message
    assert "use one of chatwoot, console, django_helpdesk, helpdesk_api, slack, telegram, web" in message
    with pytest.raises(ConfigError, match=r"adapters\.web\.knowledge: .*knowledge base name"):
        load(write(tmp_path, "adapters:\n  web:\n    knowledge: ['  ']\n"))
    settings = load(write(tmp_path, "adapters:\n  web:\n    knowledge: [support, faq, support]\n"
                                    "  slack:\n    knowledge: manuals\n"))
    assert settings.adapter_knowledge("web") == ("support", "faq")
    assert settings.adapter_knowledge("slack") == ("manuals",)
    assert settings.adapter_knowledge("telegram") == () and settings.adapter_knowledge("nosuch") == ()
