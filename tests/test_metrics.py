"""Metrics, logs and health of a real run (tests/ops_support.py): every process, one scrape, checked as ops would.

- every metric README's Operations table lists is in the scrape of ``sendq web``, and ``promtool check metrics``
  finds nothing to say about any scrape;
- every metric the Grafana dashboard and the alert rules query exists in that scrape;
- no label value is a phone number or an id, and the API key is nowhere: not in a log line, a metric, an
  error recorded on a message, nor a process's output;
- every log line of ``web``, ``worker`` and ``scheduler`` is one JSON object, with no full phone number and no
  message text in it.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from ops_support import SECRET_API_KEY, FullRun, full_run, promtool
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from producers.producer import Producer
from worker.actors import Actors
from worker.broker import build_broker
from worker.limits import LimitKeys
from worker.metrics import code_label, endpoint_label
from worker.queue_metrics import Gauges, RedisSource, SendqCollector
from worker.sender_usage import UsageRecorder
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sendq.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
#: Counters that only get a sample once their event happens (a sender held, a reconciler action), which this
#: run does not cause; their definitions are checked against README all the same.
EVENT_ONLY = {"sendq_sender_holds_total", "sendq_reconciled_total", "sendq_hooks_total"}
#: PromQL words that look like metric names but are not.
PROMQL_WORDS = {"sum", "rate", "increase", "by", "without", "histogram_quantile", "max", "min", "time", "le",
                "and", "or", "unless", "on", "ignoring", "group_left", "vector", "label_replace", "clamp_min",
                "absent", "deriv", "delta", "avg", "count", "topk", "offset", "bool", "irate", "max_over_time"}


@pytest.fixture(scope="module")
def run(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRun]:
    with full_run(redis_url, tmp_path_factory.mktemp("ops")) as running:
        yield running


@pytest.fixture(scope="module")
def scrapes(run: FullRun) -> dict[str, str]:
    return {name: httpx.get(f"{url}/metrics", timeout=10).text
            for name, url in (("web", run.web_url), ("worker", run.worker_ops_url),
                              ("scheduler", run.scheduler_ops_url))}


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def names_in_scrape(text: str) -> set[str]:
    """Family names plus every sample name (``_bucket``, ``_count``, ``_total``...), as PromQL sees them."""
    found = set()
    for family in text_string_to_metric_families(text):
        found.add(family.name)
        found.update(sample.name for sample in family.samples)
    return found


def readme_metrics() -> set[str]:
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"^\| `(sendq_[a-z_]+)`", text, re.M))


def metric_names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_ranges)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_groupings))
    return {w for w in words if w.startswith("sendq_")} | {w for w in words - PROMQL_WORDS if w.startswith("up")}


def test_the_scrape_has_every_metric_readme_lists(scrapes: dict[str, str]) -> None:
    documented = readme_metrics()
    assert len(documented) >= 20, "README's Operations section lists the metrics in a table"
    scraped = names_in_scrape(scrapes["web"])
    missing = {m for m in documented - EVENT_ONLY if m not in scraped and m.removesuffix("_total") not in scraped}
    assert not missing, f"documented but not scraped: {sorted(missing)}"
    defined = {name for family in REGISTRY.collect() for name in (family.name, family.name + "_total")}
    assert defined >= EVENT_ONLY


def test_every_scraped_sendq_metric_is_documented(scrapes: dict[str, str]) -> None:
    documented = readme_metrics()
    scraped = {f.name if f.type != "counter" else f.name + "_total"
               for text in scrapes.values() for f in text_string_to_metric_families(text)}
    undocumented = {name for name in scraped if name.startswith("sendq_")} - documented
    assert not undocumented, f"scraped but not in README: {sorted(undocumented)}"


def test_the_run_moved_the_metrics_it_should(scrapes: dict[str, str]) -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(scrapes["web"]) for s in f.samples}

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, found), v in samples.items()
                   if n == name and all((k, val) in found for k, val in labels.items()))

    assert total("sendq_messages_total", status="delivered") >= 20
    assert total("sendq_messages_total", status="suppressed") == 1
    assert total("sendq_telnyx_requests_total", endpoint="/messages/long_code", status="200") >= 20
    assert total("sendq_telnyx_errors_total", code="40300") == 1
    assert total("sendq_retries_total", scope="call") >= 1
    assert total("sendq_deferrals_total", reason="sender") >= 1
    assert total("sendq_limiter_wait_seconds_count", sender_type="long_code") >= 24
    assert total("sendq_enqueue_to_accepted_seconds_count", priority="urgent") == 4
    assert total("sendq_accepted_to_final_seconds_count", status="delivered") >= 20
    for result in ("accepted", "duplicate", "bad_signature", "stale", "malformed", "too_large"):
        assert total("sendq_webhook_requests_total", result=result) >= 1, result
    assert total("sendq_queue_messages", queue="default", state="ready") == 0
    assert total("sendq_scheduler_last_tick_timestamp_seconds") > 0
    assert total("sendq_collector_up", source="redis") == 1
    assert total("sendq_collector_up", source="store") == 1


def test_promtool_finds_nothing_wrong_with_any_scrape(scrapes: dict[str, str]) -> None:
    tool = promtool()
    for name, text in scrapes.items():
        found = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0 and not found.stdout.strip() and not found.stderr.strip(), \
            f"{name}: {found.stdout}{found.stderr}"


def test_labels_never_carry_a_number_or_an_id(scrapes: dict[str, str]) -> None:
    personal = re.compile(r"^\+?\d{7,}$|[0-9a-f]{8}-[0-9a-f]{4}-|^KEY")
    for text in scrapes.values():
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                bad = {k: v for k, v in sample.labels.items() if personal.search(v)}
                assert not bad, f"{sample.name} has a per-number or per-message label: {bad}"


def test_the_dashboard_queries_only_metrics_a_real_scrape_has(scrapes: dict[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 12
    scraped = set().union(*(names_in_scrape(text) for text in scrapes.values()))
    for expr in exprs:
        used = metric_names_in(expr)
        assert used, f"a panel queries no sendq metric: {expr}"
        assert used <= scraped | {"up"}, f"{expr}: not in a real scrape: {sorted(used - scraped)}"


def test_the_alert_rules_query_only_metrics_a_real_scrape_has(scrapes: dict[str, str]) -> None:
    scraped = set().union(*(names_in_scrape(text) for text in scrapes.values())) | EVENT_ONLY
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    for rule in rules:
        used = metric_names_in(rule["expr"])
        assert used <= scraped | {"up"}, f"{rule['alert']}: not in a real scrape: {sorted(used - scraped)}"


def test_worker_and_scheduler_answer_health_probes(run: FullRun) -> None:
    for url in (run.worker_ops_url, run.scheduler_ops_url, run.web_url):
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_every_log_line_is_one_json_object(run: FullRun, scrapes: dict[str, str]) -> None:
    for name in ("web", "worker", "scheduler"):
        lines = [line for line in run.log(name).splitlines() if line.strip()]
        assert lines, f"{name} logged nothing at DEBUG"
        for line in lines:
            entry = json.loads(line)
            assert {"time", "level", "logger", "message"} <= entry.keys(), line


def test_the_api_key_is_nowhere(run: FullRun, scrapes: dict[str, str]) -> None:
    run.stop()  # the last test of the module: the logs of shutting down are scanned too
    with Producer.connect(run.settings) as producer:
        records = json.dumps([producer.status(i) for i in run.ids])
    outputs = {f"{name} log": run.log(name) for name in run.procs} | \
        {f"{name} metrics": text for name, text in scrapes.items()} | {"message records": records}
    for where, text in outputs.items():
        assert SECRET_API_KEY not in text, f"the API key appears in the {where}"
    assert "Authorization" not in run.log("worker") or "Bearer KEY" not in run.log("worker")


def test_no_log_line_carries_a_full_phone_number_or_a_message_text(run: FullRun, scrapes: dict[str, str]) -> None:
    run.stop()  # idempotent: the logs of shutting down are scanned too
    for name in run.procs:
        text = run.log(name)
        numbers = re.findall(r"(?:\+|%2[Bb])[0-9]{8,15}(?![0-9])", text)
        assert not numbers, f"{name} logged unmasked numbers: {sorted(set(numbers))[:5]}"
        texts = re.findall(r"\b(?:hello|code|slow) [0-9]+\b|to someone who said STOP", text)
        assert not texts, f"{name} logged message texts: {sorted(set(texts))[:5]}"


# -- the pieces, without the full run ------------------------------------------------------------------------------

def test_endpoint_and_code_labels_stay_bounded() -> None:
    assert endpoint_label("/messages/long_code") == "/messages/long_code"
    assert endpoint_label("/messages/4031b2c6-1d5e-4a53-8c2e-0f1b2e3d4c5a") == "/messages/{id}"
    assert endpoint_label("/phone_numbers/+13125550001/messaging?x=1") == "/phone_numbers/{id}/messaging"
    assert endpoint_label("/messaging_profiles/abc123/actions/regenerate_secret") == \
        "/messaging_profiles/{id}/actions/regenerate_secret"
    assert [code_label(c) for c in ("40300", "", None, "x" * 40, "10007")] == ["40300", "other", "other", "other",
                                                                              "10007"]


def test_queue_depths_follow_dramatiq_redis_layout(redis_url: str, namespace: str) -> None:
    broker = build_broker(Settings(redis_url=redis_url, namespace=namespace))
    actors = Actors(broker)
    for i in range(3):
        actors.enqueue_send(f"m{i}", "normal")
    actors.enqueue_send("later", "bulk", delay_ms=60_000)
    client = redis.Redis.from_url(redis_url)
    client.zadd(f"{namespace}:events.XQ", {"dead-1": 1.0})
    try:
        gauges = RedisSource(client, namespace).read()
    finally:
        client.close()
        broker.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in gauges.families for s in f.samples}
    depth = {(dict(k)["queue"], dict(k)["state"]): v for (n, k), v in samples.items() if n == "sendq_queue_messages"}
    assert depth[("default", "ready")] == 3 and depth[("default", "in_progress")] == 0
    assert depth[("bulk", "delayed")] == 1 and depth[("bulk", "ready")] == 0
    assert depth[("events", "dead")] == 1
    assert samples[("sendq_scheduler_last_tick_timestamp_seconds", ())] == 0


def test_utilisation_is_the_share_of_their_rate_active_senders_used(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = [1_000_000.0]
    recorder = UsageRecorder(client, namespace, lambda keys: 10.0, clock=lambda: now[0])
    for sender in ("+13125550001", "+13125550002"):
        for _ in range(5):  # 5 messages at 10 per second: half a second of each sender's time
            recorder.record(LimitKeys("long_code", sender, "sms"), 1)
    now[0] += 1.0
    recorder.flush()
    try:
        gauges = RedisSource(client, namespace, clock=lambda: now[0]).read()
    finally:
        client.close()
    ratio = {s.labels["sender_type"]: s.value for f in gauges.families for s in f.samples
             if s.name == "sendq_limiter_utilization_ratio"}
    assert ratio["long_code"] == pytest.approx(1.0 / (10 * 2))  # 1 s of rate over 10 s x 2 senders
    assert ratio["short_code"] == 0.0


def test_a_hung_source_costs_a_scrape_its_timeout_and_nothing_else() -> None:
    release = threading.Event()

    class Hung:
        name = "store"

        def read(self) -> Gauges:
            release.wait(10)
            return Gauges()

    collector = SendqCollector([Hung()], timeout_s=0.3)  # type: ignore[list-item]
    try:
        started = time.monotonic()
        found = {s.name: s.value for f in collector.collect() for s in f.samples if s.name == "sendq_collector_up"}
        assert time.monotonic() - started < 2 and found == {"sendq_collector_up": 0}
    finally:
        release.set()
        collector.close()
