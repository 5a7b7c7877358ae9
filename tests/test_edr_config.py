"""The `edr:` settings, the registry (build + coverage) and TLS verification against an HTTPS emulator."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import yaml
from emulators.edr_common import running
from emulators.edr_sentinelone import AGENT_ID, TOKEN, SentinelOneEmulator
from emulators.edr_testkit import SleepRecorder, fast_options

from siemcrew.config.edr import EdrSettings, SentinelOneSettings, required_secret
from siemcrew.config.settings import Settings, SettingsError
from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.edr.crowdstrike import FalconEdr
from siemcrew.connectors.edr.defender import DefenderEdr
from siemcrew.connectors.edr.elastic_defend import ElasticDefendEdr
from siemcrew.connectors.edr.executor import ContainmentExecutor
from siemcrew.connectors.edr.registry import build_edr, edr_for_host
from siemcrew.connectors.edr.sentinelone import SentinelOneEdr

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "edr" / "edr.yaml"


@pytest.fixture()
def example() -> EdrSettings:
    return EdrSettings.from_section(yaml.safe_load(EXAMPLE.read_text())["edr"])


def test_example_config_validates(example: EdrSettings) -> None:
    assert example.configured() == ["crowdstrike", "defender", "sentinelone", "elastic_defend"]
    assert example.defender.machines_base == "https://eu.api.security.microsoft.com"
    assert example.crowdstrike.api_base == "https://api.crowdstrike.com"
    assert example.sentinelone.api_base == "https://acme.sentinelone.net/web/api/v2.1"
    assert example.elastic_defend.tls_verify() == "/etc/siemcrew/elastic-ca.pem"


def test_example_loads_through_the_main_settings(tmp_path: Path) -> None:
    path = tmp_path / "siemcrew.yaml"
    path.write_text(EXAMPLE.read_text())
    settings = Settings.load(path)
    assert EdrSettings.from_section(settings.edr).coverage[0].vendor == "defender"


def test_build_edr_makes_one_connector_per_vendor(example: EdrSettings) -> None:
    with pytest.raises(ConnectorError, match=r"cannot set up TLS for https://kibana\.example\.com:5601"):
        build_edr(example)  # the example's CA file does not exist here: a clear error, not a traceback
    example.elastic_defend.ca_file = None
    connectors = build_edr(example)
    assert {name: type(c) for name, c in connectors.items()} == {
        "crowdstrike": FalconEdr,
        "defender": DefenderEdr,
        "sentinelone": SentinelOneEdr,
        "elastic_defend": ElasticDefendEdr,
    }
    for connector in connectors.values():
        connector.close()


@pytest.mark.parametrize(
    ("hostname", "vendor"),
    [
        ("WS-042", "crowdstrike"),
        ("ws-042.corp.example", "crowdstrike"),
        ("DC01.corp.example", "defender"),
        ("srv-db01", "defender"),
        ("box.LAB.example.com", "sentinelone"),
        ("printer-7", "elastic_defend"),
    ],
)
def test_coverage_globs(example: EdrSettings, hostname: str, vendor: str) -> None:
    connectors = {name: name for name in example.configured()}
    assert edr_for_host(example, connectors, hostname) == vendor  # type: ignore[arg-type]


def test_uncovered_host_has_no_edr() -> None:
    settings = EdrSettings.from_section(
        {
            "sentinelone": {"base_url": "https://acme.sentinelone.net"},
            "coverage": [{"hosts": ["ws-*"], "vendor": "sentinelone"}],
        }
    )
    assert edr_for_host(settings, {"sentinelone": "s1"}, "dc01.corp") is None  # type: ignore[arg-type]
    assert edr_for_host(settings, {"sentinelone": "s1"}, None) is None  # type: ignore[arg-type]


def test_coverage_must_name_a_configured_vendor() -> None:
    with pytest.raises(SettingsError, match="no 'defender:' block"):
        EdrSettings.from_section({"coverage": [{"hosts": ["*"], "vendor": "defender"}]})


def test_unknown_keys_and_regions_are_rejected() -> None:
    with pytest.raises(SettingsError):
        EdrSettings.from_section({"crowdstrike": {"region": "us-1", "client_secret": "inline-secret"}})
    with pytest.raises(SettingsError, match="unknown Falcon region"):
        EdrSettings.from_section({"crowdstrike": {"region": "xx-9"}})


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_TOKEN", "from-env")
    assert required_secret("sentinelone", "SOME_TOKEN", None, "API token") == "from-env"
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    monkeypatch.delenv("SOME_TOKEN")
    assert required_secret("sentinelone", "SOME_TOKEN", str(secret_file), "API token") == "from-file"
    with pytest.raises(SettingsError, match="env var SOME_TOKEN"):
        required_secret("sentinelone", "SOME_TOKEN", None, "API token")


# -- TLS ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def https_emulator(ca: trustme.CA) -> Iterator[SentinelOneEmulator]:
    emulator = SentinelOneEmulator()
    emulator.add_agent(AGENT_ID, "WS-042", "10.3.0.42")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    yield from running(emulator, context)


def test_tls_verified_with_the_configured_ca(
    https_emulator: SentinelOneEmulator, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S1_API_TOKEN", TOKEN)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = SentinelOneSettings(base_url=https_emulator.base_url, ca_file=str(ca_file))
    connector = SentinelOneEdr(settings, fast_options(SleepRecorder(), settings))
    assert connector.find_host(agent_id=AGENT_ID).hostname == "WS-042"


def test_tls_verification_is_on_by_default(
    https_emulator: SentinelOneEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S1_API_TOKEN", TOKEN)
    settings = SentinelOneSettings(base_url=https_emulator.base_url)
    connector = SentinelOneEdr(settings, fast_options(SleepRecorder(), settings))
    with pytest.raises(ConnectorError, match="CERTIFICATE_VERIFY_FAILED"):
        connector.find_host(agent_id=AGENT_ID)
    assert https_emulator.requests() == []


def test_executor_timing_comes_from_settings(example: EdrSettings) -> None:
    executor = ContainmentExecutor.from_settings(example)
    assert (executor.timeout_s, executor.poll_interval_s) == (300, 5)
