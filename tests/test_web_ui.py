"""The web UI as a user meets it, in a real browser: headless Chromium (Debian's package) driven
by Playwright against `dagster dev` on 127.0.0.1, with the tiny config and the daemon running.

One module-scoped server; the tests run in order (each builds on the state the last one left):
the graph lists the seven assets, "Materialize all" (every teacher partition) completes under the
daemon, eval_report's page shows the verdict, the plots and the checks, and the inbox sensor,
turned on in the Automation page, ingests a dropped file with exactly the work that
`distill-dag materialize --stale` does on a copy of the same home. Screenshots are kept under
$DISTILL_DAG_TEST_ARTIFACTS (default: test-artifacts/web_ui/ in the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from distill_dag.orchestration.automation import LAUNCHED_BY
from distill_dag.orchestration.definitions import build_definitions, write_instance_settings
from distill_dag.orchestration.stale import materialize_stale, work_done_in_runs
from distill_dag.stages import STAGES
from distill_dag.store import Store
from distill_dag.tables import QUERIES
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DISTILL_DAG_TEST_ARTIFACTS", REPO / "test-artifacts")) / "web_ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The Automation page's row of the inbox sensor: its selection box and its on/off switch.
SENSOR_ROW = ("xpath=//*[text()='corpus_inbox_sensor']"
              "/ancestor::*[count(.//input[@type='checkbox'])=2][1]")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Server:
    """`dagster dev` (webserver and daemon) over a fresh home, and the instance it uses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home, self.inbox = root / "home", root / "inbox"
        self.inbox.mkdir(parents=True)
        config = yaml.safe_load(TINY_CONFIG.read_text())
        config["corpus"]["inbox"] = {"folder": str(self.inbox)}
        self.config = root / "tiny_inbox.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.dagster_home = self.home / "dagster"
        self.dagster_home.mkdir(parents=True)
        write_instance_settings(str(self.dagster_home / "dagster.yaml"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DAGSTER_HOME": str(self.dagster_home),
                    "DISTILL_DAG_HOME": str(self.home), "DISTILL_DAG_CONFIG": str(self.config),
                    "DISTILL_DAG_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1"}
        self.log = open(root / "dagster_dev.log", "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        _wait(self._up, 180, f"dagster dev on {self.url} (log: {root / 'dagster_dev.log'})")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            log = (self.root / "dagster_dev.log").read_text()
            raise AssertionError(f"dagster dev exited: {log[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: scripts/test.sh installs Debian's chromium "
                    "package (apt-get install chromium)")
    server = Server(tmp_path_factory.mktemp("web_ui"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    page.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _runs(instance: dg.DagsterInstance, **tags: str):
    return instance.get_runs(filters=dg.RunsFilter(tags=tags or None))


def _backfills_done(instance: dg.DagsterInstance, tag: tuple[str, str] | None = None):
    backfills = [b for b in instance.get_backfills()
                 if tag is None or b.tags.get(tag[0]) == tag[1]]
    if not backfills or any(b.status.value == "REQUESTED" for b in backfills):
        return None
    return backfills


def test_a_first_time_user_sees_the_seven_assets_without_the_community_dialog(server, page):
    page.goto(f"{server.url}/assets")
    for stage in STAGES:
        page.get_by_text(stage.name, exact=True).first.wait_for()
    assert page.get_by_text("Join the Dagster community").count() == 0
    _shot(page, "01-catalog")
    page.goto(f"{server.url}/asset-groups")
    page.get_by_text("distill", exact=True).first.wait_for()
    page.get_by_role("img", name="arrow_drop_down").first.click()  # open the group in the tree
    page.get_by_text("eval_report", exact=True).first.wait_for()
    _shot(page, "02-asset-graph")
    body = page.inner_text("body")
    assert all(stage.name in body for stage in STAGES)
    assert "Join the Dagster community" not in body


def test_materialize_all_with_every_partition_completes_under_the_daemon(server, page):
    page.goto(f"{server.url}/asset-groups")
    page.get_by_role("button", name="Materialize all").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Launch runs to materialize 7 assets").wait_for()
    assert "0 partitions" in dialog.inner_text()  # Dagster's default; a user clicks "All"
    dialog.get_by_role("button", name="All", exact=True).click()
    dialog.get_by_text("2 partitions").wait_for()
    _shot(page, "03-materialize-all-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    with server.instance() as instance:
        _wait(lambda: instance.get_backfills(), 60, "the backfill to be created")
        [backfill] = _wait(lambda: _backfills_done(instance), 1500,
                           "the backfill to finish under the daemon", every=5)
        runs = instance.get_runs(filters=dg.RunsFilter(
            tags={"dagster/backfill": backfill.backfill_id}))
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), \
            [(r.run_id, r.status) for r in runs]
        for stage in STAGES:
            key = dg.AssetKey(stage.name)
            assert instance.get_latest_materialization_event(key) is not None or stage.partitioned
    page.goto(f"{server.url}/runs/b/{backfill.backfill_id}")
    page.get_by_text("Completed").first.wait_for()
    _shot(page, "04-backfill-completed")


def test_eval_report_page_shows_the_verdict_the_plots_and_the_checks(server, page):
    page.goto(f"{server.url}/assets/eval_report")
    page.get_by_text("verdict", exact=True).first.wait_for()
    body = page.inner_text("body")
    assert "95% interval" in body and "held-out queries" in body  # the verdict's sentence
    _shot(page, "05-eval-report")
    row = page.locator("tr", has=page.get_by_text("plots", exact=True))
    row.get_by_text("Show Markdown").click()
    dialog = page.get_by_role("dialog")
    images = dialog.locator("img")
    images.first.wait_for()
    widths = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
    assert len(widths) >= 2 and all(w > 100 for w in widths), widths  # rendered, not broken
    _shot(page, "06-eval-report-plots")
    page.keyboard.press("Escape")
    page.goto(f"{server.url}/assets/eval_report?view=checks")
    page.get_by_text("distilled_beats_base").first.wait_for()
    _shot(page, "07-eval-report-checks")


def test_the_inbox_sensor_turned_on_in_the_page_ingests_a_dropped_file_like_stale(server, page,
                                                                                  tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{server.url}/automation")
    page.get_by_text("corpus_inbox_sensor", exact=True).first.wait_for()
    for name in ("stale_backfill_schedule", "corpus_inbox_sensor", "distill_automation"):
        page.get_by_text(name, exact=True).first.wait_for()
    _shot(page, "08-automation")
    # The same home as now, for the command the sensor's work is compared with.
    twin = tmp_path / "twin"
    shutil.copytree(server.home, twin)
    row = page.locator(SENSOR_ROW)
    # The switch is a styled checkbox outside Playwright's idea of the viewport: click it as the
    # page's own click handler sees a user's click.
    switch = row.locator("input[type=checkbox]").last
    switch.evaluate("e => e.click()")
    expect(switch).to_be_checked(timeout=60_000)  # the page confirms the mutation
    page.reload()
    row = page.locator(SENSOR_ROW)
    row.get_by_text("corpus_inbox_sensor").wait_for()
    expect(row.locator("input[type=checkbox]").last).to_be_checked(timeout=60_000)
    with server.instance() as instance:  # and the instance has it running
        states = instance.all_instigator_state()
        assert any(s.name == "corpus_inbox_sensor" and s.is_running for s in states)
    _shot(page, "09-inbox-sensor-on")

    new = [{"prompt": f"Zara has {10 + i} pens and finds {i + 2} more. How many pens does "
                      f"Zara have now?", "reference_answer": str(12 + 2 * i)} for i in range(3)]
    (server.inbox / "dropped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    tag = (LAUNCHED_BY, "corpus_inbox_sensor")
    with server.instance() as instance:
        backfills = _wait(lambda: _backfills_done(instance, tag), 1500,
                          "the inbox sensor's backfill to finish", every=5)
        runs = [r for b in backfills for r in instance.get_runs(filters=dg.RunsFilter(
            tags={"dagster/backfill": b.backfill_id}))]
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        sensor_work = work_done_in_runs(instance, [r.run_id for r in runs])
    queries = Store(server.home / "store").read_table(QUERIES)
    prompts = set(queries["prompt"].to_list())
    assert all(r["prompt"] in prompts for r in new)  # ingested, whatever split they landed in
    page.goto(f"{server.url}/runs")
    page.get_by_text("corpus_inbox_sensor").first.wait_for()
    _shot(page, "10-inbox-runs")

    # The command on the twin home does the same work: one rerun mechanism.
    defs = build_definitions(server.config, home=str(twin), device="cpu", show_progress=False)
    with dg.DagsterInstance.from_config(str(twin / "dagster")) as instance:
        stale = materialize_stale(defs, instance)
    # Steps found up to date report their counters as 0: compare the work that was done.
    done = {k: v for k, v in sensor_work.items() if v}
    assert done == {k: v for k, v in stale.work.items() if v}, (stale.work, sensor_work)
    assert done.get("samples_generated", 0) > 0  # the new queries were generated
