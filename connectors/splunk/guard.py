"""The read-only SPL guard: every command in every pipeline and subsearch must be on an allowlist.

Agents hunt with SPL that a model may have written from attacker-controlled log text, so the guard
is an allowlist, not a blocklist: a command it does not know is refused like one that writes.
Macros are refused unless named in the settings (a macro can expand to anything). The refusal
says which command and why; the tool layer records it in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass

from siemcrew.connectors.base import QueryRefused

READ_ONLY_COMMANDS = frozenset(
    """
    search where eval fields table rename sort head tail reverse dedup uniq stats eventstats streamstats
    chart timechart top rare bin bucket rex regex spath makemv mvexpand mvcombine nomv fillnull filldown
    convert lookup inputlookup tstats transaction join append appendcols appendpipe union multisearch
    makeresults addinfo addtotals addcoltotals iplocation format return xyseries untable transpose accum
    delta autoregress strcat typer tags geostats foreach fieldsummary contingency correlate rangemap
    extract kv xmlkv xpath multikv erex localize set eventcount metadata from datamodel cluster
    """.split()
)

# Commands refused with a specific reason (anything else off the allowlist is refused generically).
REFUSED_COMMANDS: dict[str, str] = {
    "delete": "deletes indexed events",
    "outputlookup": "writes a lookup",
    "outputcsv": "writes a file on the search head",
    "outputtext": "writes a file on the search head",
    "collect": "writes events into an index",
    "summaryindex": "writes events into an index",
    "tscollect": "writes a tsidx namespace",
    "mcollect": "writes metrics into an index",
    "meventcollect": "writes metrics into an index",
    "sendemail": "sends email",
    "sendalert": "triggers an alert action",
    "script": "runs a script",
    "run": "runs a script",
    "runshellscript": "runs a script",
    "rest": "calls the REST API",
    "map": "runs searches built from result rows",
    "savedsearch": "runs a saved search whose text is not checked",
    "dbxquery": "queries an external database",
    "dbxoutput": "writes to an external database",
    "curl": "sends HTTP requests",
    "fit": "trains and stores a model",
    "deletemodel": "deletes a stored model",
    "dump": "writes files on the search head",
    "crawl": "crawls the filesystem",
}

_CLOSERS = {"[": "]", "(": ")"}


@dataclass(frozen=True)
class SplGuard:
    """Checks SPL text; raises `QueryRefused` with the reason, returns None when the search reads only."""

    allowed_macros: frozenset[str] = frozenset({"notable"})
    allowed_commands: frozenset[str] = READ_ONLY_COMMANDS

    def check(self, spl: str) -> None:
        text = spl.strip()
        if not text:
            raise QueryRefused("SPL refused: the search is empty")
        self._check_pipeline(text, spl)

    def _check_pipeline(self, text: str, original: str) -> None:
        segments, subsearches, macros = _split(text, original)
        for macro in macros:
            name = macro.split("(", 1)[0].strip()
            if name not in self.allowed_macros:
                raise QueryRefused(
                    f"SPL refused: macro `{name}` is not allowed (a macro can expand to any command; "
                    f"allowed macros: {', '.join(sorted(self.allowed_macros)) or 'none'})"
                )
        generating = text.startswith("|")
        for position, segment in enumerate(segments):
            if position == 0 and not generating:
                continue  # the implicit `search` before the first pipe
            words = segment.split(None, 1)
            if not words:
                raise QueryRefused("SPL refused: empty command between pipes")
            if words[0].startswith("`"):
                continue  # a macro used as a command; macros were checked above
            command = words[0].lower()
            if command in REFUSED_COMMANDS:
                raise QueryRefused(f"SPL refused: `{command}` {REFUSED_COMMANDS[command]}; siemcrew searches are read-only")
            if command not in self.allowed_commands:
                raise QueryRefused(f"SPL refused: `{command}` is not on the read-only command allowlist")
        for inner in subsearches:
            self._check_pipeline(inner.strip(), original)


def _split(text: str, original: str) -> tuple[list[str], list[str], list[str]]:
    """Top-level pipeline segments, the bodies of `[...]` subsearches, and the macros used at this level."""
    segments: list[str] = []
    subsearches: list[str] = []
    macros: list[str] = []
    current: list[str] = []
    depth: list[str] = []
    sub_start = 0
    index = 0
    while index < len(text):
        char = text[index]
        if char == '"':
            end = _closing_quote(text, index, original)
            current.append(text[index : end + 1])
            index = end + 1
            continue
        if char == "`":
            end = text.find("`", index + 1)
            if end == -1:
                raise QueryRefused(f"SPL refused: unbalanced backtick in {original!r}")
            if "]" not in depth:
                macros.append(text[index + 1 : end])
            current.append(text[index : end + 1])
            index = end + 1
            continue
        if char in _CLOSERS:
            if char == "[" and "]" not in depth:
                sub_start = index + 1
            depth.append(_CLOSERS[char])
        elif char in ("]", ")"):
            if not depth or depth[-1] != char:
                raise QueryRefused(f"SPL refused: unbalanced {char!r} in {original!r}")
            depth.pop()
            if char == "]" and "]" not in depth:
                subsearches.append(text[sub_start:index])
        elif char == "|" and not depth:
            segments.append("".join(current).strip())
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if depth:
        raise QueryRefused(f"SPL refused: unbalanced brackets in {original!r}")
    segments.append("".join(current).strip())
    if text.startswith("|"):
        segments = segments[1:]
    return segments, subsearches, macros


def _closing_quote(text: str, start: int, original: str) -> int:
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == '"':
            return index
        index += 1
    raise QueryRefused(f"SPL refused: unterminated quoted string in {original!r}")
