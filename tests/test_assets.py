"""Asset inventory: host, identity and known-software lookups from config, the shipped generic defaults
and the demo's CONTOSO inventory (examples/assets.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from siemcrew.config.settings import Settings
from siemcrew.crew.assets import AssetInventory, ConfigError, normalize_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CUSTOM = {
    "defaults": {"host": {"tier": "tier2", "criticality": "low"}},
    "hosts": [
        {"match": "web*", "tier": "tier1", "role": "server"},
        {"match": "web-special.corp.local", "tier": "tier0", "role": "server", "owner": "web-team", "tags": ["pci"]},
    ],
    "identities": [
        {"match": "CORP\\alice", "tier": "tier0", "role": "admin"},
        {"match": "alice", "tier": "tier2", "role": "user"},
        {
            "match": "svc_backup",
            "tier": "tier1",
            "role": "service",
            "sanctioned_tools": ["C:\\Program Files\\ContosoBackup\\*", "robocopy.exe"],
        },
    ],
    "known_software": [
        {"name": "Agent", "paths": ["C:\\Program Files\\Agent\\*", "agentsvc.exe"], "services": ["AgentSvc"]},
    ],
}


@pytest.fixture(scope="module")
def shipped() -> AssetInventory:
    return AssetInventory.load()


@pytest.fixture(scope="module")
def demo() -> AssetInventory:
    return AssetInventory.load(EXAMPLES / "assets.yaml")


@pytest.mark.parametrize(
    ("name", "tier", "role"),
    [
        ("DC01", "tier0", "domain_controller"),
        ("dc01.corp.local", "tier0", "domain_controller"),
        ("CORP-DC2", "tier0", "domain_controller"),
        ("corpdc.example.local", "tier0", "domain_controller"),
        ("SRV-APP01", "tier1", "server"),
        ("fs01", "tier1", "file_server"),
        ("JUMP-01.corp.local", "tier0", "jump_host"),
        ("ws-042", "tier2", "workstation"),
        ("WORKSTATION5.corp.local", "tier2", "workstation"),
        ("laptop-7", "unknown", "unknown"),
        ("10.1.2.3", "unknown", "unknown"),
    ],
)
def test_shipped_host_tiers(shipped: AssetInventory, name: str, tier: str, role: str) -> None:
    info = shipped.host(name)
    assert (info.tier, info.role) == (tier, role)
    assert info.name == name


def test_unknown_host_gets_defaults(shipped: AssetInventory) -> None:
    info = shipped.host("printer-3")
    assert info.matched is None and info.criticality == "medium" and info.tier == "unknown"


def test_exact_name_beats_an_earlier_pattern_and_fqdn_exact_needs_the_fqdn() -> None:
    inventory = AssetInventory.load(CUSTOM)
    assert inventory.host("WEB-SPECIAL.corp.local").tier == "tier0"
    assert inventory.host("WEB-SPECIAL.corp.local").owner == "web-team"
    assert inventory.host("web-special").tier == "tier1"
    assert inventory.host("anything").tier == "tier2"
    assert inventory.host("anything").criticality == "low"


@pytest.mark.parametrize(
    ("user", "tier", "role"),
    [
        ("administrator", "tier0", "admin"),
        ("CORP\\Administrator", "tier0", "admin"),
        ("adm-jdoe", "tier0", "admin"),
        ("jdoe_adm@corp.local", "tier0", "admin"),
        ("admin_jdoe", "tier1", "admin"),
        ("svc_sql", "tier1", "service"),
        ("CORP\\svc-web", "tier1", "service"),
        ("WS-01$", "tier1", "service"),
        ("NT AUTHORITY\\SYSTEM", "tier1", "service"),
        ("jdoe", "unknown", "user"),
    ],
)
def test_shipped_identity_tiers(shipped: AssetInventory, user: str, tier: str, role: str) -> None:
    info = shipped.identity(user)
    assert (info.tier, info.role) == (tier, role)


def test_identity_domain_forms() -> None:
    inventory = AssetInventory.load(CUSTOM)
    assert inventory.identity("corp\\ALICE").tier == "tier0"
    assert inventory.identity("alice@corp").tier == "tier0"
    assert inventory.identity("OTHER\\alice").tier == "tier2"
    assert inventory.identity("alice").tier == "tier2"
    info = inventory.identity("CORP\\alice")
    assert (info.name, info.domain, info.matched) == ("alice", "corp", "CORP\\alice")


def test_sanctioned_tools() -> None:
    info = AssetInventory.load(CUSTOM).identity("svc_backup")
    assert info.sanctions("c:/program files/contosobackup/bin/agent.exe")
    assert info.sanctions("C:\\Windows\\System32\\Robocopy.exe")
    assert not info.sanctions("C:\\Windows\\System32\\cmd.exe")
    assert not info.sanctions("")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("C:\\Program Files\\ContosoMonitor\\monitor.exe", "Contoso Monitor"),
        ("c:/program files/contosomonitor/bin/collect.ps1", "Contoso Monitor"),
        ("C:\\PROGRAM FILES\\ContosoBackup\\backup.exe", "Contoso Backup"),
        ("\\\\?\\C:\\Program Files\\ContosoDeploy\\runner.exe", "Contoso Deploy"),
        ("%ProgramFiles%\\ContosoDeploy\\runner.exe", "Contoso Deploy"),
        ("C:\\Program Files\\\\ContosoDeploy\\runner.exe", "Contoso Deploy"),
        ("C:\\Windows\\System32\\cmd.exe", None),
        ("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", None),
        ("C:\\Users\\Public\\ContosoMonitor\\monitor.exe", None),
        ("C:\\Program Files\\ContosoMonitorEvil.exe", None),
    ],
)
def test_demo_known_software(demo: AssetInventory, path: str, name: str | None) -> None:
    found = demo.known_software(path)
    assert (found.name if found else None) == name


def test_shipped_defaults_name_no_organisations_software(shipped: AssetInventory) -> None:
    """Known software and sanctioned tools are one organisation's facts: the packaged file has none."""
    assert shipped.config.known_software == []
    assert not any(rule.sanctioned_tools for rule in shipped.config.identities)
    assert shipped.known_software("C:\\Program Files\\ContosoMonitor\\cmagent.exe") is None
    assert shipped.known_service("ContosoDeployRunner") is None


def test_demo_config_uses_the_demo_inventory(tmp_path: Path) -> None:
    settings = Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"))
    assert settings.config_file("assets") == EXAMPLES / "assets.yaml"
    inventory = AssetInventory.load(settings.config_file("assets"))
    admin = inventory.identity("CONTOSO\\adm_tnguyen")
    assert admin.sanctions("C:\\Tools\\Sysinternals\\procdump64.exe") and admin.tier == "tier0"
    assert not inventory.identity("CONTOSO\\adm_kwilson").sanctions("C:\\Tools\\Sysinternals\\procdump64.exe")
    assert inventory.identity("svc_deploy").sanctions("C:\\Program Files\\ContosoDeploy\\cdeploy.exe")


def test_known_software_by_file_name_and_service() -> None:
    inventory = AssetInventory.load(CUSTOM)
    assert inventory.known_software("D:\\tools\\AgentSvc.exe").name == "Agent"
    assert inventory.known_software("D:\\tools\\other.exe") is None
    assert inventory.known_service("agentsvc").name == "Agent"
    assert AssetInventory.load(EXAMPLES / "assets.yaml").known_service("ContosoDeployRunner").name == "Contoso Deploy"
    assert inventory.known_service("nope") is None


def test_normalize_path_keeps_unc_prefix() -> None:
    assert normalize_path("\\\\FileServer\\\\share\\x.exe") == "\\\\fileserver\\share\\x.exe"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hosts\.0\.teir: unknown key"):
        AssetInventory.load({"hosts": [{"match": "x", "teir": "tier0"}]})
    with pytest.raises(ConfigError, match=r"identities\.0\.tier"):
        AssetInventory.load({"identities": [{"match": "x", "tier": "tier9"}]})
    bad = tmp_path / "assets.yaml"
    bad.write_text("hosts: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AssetInventory.load(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        AssetInventory.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        AssetInventory.load(tmp_path / "missing.yaml")


def test_load_from_file_path(tmp_path: Path) -> None:
    path = tmp_path / "assets.yaml"
    path.write_text("hosts:\n  - {match: 'lab-*', tier: tier1, role: server}\n", encoding="utf-8")
    assert AssetInventory.load(str(path)).host("LAB-9").tier == "tier1"
