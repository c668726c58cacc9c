// Helpers for the end-to-end tests: a real `vramtrace serve` (started as the CLI is), Debian's
// Chromium driven by playwright-core (no browser download), and the simulated driver.
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { createServer } from "node:net";
import { existsSync, mkdirSync, mkdtempSync, rmdirSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const TARGET = resolve(ROOT, process.env.VRAMTRACE_TARGET ?? "target/debug");
export const BIN = join(TARGET, "vramtrace");
export const LIB = join(TARGET, "libsimcuda.so");
export const WORKLOAD = join(TARGET, "vramtrace-workload");
export const ARTIFACTS = resolve(ROOT, process.env.VRAMTRACE_WEB_ARTIFACTS ?? "target/web-artifacts");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
mkdirSync(ARTIFACTS, { recursive: true });

/** The name a traced process is given to try the page's escaping. */
export const EVIL = "<img src=x onerror=alert(1)>";

/** A copy of the workload under the evil name (a link: the kernel names the process after it). */
export function evilWorkload() {
  const dir = mkdtempSync(join(tmpdir(), "vramtrace-e2e-"));
  const path = join(dir, EVIL);
  symlinkSync(WORKLOAD, path);
  return { dir, path };
}

/**
 * A cgroup laid out as the kubelet lays out a pod's container's (cgroup v2 with the systemd
 * driver, or cgroup v1's pids hierarchy with cgroupfs), as vramtrace/tests/serve_http.rs makes
 * it. `start(cmd)` runs a shell command in it with the kubelet's variables (pod `ml/trainer-0`);
 * `remove()` takes the cgroups away once nothing runs in them.
 */
export function podCgroup() {
  const n = process.hrtime.bigint() % 0xffffffffn;
  const uid = `${process.pid.toString(16).padStart(8, "0")}-aaaa-4bbb-8ccc-${n.toString(16).padStart(12, "0")}`;
  const id = `${n.toString(16)}${process.pid.toString(16)}`.padEnd(64, "0");
  const root = "/sys/fs/cgroup";
  let dirs;
  if (existsSync(join(root, "cgroup.controllers"))) {
    const slice = join(root, "kubepods.slice/kubepods-besteffort.slice");
    const pod = join(slice, `kubepods-besteffort-pod${uid.replaceAll("-", "_")}.slice`);
    dirs = [join(root, "kubepods.slice"), slice, pod, join(pod, `cri-containerd-${id}.scope`)];
  } else {
    const pods = join(root, "pids/kubepods/besteffort");
    dirs = [join(root, "pids/kubepods"), pods, join(pods, `pod${uid}`), join(pods, `pod${uid}/${id}`)];
  }
  mkdirSync(dirs.at(-1), { recursive: true });
  const procs = join(dirs.at(-1), "cgroup.procs");
  return {
    uid,
    id,
    // Not env(1): it would take a program path with "=" in it for a variable.
    start: (cmd) => `sh -c 'echo $$ > ${procs} && export HOSTNAME=trainer-0 KUBERNETES_SERVICE_HOST=10.96.0.1 POD_NAMESPACE=ml && exec "$@"' pod ${cmd}`,
    remove() {
      // The shared parents stay when another run still uses them.
      for (const d of [...dirs].reverse()) {
        try {
          rmdirSync(d);
        } catch {
          break;
        }
      }
    },
  };
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** `vramtrace serve` with `args`, resolved once it says where it listens. */
export function serve(args, { port = 0 } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const stdout = [];
    let err = "";
    let done = false;
    const timer = setTimeout(() => {
      if (!done) {
        child.kill("SIGKILL");
        rej(new Error(`vramtrace serve did not start within 60 s:\n${err}`));
      }
    }, 60_000);
    // Whole lines only: a chunk of the pipe may end in the middle of one.
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on("line", (l) => l && stdout.push(l));
    child.stderr.setEncoding("utf8").on("data", (d) => {
      err += d;
      if (process.env.E2E_VERBOSE) process.stderr.write(`serve: ${d}`);
      const m = /serving on http:\/\/([^/]+)\//.exec(err);
      if (m && !done) {
        done = true;
        clearTimeout(timer);
        res({ child, url: `http://${m[1]}/`, addr: m[1], stdout, stderr: () => err });
      }
    });
    child.once("exit", (code) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        rej(new Error(`vramtrace serve exited (${code}):\n${err}`));
      }
    });
  });
}

export function stop(server) {
  return new Promise((res) => {
    if (server.child.exitCode !== null) return res();
    const t = setTimeout(() => server.child.kill("SIGKILL"), 10_000);
    server.child.once("exit", () => {
      clearTimeout(t);
      res();
    });
    server.child.kill("SIGTERM");
  });
}

export async function browser() {
  return chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu"] });
}

/** A page that fails the test on a dialog (an alert() a traced name smuggled in) or a script error. */
export async function page(b, width) {
  const ctx = await b.newContext({ viewport: { width, height: width < 600 ? 844 : 900 }, deviceScaleFactor: width < 600 ? 2 : 1, reducedMotion: "reduce" });
  const p = await ctx.newPage();
  p.problems = [];
  p.on("dialog", async (d) => {
    p.problems.push(`a dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  p.on("pageerror", (e) => p.problems.push(`page error: ${e.message}`));
  p.on("requestfailed", (r) => {
    // The API's reads fail while the server is down (the reconnect test stops it).
    const u = new URL(r.url());
    if (u.pathname !== "/ws" && !u.pathname.startsWith("/api/")) p.problems.push(`request failed: ${r.url()}`);
  });
  p.on("request", (r) => {
    const u = new URL(r.url());
    if (u.hostname !== "127.0.0.1") p.problems.push(`fetched from elsewhere: ${r.url()}`);
  });
  return p;
}

export function vramtrace(args, { okStatus = [0] } = {}) {
  try {
    return execFileSync(BIN, args, { encoding: "utf8", maxBuffer: 1 << 28, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    // `record -- CMD` exits with the command's status.
    if (okStatus.includes(e.status)) return e.stdout;
    throw e;
  }
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

export function eq(a, b, msg) {
  if (a !== b) throw new Error(`${msg}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

/** Polls `f` until it returns a truthy value, or fails with `what`. */
export async function until(f, what, ms = 20_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

export async function shot(p, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await p.screenshot({ path, fullPage: true });
  return path;
}
