// End-to-end: the page in Debian's Chromium against a real `vramtrace serve`.
//   live:        a simulated workload traced live (eBPF, root), in a pod-shaped cgroup: the GPU
//                card shows its bytes by class, its row (with its pod and container) appears
//                and goes when it exits, the OOM alert
//                appears; the reconnect banner shows when the server stops and clears when
//                it is back. The process is named <img src=x onerror=alert(1)>: nothing runs.
//   postmortem:  `serve --replay` of an OOM trace: the cursor moves the page to the failure
//                and its figures are those of `vramtrace analyze --json`; the timeline zooms
//                (keyboard and mouse drag) and the lifetime view shows the same window.
//   token:       `serve --token-file`: the page asks for the token, says when it is refused,
//                then reads the API and follows the WebSocket with it, never in a URL.
// Screenshots at 1440 and 390 px wide go to target/web-artifacts/.
// Run: node web/e2e/run.mjs [live|postmortem|token]... (after scripts/setup.sh and a cargo build)
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ARTIFACTS, BIN, ROOT, CHROMIUM, EVIL, LIB, assert, browser, eq, evilWorkload, freePort, page, podCgroup, serve, shot, stop, until, vramtrace } from "./lib.mjs";

const bytesOf = async (loc) => Number(await loc.getAttribute("data-bytes"));

async function live(b) {
  const { dir, path } = evilWorkload();
  const port = await freePort();
  const trace = join(dir, "live.jsonl");
  // The workload holds what it allocated for a while, exits; then one that runs out of memory.
  // The first runs as a Kubernetes pod's container would: the row names its pod and container.
  const pod = podCgroup();
  const script = `${pod.start('"$0" --lib "$1" --hold 12 llm-server')}; sleep 1; "$0" --lib "$1" oom; sleep 600`;
  let server = await serve(["-o", trace, "--libcuda", LIB, "--", "/bin/sh", "-c", script, path, LIB], { port });
  const pages = [await page(b, 1440), await page(b, 390)];
  try {
    const [p, phone] = pages;
    await p.goto(server.url);
    await phone.goto(server.url);
    // The workload's ground truth: the last line it printed before holding.
    // Generous: at the end of a full test run on two loaded cores the workload, traced, has
    // taken over 90 s to print it; a timeout says what serve and the workload printed.
    const truthLine = await until(() => server.stdout.find((l) => l.startsWith("{") && l.includes('"labels"')), "the workload's ground truth", 240_000).catch((e) => {
      throw new Error(`${e.message}\nworkload stdout:\n${server.stdout.slice(-20).join("\n")}\nserve stderr:\n${server.stderr().slice(-4000)}`);
    });
    const truth = JSON.parse(truthLine);
    const row = p.getByTestId("process-row").filter({ hasText: EVIL.slice(0, 15) });
    await row.waitFor({ timeout: 60_000 });
    // The card of the GPU the workload used (named by NVML's index, or by the process's own
    // ordinal until the Ledger can map it): the one that shows its bytes.
    const card = p
      .locator('[data-testid^="gpu-card-"]')
      .filter({ has: p.locator(`[data-testid="gpu-traced"][data-bytes="${truth.device_bytes_at_exit}"]`) });
    await card.waitFor({ timeout: 30_000 });
    for (const cls of ["weights", "kv_cache"]) {
      await until(async () => (await bytesOf(card.getByTestId(`class-${cls}`))) === truth.labels[cls], `the GPU card's ${cls} bytes (${truth.labels[cls]})`);
    }
    eq(await bytesOf(row.getByTestId("process-bytes")), truth.device_bytes_at_exit, "the process row's bytes");
    // The name is shown as text, in full in the command line; nothing of it became markup.
    eq(await row.getByTestId("process-comm").textContent(), EVIL.slice(0, 15), "the process's name");
    assert((await row.getByTestId("process-cmdline").textContent()).includes(EVIL), "the command line names the program");
    eq(await p.locator("img").count(), 0, "img elements on the page");
    eq(await row.getByTestId("process-pod").textContent(), "ml/trainer-0", "the process's pod");
    eq(await row.getByTestId("process-container").textContent(), pod.id.slice(0, 12), "the process's container");
    await phone.getByTestId("process-row").first().waitFor();
    await p.waitForTimeout(1200);
    await shot(p, "live-1440");
    await shot(phone, "live-390");
    // The allocation table and the stack of one allocation.
    await p.getByTestId("alloc-row").first().click();
    await p.getByTestId("stack-frames").waitFor({ timeout: 10_000 });
    assert((await p.getByTestId("stack-frames").textContent()).includes("vramtrace_workload"), "the stack names the workload's code");
    // It exits: its row goes. Then the OOM.
    await row.waitFor({ state: "detached", timeout: 30_000 });
    await p.getByTestId("alert-oom").waitFor({ timeout: 30_000 });
    assert((await p.getByTestId("alert-oom").textContent()).includes("Out of memory"), "the OOM alert");
    await shot(p, "live-oom-1440");
    // The server goes: the banner; it comes back (serving the trace it wrote): the banner goes.
    await stop(server);
    await p.getByTestId("reconnect-banner").waitFor({ timeout: 15_000 });
    await shot(p, "reconnect-1440");
    await shot(phone, "reconnect-390");
    server = await serve(["--replay", trace], { port });
    await p.getByTestId("reconnect-banner").waitFor({ state: "detached", timeout: 20_000 });
    await phone.getByRole("button", { name: "Reconnect" }).click().catch(() => {});
    await phone.getByTestId("reconnect-banner").waitFor({ state: "detached", timeout: 20_000 });
    eq(await p.getByTestId("tracing").textContent(), "replaying a trace", "the page after the server came back");
    for (const x of pages) assert(x.problems.length === 0, x.problems.join("; "));
  } finally {
    for (const x of pages) await x.context().close();
    await stop(server);
    pod.remove();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The window the timeline shows once the server drew it and the lifetime view shows it too. */
async function sameWindow(p, want, what) {
  return until(async () => {
    const shown = await p.getByTestId("timeline-window").textContent();
    const drawn = (await p.getByTestId("timeline-plot").getAttribute("aria-label")).includes(`from ${shown} of`);
    const lifetimes = await p.getByTestId("lifetimes-window").textContent();
    if (want(shown) && drawn && lifetimes === shown) return shown;
    throw new Error(`timeline ${shown} (drawn: ${drawn}), lifetimes ${lifetimes}`);
  }, `the timeline and the lifetime view to show ${what}`);
}

async function postmortem(b) {
  const { dir, path } = evilWorkload();
  const trace = join(dir, "oom.jsonl");
  // The workload exits with status 1 after the failure, and record with it.
  vramtrace(["record", "-o", trace, "--libcuda", LIB, "--", path, "--lib", LIB, "oom"], { okStatus: [1] });
  const report = JSON.parse(vramtrace(["analyze", "--json", trace]));
  const oom = report.postmortem.ooms[0];
  assert(oom, "the trace holds an OOM");
  const server = await serve(["--replay", trace]);
  const pages = [await page(b, 1440), await page(b, 390)];
  try {
    for (const [i, p] of pages.entries()) {
      await p.goto(server.url);
      const item = p.getByTestId("pm-oom").first();
      await item.waitFor({ timeout: 30_000 });
      eq(await item.getByTestId("pm-oom-verdict").textContent(), oom.verdict, "the OOM's explanation");
      eq(Number(await item.getAttribute("data-ts-ns")), oom.ts_ns, "the OOM's time");
      // At the end of the trace the process has exited: nothing is held.
      eq(await bytesOf(p.getByTestId("hero-bytes")), 0, "the bytes at the end");
      // The cursor to the failure: the whole page shows that moment.
      await item.getByTestId("goto-oom").click();
      await until(async () => (await bytesOf(p.getByTestId("hero-bytes"))) === oom.held_device_bytes, `the page at the OOM to show ${oom.held_device_bytes} bytes held`);
      const card = p.locator('[data-testid^="gpu-card-"]').first();
      for (const [cls, bytes] of Object.entries(oom.by_class)) {
        eq(await bytesOf(card.getByTestId(`class-${cls}`)), bytes, `the GPU card's ${cls} at the OOM`);
      }
      const row = p.getByTestId("process-row").first();
      eq(await bytesOf(row.getByTestId("process-bytes")), oom.held_device_bytes, "the process's bytes at the OOM");
      eq(await row.getByTestId("process-comm").textContent(), EVIL.slice(0, 15), "the process's name");
      // Back to the end with the keyboard on the cursor.
      await p.getByTestId("cursor").focus();
      await p.keyboard.press("End");
      await until(async () => (await bytesOf(p.getByTestId("hero-bytes"))) === 0, "the page at the end again");
      await item.getByTestId("goto-oom").click();
      await until(async () => (await bytesOf(p.getByTestId("hero-bytes"))) === oom.held_device_bytes, "the page at the OOM again");
      // Zoom in around the failure from the keyboard, then to a window dragged across the chart:
      // the server draws each window, and the lifetime view shows the same one.
      const whole = await p.getByTestId("timeline-window").textContent();
      await p.getByTestId("timeline-zoom-in").focus();
      await p.keyboard.press("Enter");
      const zoomed = await sameWindow(p, (w) => w !== whole, "zoomed in around the OOM");
      eq(await bytesOf(p.getByTestId("hero-bytes")), oom.held_device_bytes, "the page's bytes after zooming (the cursor stays)");
      await p.getByTestId("timeline-plot").scrollIntoViewIfNeeded();
      const plot = await p.getByTestId("timeline-plot").boundingBox();
      const x = (f) => plot.x + 72 + f * (plot.width - 80);
      // A moment is at the same x in both views: the lifetimes leave the timeline's axis room.
      const lanes = await p.getByTestId("lifetimes").boundingBox();
      assert(Math.abs(lanes.x - x(0)) < 1.5 && Math.abs(lanes.x + lanes.width - x(1)) < 1.5, `the lifetimes span ${lanes.x}..${lanes.x + lanes.width}, the timeline's plot ${x(0)}..${x(1)}`);
      await p.mouse.move(x(0.2), plot.y + plot.height / 2);
      await p.mouse.down();
      await p.mouse.move(x(0.5), plot.y + plot.height / 2, { steps: 5 });
      await p.mouse.move(x(0.8), plot.y + plot.height / 2, { steps: 5 });
      await p.mouse.up();
      await sameWindow(p, (w) => w !== zoomed && w !== whole, "the dragged window");
      await p.mouse.move(0, 0);
      await p.waitForTimeout(600);
      await shot(p, `postmortem-zoomed-${i === 0 ? 1440 : 390}`);
      await p.getByTestId("timeline-whole").click();
      eq(await sameWindow(p, (w) => w === whole, "the whole trace again"), whole, "the window after Whole trace");
      await p.waitForTimeout(600);
      await shot(p, `postmortem-${i === 0 ? 1440 : 390}`);
      eq(await p.locator("img").count(), 0, "img elements on the page");
      assert(p.problems.length === 0, p.problems.join("; "));
    }
  } finally {
    for (const x of pages) await x.context().close();
    await stop(server);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** With --token-file: the page asks for the token, refuses to go on with a wrong one, and with
 * the right one reads the API and follows the WebSocket; the token is never in a URL. */
async function token(b) {
  const dir = mkdtempSync(join(tmpdir(), "vramtrace-e2e-token-"));
  const file = join(dir, "token");
  const secret = "e2e-s3cret>>?";
  writeFileSync(file, `${secret}\n`);
  const server = await serve(["--replay", join(ROOT, "vramtrace/tests/data/gpu/async.jsonl.gz"), "--token-file", file]);
  const p = await page(b, 1440);
  const urls = [];
  p.on("request", (r) => urls.push(r.url()));
  p.on("websocket", (ws) => urls.push(ws.url()));
  const refusals = [];
  p.on("response", async (r) => r.status() === 401 && refusals.push(`${r.url()} [${(await r.request().allHeaders()).authorization ?? "none"}]`));
  try {
    await p.goto(server.url);
    await p.getByTestId("token-prompt").waitFor();
    await p.getByLabel("Token", { exact: true }).fill("wrong");
    await p.getByRole("button", { name: /open the dashboard/i }).click();
    await p.getByText(/refused that token/).waitFor();
    await p.getByLabel("Token", { exact: true }).fill(secret);
    await p.getByRole("button", { name: /open the dashboard/i }).click();
    await p.getByTestId("hero-bytes").waitFor();
    await until(async () => (await p.getByTestId("conn-status").textContent()) === "connected", "the WebSocket to open with the token");
    await p.waitForTimeout(500);
    eq(await p.getByTestId("token-prompt").count(), 0, "token prompts left");
    const refusedRight = refusals.filter((r) => r.endsWith(`[Bearer ${secret}]`));
    eq(refusedRight.join(" "), "", "reads refused with the right token");
    eq(await p.evaluate(() => sessionStorage.getItem("vramtrace.token")), secret, "the token kept in the tab");
    assert(!urls.some((u) => u.includes("token") || decodeURIComponent(u).includes(secret)), `the token in a URL: ${urls.join(" ")}`);
    await shot(p, "token-1440");
    assert(p.problems.length === 0, p.problems.join("; "));
  } finally {
    await p.context().close();
    await stop(server);
    rmSync(dir, { recursive: true, force: true });
  }
}

const TESTS = { live, postmortem, token };
const names = process.argv.slice(2).length ? process.argv.slice(2) : Object.keys(TESTS);
for (const need of [BIN, LIB, CHROMIUM]) {
  if (!existsSync(need)) {
    console.error(`e2e: ${need} is missing: run scripts/setup.sh and cargo build --workspace first`);
    process.exit(2);
  }
}
if (process.getuid?.() !== 0) {
  console.error("e2e: recording needs root (eBPF); run as root or under sudo");
  process.exit(2);
}
const b = await browser();
let failed = 0;
for (const n of names) {
  const t0 = Date.now();
  try {
    await TESTS[n](b);
    console.log(`e2e ${n} ... ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed += 1;
    console.log(`e2e ${n} ... FAILED (${((Date.now() - t0) / 1000).toFixed(1)} s)\n${e.stack ?? e}`);
  }
}
await b.close();
console.log(`e2e: ${names.length - failed} passed, ${failed} failed; screenshots in ${ARTIFACTS}`);
process.exit(failed ? 1 : 0);
