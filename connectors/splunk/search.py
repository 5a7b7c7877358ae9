"""Running SPL on splunkd: polled search jobs with paging, or export streaming without preview rows.

splunk-sdk quirks handled here: a job status of 204 right after create means "not ready";
a failed job reports isDone=1 AND isFailed=1; results default to 100 rows unless `count` is
given; export interleaves preview result sets for transforming searches. Each network step is
retried on its own, so a dropped results page is fetched again rather than the whole search.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from splunklib import client, results

from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.splunk.session import call_read, search_slots

log = logging.getLogger("siemcrew.splunk")

Row = dict[str, Any]
_BAD_MESSAGES = ("FATAL", "ERROR")


@dataclass
class SearchRows:
    """The rows fetched, and how many events the search matched when splunkd says (a job's
    `eventCount`; export streams do not say), so a capped fetch can still report the true count."""

    rows: list[Row]
    matched: int | None = None


class SearchRunner:
    """Executes one search at a time per slot; `service` is called lazily so login happens on first use."""

    def __init__(self, settings: SplunkSettings, service: Callable[[], client.Service]) -> None:
        self.settings = settings
        self._service = service

    # -- entry points ----------------------------------------------------------------------
    def rows(self, spl: str, *, earliest: str | None, latest: str | None, max_rows: int) -> list[Row]:
        return self.search(spl, earliest=earliest, latest=latest, max_rows=max_rows).rows

    def search(self, spl: str, *, earliest: str | None, latest: str | None, max_rows: int,
               params: dict[str, str] | None = None) -> SearchRows:
        """`params` are extra job parameters (e.g. `adhoc_search_level`), sent to jobs and exports alike."""
        params = {**_time_params(earliest, latest), **(params or {})}
        with search_slots(self.settings):
            if self.settings.search.mode == "export":
                return SearchRows(call_read(self.settings, lambda: self._export(spl, params, max_rows), "export"))
            job = call_read(self.settings, lambda: self._service().jobs.create(spl, **params), "create search job")
            return self._collect(job, max_rows)

    def saved_search_rows(self, name: str, *, earliest: str | None, latest: str | None, max_rows: int) -> list[Row]:
        def lookup() -> client.SavedSearch:
            try:
                return self._service().saved_searches[name]
            except KeyError:
                raise ConnectorError(f"splunk: saved search {name!r} not found in app {self.settings.app!r}") from None

        saved = call_read(self.settings, lookup, "saved search")
        params = {f"dispatch.{key}": value for key, value in _time_params(earliest, latest).items()}
        with search_slots(self.settings):
            job = call_read(self.settings, lambda: saved.dispatch(**params), f"dispatch {name!r}")
            return self._collect(job, max_rows).rows

    # -- jobs ------------------------------------------------------------------------------
    def _collect(self, job: client.Job, max_rows: int) -> SearchRows:
        try:
            matched = self._wait(job)
            return SearchRows(self._pages(job, max_rows), matched)
        finally:
            try:
                job.cancel()
            except Exception as exc:  # best effort: the job expires with its ttl anyway
                log.debug("splunk: could not cancel job %s: %s", job.sid, exc)

    def _wait(self, job: client.Job) -> int | None:
        """Poll until done; the job's eventCount when it reports one."""
        deadline = time.monotonic() + self.settings.search.job_timeout_s
        while not call_read(self.settings, job.is_done, f"status of job {job.sid}"):
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"splunk: search job {job.sid} did not finish within {self.settings.search.job_timeout_s:g}s; cancelled"
                )
            time.sleep(self.settings.search.poll_interval_s)
        content = job.content
        if str(content.get("isFailed", "0")) == "1" or content.get("dispatchState") == "FAILED":
            detail = "; ".join(_flatten(content.get("messages"))) or "no message"
            raise ConnectorError(f"splunk: search job {job.sid} failed: {detail}")
        try:
            return int(content.get("eventCount"))
        except (TypeError, ValueError):
            return None

    def _pages(self, job: client.Job, max_rows: int) -> list[Row]:
        rows: list[Row] = []
        page_size = self.settings.search.page_size
        while len(rows) < max_rows:
            count = min(page_size, max_rows - len(rows))
            offset = len(rows)

            def page(count: int = count, offset: int = offset) -> list[Row]:
                stream = job.results(output_mode="json", count=count, offset=offset)
                return list(_result_rows(results.JSONResultsReader(stream)))

            got = call_read(self.settings, page, f"results of job {job.sid}")
            rows.extend(got)
            if len(got) < count:
                break
        return rows

    # -- export ----------------------------------------------------------------------------
    def _export(self, spl: str, params: dict[str, str], max_rows: int) -> list[Row]:
        """One attempt at an export stream; a retry starts over, so no row is kept twice."""
        stream = self._service().jobs.export(spl, output_mode="json", **params)
        rows: list[Row] = []
        try:
            for line in io.BufferedReader(stream):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    raise ConnectorError(f"splunk: export stream sent a malformed line: {line[:120]!r}") from None
                _raise_on_messages(item.get("messages") or [])
                if item.get("preview"):
                    continue
                if isinstance(item.get("result"), dict):
                    rows.append(item["result"])
                if len(rows) >= max_rows or item.get("lastrow"):
                    break
        finally:
            stream.close()
        return rows


def _time_params(earliest: str | None, latest: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if earliest:
        params["earliest_time"] = earliest
    if latest:
        params["latest_time"] = latest
    return params


def _result_rows(reader: results.JSONResultsReader) -> Iterator[Row]:
    for item in reader:
        if isinstance(item, results.Message):
            if item.type in _BAD_MESSAGES:
                raise ConnectorError(f"splunk: search reported {item.type}: {item.message}")
            continue
        if isinstance(item, dict):
            yield item


def _raise_on_messages(messages: list[Any]) -> None:
    for message in messages:
        if isinstance(message, dict) and str(message.get("type", "")).upper() in _BAD_MESSAGES:
            raise ConnectorError(f"splunk: search reported {message.get('type')}: {message.get('text')}")


def _flatten(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [text for item in value.values() for text in _flatten(item)]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _flatten(item)]
    return [str(value)]
