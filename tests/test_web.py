"""The fleet page (`volumectl web`) in a real browser (Debian's chromium, driven by Playwright), against real
agents, dockerd and NATS: the page server runs as the reader `viewer`, the test acts as the operator `ops`.

One browser for the module; each test opens its own page and waits for markers (data-* attributes the page sets),
never for a fixed time. Screenshots go to the test's own temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import playwright.async_api as playwright_api
import pytest
import pytest_asyncio

from volumectl.web.main import serve

from .conftest import Host
from .identities import Identities
from .natsd import NatsServer
from .stack import BUSYBOX_IMAGE, free_port
from .test_events import eventually
from .test_policies import Policies
from .test_volumectl import ctl

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 20_000
XSS = ("<script>window.__xss = 1</script>", "<img src=x onerror=\"window.__xss = 2\">")


class Web:
    def __init__(self, url: str, task: asyncio.Task[int], stop: asyncio.Event) -> None:
        self.url, self.task, self.stop = url, task, stop


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def web(nats_server: NatsServer, identities: Identities) -> AsyncIterator[Web]:
    """`volumectl web` in this process, connected as the reader `viewer`."""
    port = free_port()
    a = argparse.Namespace(nats=nats_server.url, seed=str(identities.seed("viewer")), identity="viewer", prefix="vol",
                           tls_ca=str(identities.tls.ca) if identities.tls else None, listen=f"127.0.0.1:{port}",
                           auth=None, tls_cert=None, tls_key=None, insecure=False)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(a, stop))
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        if task.done():
            raise AssertionError(f"volumectl web ended: {task.result()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as s, s.get(f"{url}/api/summary") as r:
                return r.status == 200
        return False

    await eventually(up, 30, "volumectl web serving")
    yield Web(url, task, stop)
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any, web: Web, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh page; any dialog (alert, confirm) it opens is recorded, as is every error the page logs."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    p = await context.new_page()
    p.dialogs, p.errors = [], []
    p.on("dialog", lambda d: (p.dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    p.on("console", lambda m: p.errors.append(m.text) if m.type == "error" else None)
    yield p
    await p.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    await context.close()



async def test_the_page_lists_the_hosts_and_their_volumes_under_a_strict_csp(
    host: Host, web: Web, page: Any, identities: Identities, tmp_path: Path
) -> None:
    names = [f"web-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for n in names:
        await host.ok("create", {"name": n, "labels": {"team": "web"}})
    response = await page.goto(web.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    await page.wait_for_selector(f'#fleet-map [data-host="{host.id}"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/host/{host.id}")
    for n in names:  # the inventory reaches the page without a reload
        await page.wait_for_selector(f'#volumes tr[data-volume="{n}"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/hosts")
    await page.wait_for_selector(f'#hosts tr[data-host="{host.id}"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/policies")
    await page.wait_for_selector("#policies", timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "policies.png"), full_page=True)
    assert not page.errors, page.errors
    # Nothing secret reaches the browser: not the seed the server connects with, whatever the view.
    seed = identities.seed("viewer").read_text().strip()
    async with aiohttp.ClientSession() as s:
        for path in ("/", "/api/summary", f"/api/host?host={host.id}", "/api/policies", "/api/hosts"):
            async with s.get(web.url + path) as r:
                assert seed not in await r.text()
        # The page answers to its own address only (a site rebinding its name to 127.0.0.1 gets nothing)
        async with s.get(web.url + "/api/summary", headers={"Host": "evil.example:80"}) as r:
            assert r.status == 421
        async with s.post(web.url + "/api/summary") as r:  # and it is read-only
            assert r.status == 405


async def test_a_backup_started_through_volumectl_runs_through_the_feed_to_its_full_bar(
    host: Host, web: Web, page: Any, tmp_path: Path
) -> None:
    vol = f"feed-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": vol})
    await page.goto(web.url + "/")
    await page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)
    out = ctl(host, "backup", vol)
    assert out.returncode == 0, out.stderr
    item = f'#feed li[data-kind="backup"][data-volume="{vol}"]'
    await page.wait_for_selector(f'{item}[data-state="completed"]', timeout=WAIT_MS)
    bar = await page.eval_on_selector(f"{item} progress", "p => [p.value, p.max]")
    assert bar[0] == bar[1] > 0
    await page.screenshot(path=str(tmp_path / "feed.png"), full_page=True)
    # Its page lists the backup, and the command that made it, with its caller (once the page's inventory has the
    # volume: a backup can end before the agent's debounced snapshot arrives, and the volume's page would be a 404).
    await page.goto(f"{web.url}/#/host/{host.id}")
    await page.wait_for_selector(f'#volumes tr[data-volume="{vol}"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/volume/{host.id}/{vol}")
    await page.wait_for_selector("#backups tr[data-backup]", timeout=WAIT_MS)
    await page.wait_for_selector('#commands tr[data-op="backup"][data-ok="true"]', timeout=WAIT_MS)
    assert "ops" in await page.inner_text("#commands")
    assert not page.errors, page.errors


async def test_a_failing_policy_turns_its_volume_and_host_red_and_xss_stays_text(
    host: Host, web: Web, page: Any, policies: Policies, tmp_path: Path
) -> None:
    broken = f"broken-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": broken, "labels": {"note": XSS[0], "owner": XSS[1]}})
    # Every backup of it fails: its user's pre-backup hook prints markup and fails.
    host.docker.docker("run", "-d", "--name", f"user-{broken}", "--network", "none", "-v", f"{broken}:/data",
                       "--label", f"volume-agent.backup.exec-pre=echo '{XSS[1]}'; exit 3", BUSYBOX_IMAGE,
                       "sleep", "600")
    await page.goto(f"{web.url}/#/host/{host.id}")
    await page.wait_for_selector(f'#volumes tr[data-volume="{broken}"]', timeout=WAIT_MS)
    await policies.set(f"p-{broken}", host.id, schedule="* * * * * *", keep={"last": 1},
                       selector={"hosts": [host.id], "volumes": [broken]})
    # Red within seconds, without a reload: its row on the host's page, then the host on the fleet map.
    await page.wait_for_selector(f'#volumes tr[data-volume="{broken}"][data-status="failing"]', timeout=WAIT_MS)
    await page.wait_for_selector('#host-view[data-status="failing"]', timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "host.png"), full_page=True)
    await page.goto(web.url + "/")
    await page.wait_for_selector(f'#fleet-map [data-host="{host.id}"][data-status="failing"]', timeout=WAIT_MS)
    await page.wait_for_selector(f'#attention tr[data-volume="{broken}"]', timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    # The labels and the hook's output are shown as the text they are, and nothing of them ran.
    await page.goto(f"{web.url}/#/volume/{host.id}/{broken}")
    await page.wait_for_selector("#labels", timeout=WAIT_MS)
    labels = await page.inner_text("#labels")
    assert XSS[0] in labels and XSS[1] in labels
    facts = await page.inner_text("#volume-facts")
    assert "exit" in facts
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("#labels script, #labels img, #volume-facts img").count() == 0
    assert not page.dialogs
    host.docker.docker("rm", "-f", f"user-{broken}")


async def test_a_host_whose_agent_stops_is_marked_stale(make_agent: Any, web: Web, page: Any, tmp_path: Path) -> None:
    agent = make_agent(extra=["--ack-wait", "2", "--heartbeat", "1"])
    await page.goto(web.url + "/")
    cell = f'#fleet-map [data-host="{agent.host_id}"]'
    await page.wait_for_selector(f'{cell}[data-stale="false"]', timeout=WAIT_MS)
    agent.stop()
    await page.wait_for_selector(f'{cell}[data-stale="true"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/host/{agent.host_id}")
    await page.wait_for_selector("#stale-banner", timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "stale.png"), full_page=True)


async def test_a_drill_run_through_volumectl_shows_on_the_volume_page_and_in_the_feed(
    host: Host, web: Web, page: Any, tmp_path: Path
) -> None:
    """`volumectl verify` of a backup: the feed says the drill passed, the volume's page shows its last drill
    (passed, which backup) and marks that backup verified, and the host's page has the drill in its column."""
    vol = f"drill-{uuid.uuid4().hex[:6]}"
    await host.ok("create", {"name": vol})
    made = await host.ok("backup", {"volume": vol})
    await page.goto(f"{web.url}/#/host/{host.id}")  # in the inventory first (else its page answers 404)
    await page.wait_for_selector(f'#volumes tr[data-volume="{vol}"] td[data-drill="never"]', timeout=WAIT_MS)
    await page.goto(f"{web.url}/#/volume/{host.id}/{vol}")
    await page.wait_for_selector('#drills[data-drill="never"]', timeout=WAIT_MS)
    out = ctl(host, "verify", made["backup_id"])
    assert out.returncode == 0, out.stderr
    await page.wait_for_selector(f'#feed li[data-kind="drill"][data-state="passed"][data-volume="{vol}"]',
                                 timeout=WAIT_MS)
    # The volume's page follows its host's snapshot, which now carries the drill.
    await page.wait_for_selector('#drills[data-drill="passed"]', timeout=WAIT_MS)
    assert await page.inner_text("#drill-backup") == made["backup_id"]
    await page.wait_for_selector(f'#backups tr[data-backup="{made["backup_id"]}"] td[data-verified="passed"]',
                                 timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "drill.png"), full_page=True)
    await page.goto(f"{web.url}/#/host/{host.id}")
    await page.wait_for_selector(f'#volumes tr[data-volume="{vol}"] td[data-drill="passed"]', timeout=WAIT_MS)
    assert not page.errors, page.errors
