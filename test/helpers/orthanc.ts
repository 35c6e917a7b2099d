/**
 * A real Orthanc PACS (Debian `orthanc` 1.10.1 + `orthanc-dicomweb` 1.7) as a test fixture:
 * a fresh temp storage directory, a generated JSON configuration, free loopback ports, and
 * a process that is killed when the test process exits.
 *
 * Configuration keys, as checked against this build (strings in /usr/sbin/Orthanc and the
 * plugin, and by starting it):
 * - There is no HttpBindAddress / DicomBindAddress in 1.10.1 (unknown keys are ignored
 *   silently): the HTTP server listens on 0.0.0.0:PORT. RemoteAccessAllowed=false is what
 *   keeps it private: a client that is not loopback gets 401. The DICOM server is disabled
 *   (DicomServerEnabled=false), so only the HTTP port is open; DicomPort is still a free port
 *   in case a test enables it through `extra`.
 * - On Linux the process gets PR_SET_PDEATHSIG=SIGKILL through `setpriv` (util-linux), so it
 *   dies even when the test process is SIGKILLed; a process 'exit' hook kills it otherwise.
 *
 * Behaviour observed on this Orthanc (1.10.1 + DICOMweb 1.7, November 2025) next to
 * ../shared/docs/FIELD-NOTES.md. Pinned by test/integration/orthanc-fixture.test.ts where marked [T].
 * Differs from or adds to the notes:
 * - There is no bind-address option: Orthanc listens on 0.0.0.0. A connection from a
 *   non-loopback address (the host's own 192.0.2.2) gets `401` with an empty body, not 403.
 *   X-Forwarded-For does not make a loopback client "remote".
 * - `X-Forwarded-Host`/`-Proto` are ignored for RetrieveURL/BulkDataURI (only Host and RFC 7239
 *   `Forwarded` count) [T]. A spoofed `Host: evil.example:1234` is written back verbatim [T].
 *   With no Host the URL is `http://localhost:8042/…` even though Orthanc listens on another
 *   port [T]. If the config sets `DicomWeb.Host` (the Debian /etc/orthanc/dicomweb.json sets
 *   "localhost"), that host is used and `Forwarded` is ignored; the scheme then follows
 *   `DicomWeb.Ssl`. This fixture leaves `DicomWeb.Host` unset, so URLs follow the request.
 * - RetrieveURL appears in QIDO rows (study, series, instance level), not in /metadata.
 * - QIDO `limit=-1` is a `500`; `offset` past the end is `200 []`; `includefield=all` at study
 *   level returns the same 15 default attributes (named includefields are added).
 * - `Accept: application/dicom` (single part) on an instance is `400` ("cannot generate");
 *   no Accept at all gives multipart/related; type="application/dicom".
 * - Error bodies (Orthanc JSON with Details, HttpError, HttpStatus, Message, Method,
 *   OrthancError, OrthancStatus, Uri) are sent with no Content-Type header at all [T].
 * - Single-part and QIDO responses carry `Keep-Alive: timeout=1`: idle upstream connections
 *   are closed after about a second.
 * - `/rendered` answers image/jpeg for a 16-bit CT.
 * Matches the notes (checked): RetrieveURL/BulkDataURI absolute from Host, `Forwarded`
 * host+proto honoured [T]; BulkDataURI `…/instances/I/bulk/7fe00010`, 1-based sequence paths
 * (`00880200/1/7fe00010`, `04000500/1/04000520`), overlay/curve data, `fffafffa/1/…` and
 * `fffcfffc` also bulk [T]; `/bulk/00100010` returns the PatientName bytes [T]; `limit=0` is
 * unlimited [T]; unknown keys ignored, no match `200 []`, backslash UID lists match nothing and
 * comma lists work, no `Warning` for fuzzymatching [T]; retrieve transcodes Implicit, Big Endian,
 * Deflated and RLE to Explicit VR LE, `transfer-syntax=*` keeps the stored syntax [T]; study
 * retrieve has no Content-Length and `Connection: close`, a single instance has Content-Length;
 * empty values as `{"vr":"CS"}`, IS/DS as JSON numbers; `/thumbnail` 404; frame past the end 400.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ORTHANC_BIN = '/usr/sbin/Orthanc';
export const DICOMWEB_PLUGIN = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';

export interface OrthancHandle {
  /** http://127.0.0.1:PORT */
  readonly httpUrl: string;
  /** httpUrl + '/dicom-web' */
  readonly dicomWebUrl: string;
  /** the temp directory (configuration, storage, index) removed by stop() */
  readonly dir: string;
  /** Stores Part 10 files (bytes or paths) with POST /instances; returns the Orthanc instance ids. */
  upload(files: Buffer[] | string[]): Promise<string[]>;
  /** SIGTERM, then SIGKILL after 5 s; removes the temp directory. Idempotent. */
  stop(): Promise<void>;
  /** Orthanc's stdout and stderr so far (the last 1 MiB). */
  logs(): string;
}

const READY_TIMEOUT_MS = 20_000;
const LOG_LIMIT = 1 << 20;

/** A free TCP port on 127.0.0.1 (listen on port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('no port'));
        return;
      }
      srv.close(() => resolve(addr.port));
    });
  });
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deep merge of configuration objects: objects merge key by key, anything else replaces. */
function merge(base: Record<string, unknown>, extra: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(extra)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) ? merge(b, v) : v;
  }
  return out;
}

// Every Orthanc started by this process (→ its temp directory), killed on exit even if a
// test forgot stop().
const live = new Map<ChildProcess, string>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const killAll = (): void => {
    for (const [p, dir] of live) {
      try { p.kill('SIGKILL'); } catch { /* already gone */ }
      try { rmSync(dir, { recursive: true, force: true }); } catch { /* best effort */ }
    }
  };
  process.on('exit', killAll);
  // The default action of these signals ends Node without 'exit': kill, then die the same way.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      killAll();
      process.kill(process.pid, sig);
    });
  }
}

let pdeathsig: boolean | undefined;
/** Whether `setpriv --pdeathsig` works here (Linux, util-linux). */
function canUsePdeathsig(): boolean {
  pdeathsig ??= process.platform === 'linux' && spawnSync('setpriv', ['--pdeathsig', 'KILL', '--', 'true']).status === 0;
  return pdeathsig;
}

async function waitUntilUp(url: string, proc: ChildProcess, exited: Promise<unknown>, logs: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let gone = false;
  void exited.then(() => { gone = true; });
  let last = '';
  while (Date.now() < deadline) {
    if (gone || proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`Orthanc exited before answering (code ${proc.exitCode}, signal ${proc.signalCode}); log tail:\n${logs().slice(-4000)}`);
    }
    try {
      const r = await fetch(`${url}/system`, { signal: AbortSignal.timeout(2000) });
      await r.arrayBuffer();
      if (r.ok) return;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Orthanc did not answer GET /system within ${READY_TIMEOUT_MS / 1000} s (last: ${last}); log tail:\n${logs().slice(-4000)}`);
}

/**
 * Starts Orthanc on free loopback ports with a fresh temp storage directory and a generated
 * configuration (plus `extra`, deep-merged), and waits until GET /system answers (20 s).
 */
export async function startOrthanc(opts: { extra?: Record<string, unknown> } = {}): Promise<OrthancHandle> {
  // A port found free can be taken before Orthanc binds it: try again with new ports.
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(opts);
    } catch (e) {
      lastError = e;
      // Orthanc 1.10 logs "The TCP port of the HTTP server is privileged or already in use".
      const msg = String((e as Error).message);
      if (!/exited before answering/.test(msg) || !/already in use/i.test(msg)) throw e;
    }
  }
  throw lastError;
}

async function startOnce(opts: { extra?: Record<string, unknown> }): Promise<OrthancHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'deid-orthanc-'));
  const db = join(dir, 'db');
  mkdirSync(db);
  const httpPort = await freePort();
  let dicomPort = await freePort();
  while (dicomPort === httpPort) dicomPort = await freePort();
  const base: Record<string, unknown> = {
    Name: 'deid-gateway-test',
    HttpPort: httpPort,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomServerEnabled: false,
    DicomPort: dicomPort,
    DicomAet: 'ORTHANC',
    StorageDirectory: db,
    IndexDirectory: db,
    TemporaryDirectory: join(dir, 'tmp'),
    Plugins: [DICOMWEB_PLUGIN],
    DicomWeb: { Enable: true, Root: '/dicom-web/', EnableWado: true, WadoRoot: '/wado', Ssl: false },
    ConcurrentJobs: 1,
    HttpThreadsCount: 8,
    DicomThreadsCount: 1,
    OrthancExplorerEnabled: false,
    WebDavEnabled: false,
    HttpCompressionEnabled: false,
    ExecuteLuaEnabled: false,
    SaveJobs: false,
    SyncStorageArea: false,
    StorageAccessOnFind: 'Always',
    MetricsEnabled: false,
  };
  const config = opts.extra ? merge(base, opts.extra) : base;
  mkdirSync(join(dir, 'tmp'));
  const configPath = join(dir, 'orthanc.json');
  writeFileSync(configPath, JSON.stringify(config, null, 2));

  hookExit();
  const [cmd, args] = canUsePdeathsig()
    ? ['setpriv', ['--pdeathsig', 'KILL', '--', ORTHANC_BIN, configPath]]
    : [ORTHANC_BIN, [configPath]];
  const proc = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.set(proc, dir);
  // A handle that a test forgets to stop must not keep the test process alive; the exit
  // hook (and PDEATHSIG) still kill Orthanc when the process ends.
  proc.unref();
  for (const s of [proc.stdout, proc.stderr]) (s as Socket | null)?.unref();
  let log = '';
  const append = (d: Buffer): void => {
    log += d.toString('utf8');
    if (log.length > LOG_LIMIT) log = log.slice(-LOG_LIMIT);
  };
  proc.stdout?.on('data', append);
  proc.stderr?.on('data', append);
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', () => { live.delete(proc); resolve(); });
    proc.once('error', (e) => { append(Buffer.from(`spawn error: ${e.message}\n`)); live.delete(proc); resolve(); });
  });

  const httpUrl = `http://127.0.0.1:${httpPort}`;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  try {
    await waitUntilUp(httpUrl, proc, exited, () => log);
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    httpUrl,
    dicomWebUrl: `${httpUrl}/dicom-web`,
    dir,
    logs: () => log,
    stop,
    async upload(files: Buffer[] | string[]): Promise<string[]> {
      const ids: string[] = [];
      for (const f of files) {
        const bytes = typeof f === 'string' ? readFileSync(f) : f;
        const r = await fetch(`${httpUrl}/instances`, { method: 'POST', headers: { 'Content-Type': 'application/dicom' }, body: bytes });
        const text = await r.text();
        if (!r.ok) throw new Error(`Orthanc refused an upload (${typeof f === 'string' ? f : `${bytes.length} bytes`}): HTTP ${r.status} ${text.slice(0, 500)}`);
        const body = JSON.parse(text) as { ID?: string; Status?: string };
        if (typeof body.ID !== 'string') throw new Error(`Orthanc upload answered without an ID: ${text.slice(0, 500)}`);
        ids.push(body.ID);
      }
      return ids;
    },
  };
}
