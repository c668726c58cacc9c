// Benchmarks of the page in Debian's Chromium; prints tables, asserts nothing.
//   replay: `vramtrace serve --replay TRACE` (a 10^7-event trace from `cargo xtask bench-web`):
//           the server's start, the page's first meaningful render (the aggregate and the
//           timeline drawn), and a cursor move (the page at another moment).
//   live:   web_bench_server (100,000 live allocations, 5 changes/s): Chromium's CPU while
//           the page follows the stream, every process of the browser together.
// node web/e2e/bench.mjs --trace PATH --vramtrace target/release/vramtrace \
//      --live-server target/release/examples/web_bench_server [--seconds 20]
import { spawn } from "node:child_process";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { browser } from "./lib.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const TICK = 100; // USER_HZ

function start(cmd, args, pattern) {
  const t0 = performance.now();
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const on = (d) => {
      out += d;
      const m = pattern.exec(out);
      if (m) res({ child, url: `http://${m[1]}/`, ms: performance.now() - t0 });
    };
    child.stdout.setEncoding("utf8").on("data", on);
    child.stderr.setEncoding("utf8").on("data", on);
    child.once("exit", (c) => rej(new Error(`${cmd} exited (${c}): ${out}`)));
  });
}

/** CPU ticks (user + system) by pid of every descendant of `root`, not `root` itself, nor `skip`'s tree. */
function treeTicks(root, skip) {
  const parent = new Map();
  const ticks = new Map();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, "utf8");
      const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(d), Number(f[1]));
      ticks.set(Number(d), Number(f[11]) + Number(f[12]));
    } catch {
      /* gone */
    }
  }
  const out = new Map();
  for (const [pid, t] of ticks) {
    if (pid === root) continue;
    let p = pid;
    let skipped = false;
    while (p && p !== root && parent.has(p)) {
      if (p === skip) skipped = true;
      p = parent.get(p);
    }
    if (p === root && !skipped) out.set(pid, t);
  }
  return out;
}

async function replay(b, vramtrace, trace) {
  const size = statSync(trace).size;
  const server = await start(vramtrace, ["serve", "--listen", "127.0.0.1:0", "--replay", trace], /serving on http:\/\/([^/]+)\//);
  const rows = [];
  try {
    const ctx = await b.newContext({ viewport: { width: 1440, height: 900 } });
    const p = await ctx.newPage();
    for (let run = 0; run < 3; run++) {
      const t0 = performance.now();
      await p.goto(server.url);
      await p.getByTestId("hero-bytes").waitFor();
      const aggregate = performance.now() - t0;
      await p.getByRole("img", { name: /^Memory by class from/ }).locator("svg path.recharts-area-area").first().waitFor({ state: "attached" });
      const timeline = performance.now() - t0;
      // The cursor to 1 s, then to the middle of the trace: until the page shows that moment.
      const cursor = [];
      for (const at of ["1", String(Number(await p.getByTestId("cursor").getAttribute("max")) / 2)]) {
        const t1 = performance.now();
        const answered = p.waitForResponse((r) => r.url().includes(`/api/snapshot?at=${at}`), { timeout: 300_000 });
        await p.getByTestId("cursor").fill(at);
        await answered;
        await p.waitForTimeout(0);
        cursor.push(performance.now() - t1);
      }
      await p.getByTestId("cursor").fill("0");
      rows.push({ aggregate, timeline, cursor1: cursor[0], cursorMid: cursor[1] });
    }
    await ctx.close();
  } finally {
    // Killed, and gone before the live measurement: a server stopped gracefully finishes the
    // requests in flight first (the page's /api/analysis of the whole trace), and as a
    // descendant of this script its CPU would count as the browser's.
    const gone = new Promise((res) => server.child.once("exit", res));
    server.child.kill("SIGKILL");
    await gone;
  }
  const best = (k) => Math.min(...rows.map((r) => r[k]));
  console.log(`\nreplay of ${trace} (${(size / 2 ** 20).toFixed(0)} MiB)`);
  console.log("| measure | ms |\n|---|---:|");
  console.log(`| serve --replay: start to listening (one replay through the Ledger) | ${server.ms.toFixed(0)} |`);
  console.log(`| page: navigation to the aggregate shown | ${best("aggregate").toFixed(0)} |`);
  console.log(`| page: navigation to the timeline drawn (first meaningful render) | ${best("timeline").toFixed(0)} |`);
  console.log(`| page: cursor to 1 s, the state there received (one replay up to it) | ${best("cursor1").toFixed(0)} |`);
  console.log(`| page: cursor to the middle, the state there received | ${best("cursorMid").toFixed(0)} |`);
}

async function live(b, serverBin, seconds) {
  const server = await start(serverBin, ["127.0.0.1:0"], /serving on http:\/\/([^/]+)\//);
  try {
    const ctx = await b.newContext({ viewport: { width: 1440, height: 900 } });
    const p = await ctx.newPage();
    await p.goto(server.url);
    await p.getByTestId("hero-bytes").waitFor();
    await p.waitForTimeout(3000);
    // Chromium's processes are this script's descendants; the server is left out.
    const root = process.pid;
    const skip = server.child.pid;
    const cdp = await ctx.newCDPSession(p);
    await cdp.send("Performance.enable");
    const m0 = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
    const t0 = performance.now();
    const c0 = treeTicks(root, skip);
    await p.waitForTimeout(seconds * 1000);
    const c1 = treeTicks(root, skip);
    const wall = (performance.now() - t0) / 1000;
    const m1 = Object.fromEntries((await cdp.send("Performance.getMetrics")).metrics.map((m) => [m.name, m.value]));
    const total = await p.getByTestId("alloc-total").textContent();
    console.log(`\nlive page, ${total}, 5 changes/s, ${seconds} s`);
    console.log("| measure | % of one core |\n|---|---:|");
    // Per process, so that one that ended in between (a closed page's renderer) counts nothing.
    let ticks = 0;
    for (const [pid, t] of c1) ticks += t - (c0.get(pid) ?? 0);
    console.log(`| Chromium, every process (utime+stime) | ${((ticks / TICK / wall) * 100).toFixed(1)} |`);
    console.log(`| renderer main thread: tasks (CDP TaskDuration) | ${(((m1.TaskDuration - m0.TaskDuration) / wall) * 100).toFixed(1)} |`);
    for (const k of ["ScriptDuration", "RecalcStyleDuration", "LayoutDuration"]) {
      console.log(`| renderer: ${k} (CDP) | ${(((m1[k] - m0[k]) / wall) * 100).toFixed(1)} |`);
    }
    await paintTrace(p, ctx, 5);
    await ctx.close();
  } finally {
    server.child.kill("SIGTERM");
  }
}

/**
 * A Chromium performance trace (CDP Tracing) of the page for `seconds`: where the time goes,
 * by thread and event, so that paint and compositing can be told from script and layout.
 */
async function paintTrace(p, ctx, seconds) {
  const cdp = await ctx.newCDPSession(p);
  const events = [];
  cdp.on("Tracing.dataCollected", (e) => events.push(...e.value));
  const done = new Promise((res) => cdp.once("Tracing.tracingComplete", res));
  await cdp.send("Tracing.start", {
    categories: "devtools.timeline,disabled-by-default-devtools.timeline,cc,viz,gpu,blink",
    transferMode: "ReportEvents",
  });
  await p.waitForTimeout(seconds * 1000);
  await cdp.send("Tracing.end");
  await done;
  const threads = new Map();
  for (const e of events) if (e.ph === "M" && e.name === "thread_name") threads.set(`${e.pid}:${e.tid}`, e.args.name);
  // Time per thread and event, counting only events not nested in one of the same thread.
  const byThread = new Map();
  const open = new Map();
  const sorted = events.filter((e) => e.ph === "X" && e.dur).sort((a, b) => a.ts - b.ts);
  for (const e of sorted) {
    const key = `${e.pid}:${e.tid}`;
    const end = open.get(key) ?? 0;
    const thread = (threads.get(key) ?? "?").replace(/\d+$/, "");
    const t = byThread.get(thread) ?? { total: 0, names: new Map() };
    if (e.ts >= end) {
      t.total += e.dur;
      open.set(key, e.ts + e.dur);
    }
    // Each event's own time, nested or not, to name what the top-level time was spent on.
    t.names.set(e.name, (t.names.get(e.name) ?? 0) + (e.tdur ?? e.dur));
    byThread.set(thread, t);
  }
  const frames = events.filter((e) => e.name === "ProxyMain::BeginMainFrame" && e.ph === "X").length;
  const rasters = events.filter((e) => e.name === "RasterTask" && e.ph === "X").length;
  console.log(`\nperformance trace of the live page, ${seconds} s: ${(frames / seconds).toFixed(1)} main-thread frames/s, ${(rasters / seconds).toFixed(1)} raster tasks/s (busy time per thread, its heaviest events)`);
  console.log("| thread | % of one core | heaviest events (ms, nested events counted in each) |\n|---|---:|---|");
  for (const [thread, t] of [...byThread].sort((a, b) => b[1].total - a[1].total).slice(0, 8)) {
    const top = [...t.names].sort((a, b) => b[1] - a[1]).slice(0, 6).map(([n, d]) => `${n} ${(d / 1000).toFixed(0)}`).join(", ");
    console.log(`| ${thread} | ${((t.total / 1e6 / seconds) * 100).toFixed(1)} | ${top} |`);
  }
}

const b = await browser();
try {
  const trace = arg("trace");
  if (trace) await replay(b, arg("vramtrace", "target/release/vramtrace"), trace);
  const liveServer = arg("live-server");
  if (liveServer) await live(b, liveServer, Number(arg("seconds", "20")));
  if (!trace && !liveServer) console.error("nothing to measure: give --trace and/or --live-server");
} finally {
  await b.close();
}
